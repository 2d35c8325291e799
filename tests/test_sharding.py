"""sharding.py: padding, the per-process slice, the distributed switch, the FSDP layout rule (on an abstract mesh);
the 8-device suite (tests/multidevice) in a subprocess with 8 forced CPU devices; two processes of a
jax.distributed job splitting the CLI's inputs, and training FSDP-split over both."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import AbstractMesh, PartitionSpec
from PIL import Image
from sharding_helpers import MULTIDEVICE_ENV, ROOT, forced_devices_env, picture, tiny_weights

import beit_flax
from beit_flax import DPT, PRESETS, training
from beit_flax.params import param_shapes
from beit_flax.sharding import (
    DISTRIBUTED_ENV,
    FSDP_MIN_SIZE,
    check_devices,
    distributed_requested,
    fsdp_spec,
    local_mesh,
    maybe_initialize_distributed,
    pad_batch,
    process_slice,
    round_up,
    state_shardings,
    train_mesh,
)


def test_round_up_and_pad_batch():
    assert [round_up(n, 8) for n in (1, 3, 8, 9, 11, 16)] == [8, 8, 8, 16, 16, 16]
    assert round_up(5, 1) == 5 and round_up(0, 4) == 4
    batch = pad_batch([np.ones((2, 3, 3)), 2 * np.ones((2, 3, 3))], 4)
    assert batch.shape == (4, 2, 3, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:, 0, 0, 0], [1, 2, 0, 0])
    with pytest.raises(ValueError, match="cannot pad 3 arrays to a batch of 2"):
        pad_batch([np.ones(1)] * 3, 2)


def test_process_slice_is_disjoint_and_covers_everything():
    items = list(range(11))
    parts = [process_slice(items, i, 4) for i in range(4)]
    assert parts == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7]]
    assert process_slice(items) == items  # one process (jax.process_count() == 1 here)
    assert process_slice(items[:2], 3, 4) == []  # more processes than inputs: some get none
    for index, count in ((4, 4), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="need 0 <= index < count"):
            process_slice(items, index, count)


def test_check_devices():
    local = jax.local_devices()
    assert check_devices(None) == local and check_devices(1) == local[:1] and check_devices(local) == local
    assert local_mesh().axis_names == ("batch",) and local_mesh().size == len(local)
    for bad, message in (
        (0, "between 1 and"),
        (len(local) + 1, "between 1 and"),
        (True, "must be None"),
        ("cpu", "must be None"),
        ([], "must be None"),
        (["gpu:0"], "this process's devices"),
    ):
        with pytest.raises(ValueError, match=message):
            check_devices(bad)


def test_fsdp_spec_splits_the_largest_axis_that_the_devices_divide():
    split = lambda axis: PartitionSpec(*[None] * axis, "batch")
    assert fsdp_spec((768, 3072), 8) == split(1) and fsdp_spec((3072, 768), 8) == split(0)
    assert fsdp_spec((3, 3, 768, 768), 8) == split(2)  # the first of equals
    assert fsdp_spec((16, 16, 3, 768), 8) == split(3)
    assert fsdp_spec((2212, 12), 8) == PartitionSpec()  # no axis that 8 divides: replicated
    assert fsdp_spec((2212, 12), 4) == split(0)
    assert fsdp_spec((4096,), 8) == PartitionSpec() == fsdp_spec((), 8)  # under FSDP_MIN_SIZE; a scalar
    assert fsdp_spec((4096,), 8, min_size=1024) == split(0) and fsdp_spec((768, 3072), 1) == PartitionSpec()


def test_state_shardings_of_a_base_model_on_8_devices():
    """The default rule on BEiT-base's real shapes (an abstract state and mesh: nothing allocated or compiled)."""
    config = PRESETS["dpt_beit_base_384"]
    params = traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in param_shapes(config).items()}, sep="/"
    )
    state = jax.eval_shape(lambda p: training.create_train_state(DPT(config), p, optax.adamw(1e-3)), params)
    mesh = AbstractMesh((8,), ("batch",))
    shardings = state_shardings(state, mesh, fsdp=True)
    assert type(shardings) is type(state) and shardings.apply_fn is state.apply_fn  # usable as jit's shardings
    specs = {k: s.spec for k, s in traverse_util.flatten_dict(shardings.params, sep="/").items()}
    shapes = param_shapes(config)
    size = lambda k: int(np.prod(shapes[k]))
    assert all(not specs[k] for k in specs if len(shapes[k]) == 1)  # biases, norms, layer scales: replicated
    split = sum(size(k) for k in specs if specs[k])
    assert split / sum(size(k) for k in specs) > 0.995  # matrices and kernels; not the 12 (2212, 12) tables
    assert specs["encoder/block_0/mlp/fc1/kernel"] == PartitionSpec(None, "batch")  # (768, 3072)
    assert specs["encoder/block_0/attn/relative_position/table"] == PartitionSpec()  # (2212, 12): 8 divides neither
    assert all(size(k) >= FSDP_MIN_SIZE for k in specs if specs[k])

    adam = jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
    (adam,) = [a for a in adam if hasattr(a, "mu")]
    for moments in (adam.mu, adam.nu):  # split like the params
        assert {k: s.spec for k, s in traverse_util.flatten_dict(moments, sep="/").items()} == specs
    assert adam.count.spec == shardings.step.spec == PartitionSpec()
    assert not any(s.spec for s in jax.tree.leaves(state_shardings(state, mesh)))  # data parallel: all replicated
    assert train_mesh().size == jax.local_device_count()  # one process: the local mesh


