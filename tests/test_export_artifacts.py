"""`beit_flax.export`: ONNX (onnxruntime, CPU) and deserialized StableHLO vs the jitted Flax model, on perturbed
weights (`init_params(spread=0.1)`: every leaf takes part), tiny and BEiT-B 384 at full size, square and not.

Difference: max |artifact - flax| / max |flax| over the batch, at most 1e-5 for float32 (measured ~1e-6); 16-bit
StableHLO against float32 is reported (a loose bound only catches a broken export).
"""

from __future__ import annotations

import gc

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_config import TINY

import beit_flax
from beit_flax import export as ex
from beit_flax.cli import main
from beit_flax.params import init_params

TOLERANCE = 1e-5


def relative(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape and out.dtype == np.float32
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def flax_depth(config, params, images: np.ndarray, dtype: str = "float32") -> np.ndarray:
    model = beit_flax.DPT(config, dtype=dtype)
    return np.asarray(jax.jit(model.apply)({"params": params}, images))  # params an argument: not baked in


def images(batch: int, size_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *size_hw, 3), dtype=np.float32)


def run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["depth"], {"images": x})[0]


def run_stablehlo(data: bytes, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.export.deserialize(data).call(x))


def check_onnx_model(data: bytes, batch_dim: str | int) -> None:
    """A standard model: passes the full checker, standard domain at ONNX_OPSET, no custom ops, the I/O contract."""
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", ex.ONNX_OPSET)}
    assert {n.domain for n in proto.graph.node} <= {""}
    (images_in,), (depth_out,) = proto.graph.input, proto.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert (images_in.name, depth_out.name) == ("images", "depth")
    assert dims(images_in)[0] == batch_dim and dims(depth_out)[0] == batch_dim


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, seed=0, spread=0.1)


@pytest.mark.parametrize("size_hw", [(64, 64), (64, 96)])
def test_tiny_both_formats_match_flax_dynamic_batch(tiny_params, size_hw):
    model = beit_flax.DPT(TINY)
    onnx_data = ex.export_onnx(model, tiny_params, size_hw)
    hlo_data = ex.export_stablehlo(model, tiny_params, size_hw)
    check_onnx_model(onnx_data, ex.BATCH_DIM)
    exported = jax.export.deserialize(hlo_data)
    assert exported.platforms == ex.PLATFORMS
    assert str(exported.in_avals[0].shape[0]) == ex.BATCH_DIM
    for batch in (1, 3):  # one artifact, any batch
        x = images(batch, size_hw, seed=batch)
        ref = flax_depth(TINY, tiny_params, x)
        assert relative(run_onnx(onnx_data, x), ref) <= TOLERANCE
        assert relative(run_stablehlo(hlo_data, x), ref) <= TOLERANCE


def test_tiny_fixed_batch_and_one_platform(tiny_params):
    model = beit_flax.DPT(TINY)
    x = images(2, (64, 96))
    ref = flax_depth(TINY, tiny_params, x)
    onnx_data = ex.export_onnx(model, tiny_params, (64, 96), batch=2)
    check_onnx_model(onnx_data, 2)
    assert relative(run_onnx(onnx_data, x), ref) <= TOLERANCE
    hlo_data = ex.export_stablehlo(model, tiny_params, (64, 96), batch=2, platforms=("cpu",))
    exported = jax.export.deserialize(hlo_data)
    assert exported.platforms == ("cpu",) and exported.in_avals[0].shape == (2, 64, 96, 3)
    assert relative(run_stablehlo(hlo_data, x), ref) <= TOLERANCE


@pytest.mark.parametrize("dtype,bound", [("bfloat16", 0.05), ("float16", 0.01)])
def test_tiny_16_bit_stablehlo(tiny_params, dtype, bound):
    """16-bit weights (half the file) and compute; float32 in and out. Measured ~1.4e-2 (bf16), ~1.7e-3 (fp16)."""
    x = images(2, (64, 96))
    full = ex.export_stablehlo(beit_flax.DPT(TINY), tiny_params, (64, 96))
    half = ex.export_stablehlo(beit_flax.DPT(TINY, dtype=dtype), tiny_params, (64, 96))
    assert len(half) < 0.75 * len(full)
    out = run_stablehlo(half, x)
    assert relative(out, flax_depth(TINY, tiny_params, x)) <= bound
    # the same program as the 16-bit Flax model given the same 16-bit-stored weights
    params16 = jax.tree.map(lambda p: np.asarray(p).astype(dtype), tiny_params)
    assert relative(out, flax_depth(TINY, params16, x, dtype)) <= TOLERANCE