def test_distributed_switch(monkeypatch):
    monkeypatch.delenv(DISTRIBUTED_ENV, raising=False)
    assert not distributed_requested() and distributed_requested(True)
    assert maybe_initialize_distributed() is False  # nothing asked: nothing started
    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv(DISTRIBUTED_ENV, value)
        assert distributed_requested() is expected
    monkeypatch.setenv(DISTRIBUTED_ENV, "maybe")
    with pytest.raises(ValueError, match="BEIT_FLAX_DISTRIBUTED='maybe': expected 1 or 0"):
        distributed_requested()


def test_cli_refuses_a_bad_distributed_setting(monkeypatch, tmp_path, capsys):
    from beit_flax.cli import main

    Image.fromarray(picture(40, 40, 0)).save(tmp_path / "a.png")
    monkeypatch.setenv(DISTRIBUTED_ENV, "maybe")
    assert (
        main(
            [
                "predict",
                "--weights",
                str(tmp_path / "none.msgpack"),
                str(tmp_path / "a.png"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "cannot start distributed JAX: BEIT_FLAX_DISTRIBUTED='maybe'" in capsys.readouterr().err
    monkeypatch.setenv(DISTRIBUTED_ENV, "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    assert (
        main(
            [
                "predict",
                "--weights",
                str(tmp_path / "none.msgpack"),
                str(tmp_path / "a.png"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "JAX_PROCESS_ID='first': expected an integer" in capsys.readouterr().err
    assert not jax.distributed.is_initialized()


def test_multidevice_suite_with_8_forced_cpu_devices():
    """tests/multidevice in a subprocess: XLA_FLAGS must be set before JAX starts, and must not leak into this one."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/multidevice", "-q", "-s", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=forced_devices_env(8, **{MULTIDEVICE_ENV: "1"}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    assert "8 passed" in run.stdout  # not skipped: the subprocess saw its 8 devices


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def two_processes(argv: list[str]) -> Iterator[Callable[[float], list[str]]]:
    """`argv` as processes 0 and 1 of one jax.distributed job, 4 CPU devices each, the coordinator on localhost,
    configured through the environment as on GPU hosts. Yields `wait(timeout)`: both stdouts, once both exited 0.
    The processes are killed on leaving the block, whatever happened."""
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=forced_devices_env(
                4,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                **{DISTRIBUTED_ENV: "1"},
            ),
        )
        for i in range(2)
    ]

    def wait(timeout: float) -> list[str]:
        results = [proc.communicate(timeout=timeout) for proc in procs]
        for proc, (_, err) in zip(procs, results):
            assert proc.returncode == 0, err[-3000:]
        return [out for out, _ in results]

    try:
        yield wait
    finally:
        for proc in procs:
            proc.kill()


def test_two_processes_split_the_inputs(tmp_path):
    """`beit-depth predict --distributed` as two processes of one jax.distributed job (4 CPU devices each, the
    coordinator on localhost, configured through the environment as on GPU hosts): each writes every other input
    of the sorted list, together exactly the single-process outputs."""
    weights = tiny_weights(tmp_path / "tiny.msgpack")
    sizes = [(61, 97), (60, 90), (64, 100), (70, 110), (62, 95)]  # all -> (64, 96) at net 64: one program
    names = ["e", "b", "d", "a", "c"]
    for seed, (name, size) in enumerate(zip(names, sizes)):
        Image.fromarray(picture(*size, seed)).save(tmp_path / f"{name}.png")
    argv = [
        sys.executable,
        "-m",
        "beit_flax.cli",
        "predict",
        "--weights",
        str(weights),
        "--out",
        str(tmp_path / "out"),
        *(str(tmp_path / f"{name}.png") for name in names),
        "-q",
    ]  # not sorted on the command line
    with two_processes(argv) as wait:
        model, params = beit_flax.load(weights)  # the reference, on one device, while the two start up
        images = [picture(*size, seed) for seed, size in enumerate(sizes)]
        expected = beit_flax.predict(model, params, images, devices=1)
        outputs = wait(300)
    for i, out in enumerate(outputs):
        share = 3 - i  # sorted a, b, c, d, e: process 0 takes a, c, e; process 1 takes b, d
        assert f"process {i} of 2: {share} images in" in out and "batch 4 on 4 cpu devices" in out, out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{n}.{e}" for n in names for e in ("npy", "png"))

    for name, want in zip(names, expected):
        got = np.load(tmp_path / "out" / f"{name}.npy")
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), name


def test_two_processes_train_like_one_device(tmp_path):
    """tests/multiprocess_train.py as two processes of one jax.distributed job (4 CPU devices each): one FSDP mesh
    over all 8 devices, each process feeding its half of every batch; two steps equal the one-device run."""
    from finetune_helpers import fast_jit, tiny_batch
    from multiprocess_train import GLOBAL_BATCH, SEEDS, initial_state

    out = tmp_path / "result.npz"
    with two_processes([sys.executable, str(ROOT / "tests" / "multiprocess_train.py"), str(out)]) as wait:
        state0 = state = initial_state()  # the reference, on one device, while the two run
        step = fast_jit(training.train_step)
        for seed in SEEDS:
            state, metrics = step(state, tiny_batch(seed, batch=GLOBAL_BATCH))
        outputs = wait(400)
    for i, stdout in enumerate(outputs):
        assert f"process {i}: " in stdout and "split over 8 devices" in stdout, stdout

    got = np.load(out)
    assert int(got["mesh"]) == 8 and int(got["split"]) > 40
    assert float(got["loss"]) == pytest.approx(float(metrics["loss"]), rel=2e-5)
    before, after = (traverse_util.flatten_dict(s.params, sep="/") for s in (state0, state))
    for path in before:  # the tolerance of tests/multidevice/test_sharded_training.py
        if path not in state0.frozen:
            moved = np.abs(np.asarray(after[path]) - before[path]).max()
            assert np.abs(got[f"params/{path}"] - after[path]).max() <= 5e-3 * moved, path