def test_bad_arguments_are_refused(tiny_params, tmp_path):
    model = beit_flax.DPT(TINY)
    with pytest.raises(ValueError, match="multiples of 16"):
        ex.export_stablehlo(model, tiny_params, (64, 72))
    with pytest.raises(ValueError, match="platforms"):
        ex.export_stablehlo(model, tiny_params, (64, 64), platforms=("rocm",))
    with pytest.raises(ValueError, match="format"):
        ex.export(model, tiny_params, "tflite", (64, 64), tmp_path / "x")


def test_cli_export_both_formats(tiny_params, tmp_path, capsys):
    weights = tmp_path / "tiny.msgpack"
    beit_flax.save(weights, TINY, tiny_params)
    x = images(2, (64, 96))
    ref = flax_depth(TINY, tiny_params, x)
    for fmt, run in (("onnx", run_onnx), ("stablehlo", run_stablehlo)):
        out = tmp_path / f"tiny.{fmt}"
        argv = ["export", "--weights", str(weights), "--format", fmt, "--size", "64x96", "--out", str(out)]
        assert main([*argv, "--platforms", "cpu"] if fmt == "stablehlo" else argv) == 0
        line = capsys.readouterr().out
        assert f"{out}: {fmt}, 64x96, batch dynamic, float32" in line and "MiB in" in line
        assert relative(run(out.read_bytes(), x), ref) <= TOLERANCE
    # usage errors exit 2 and write nothing
    bad = tmp_path / "bad.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--size", "64x72", "--out", str(bad)]) == 2
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--format",
                "onnx",
                "--size",
                "64",
                "--dtype",
                "float16",
                "--out",
                str(bad),
            ]
        )
        == 2
    )
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--size", "64", "--out", str(weights)]) == 2
    assert not bad.exists() and "error" in capsys.readouterr().err
    # the network input is bounded as predict's is: no artifact for a 10-gigapixel input
    huge = ["export", "--weights", str(weights), "--format", "stablehlo", "--size", "100000", "--out", str(bad)]
    assert main(huge) == 2
    assert "over the limit of 67.1 MP (raise it with --max-pixels)" in capsys.readouterr().err and not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.msgpack", "tiny.onnx", "tiny.stablehlo"]


@pytest.fixture
def release_compiled():
    """BEiT-B's 0.45 GB of weights sit in each compiled artifact: drop jax's compiled programs after each test."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.mark.full_size
@pytest.mark.parametrize("size_hw", [(384, 384), (384, 512)])
def test_base_384_full_size_both_formats(size_hw, release_compiled):
    """Measured: ONNX 1.8e-6 (square), 2.2e-6 (384x512); StableHLO 0 (the same XLA CPU program as the Flax model)."""
    config = beit_flax.PRESETS["dpt_beit_base_384"]
    params = init_params(config, seed=0, spread=0.1)
    model = beit_flax.DPT(config)
    x = images(1, size_hw)
    ref = flax_depth(config, params, x)
    hlo = ex.export_stablehlo(model, params, size_hw)
    assert relative(run_stablehlo(hlo, x), ref) <= TOLERANCE
    del hlo
    jax.clear_caches()
    onnx_data = ex.export_onnx(model, params, size_hw)
    check_onnx_model(onnx_data, ex.BATCH_DIM)
    assert relative(run_onnx(onnx_data, x), ref) <= TOLERANCE


def _file_size_limit(limit: int):
    """For subprocess's preexec_fn: writes past `limit` bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored,
    which exec keeps)."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_export_on_a_full_disk_names_the_output(tiny_params, tmp_path):
    """`beit-depth export` whose artifact does not fit (a file size limit in the child: the same failed write): one
    line naming the output and the reason, exit 3, no output and no temp file."""
    import os
    import subprocess
    import sys

    weights = tmp_path / "tiny.msgpack"
    beit_flax.save(weights, TINY, tiny_params)
    out = tmp_path / "out" / "tiny.stablehlo"
    argv = [sys.executable, "-m", "beit_flax.cli", "export", "--weights", str(weights), "--format", "stablehlo"]
    argv += ["--size", "64", "--platforms", "cpu", "--out", str(out)]
    environ = {**os.environ, "BEIT_FLAX_CACHE_DIR": "off"}
    done = subprocess.run(
        argv, capture_output=True, text=True, env=environ, timeout=300, preexec_fn=_file_size_limit(100_000)
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"beit-depth: error: {out}: cannot be written (File too large); nothing of it was left"
    ]
    assert list(out.parent.iterdir()) == []
