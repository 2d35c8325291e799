"""The promise of every command (convert_weights, export_weights, beit-depth predict / video), tried as an adversarial
user would: nothing a user hands us destroys or corrupts a file it was not asked to write, replaces anything that is
not a regular file, runs unbounded on a small input, or exits 0 with a wrong result.

One test per class of hostile input, each over every command it applies to. Each case checks: the exit code of the
README's table, exactly one stderr line naming the file and the reason, no traceback, every pre-existing file
byte-identical (inputs included), no temp file left (the same snapshot), and a time bound. Hostile inputs are built
here from the tiny model; device nodes and FIFOs live in tmp_path; the unprivileged cases run as `nobody`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import serialization
from PIL import Image
from predict_helpers import scene, tiny_files
from test_files import KINDS, fifo_watchdog, make_node, snapshot

from beit_flax.cli import main as depth_main
from beit_flax.convert.cli import export_main
from beit_flax.convert.cli import main as convert_main
from beit_flax.files import MAX_CHECKPOINT_BYTES, MAX_WEIGHTS_BYTES
from beit_flax.models.family import _traced as traced_shapes  # the cache of every traced parameter tree

# imageio-ffmpeg starts ffmpeg with fork + exec (no Python in the child): JAX's fork warning is moot
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

MAINS = {"convert": convert_main, "export": export_main, "depth": depth_main}
TIME_LIMIT = 30.0  # seconds per command, on the 2-core CI machine
EXIT = {"convert": {"input": 2, "output": 3}, "export": {"input": 2, "output": 3}, "depth": {"input": 2, "output": 2}}


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")  # in-process runs must not write to ~/.cache
    # beit-depth points Pillow's guard at --max-pixels (a process-wide setting): put it back after each test
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@functools.cache
def originals() -> dict[str, bytes]:
    """The tiny model's files, built once: weights, MiDaS .pt, transformers hub folder, a photo and a 5-frame clip."""
    import imageio.v2 as imageio

    weights, _ = tiny_files()
    folder = Path(tempfile.mkdtemp(prefix="beit-flax-safety-"))
    assert export_main([str(weights), str(folder / "hub"), "--format", "hf"]) == 0
    buffer = io.BytesIO()
    Image.fromarray(scene(40, 56)).save(buffer, format="PNG")
    imageio.mimwrite(
        folder / "clip.mp4",
        [scene(32, 48, seed) for seed in range(5)],
        format="FFMPEG",
        fps=10,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    made = {
        "w.msgpack": weights.read_bytes(),
        "ckpt.pt": (weights.parent / "midas.pt").read_bytes(),
        "hub/model.safetensors": (folder / "hub" / "model.safetensors").read_bytes(),
        "hub/config.json": (folder / "hub" / "config.json").read_bytes(),
        "photo.png": buffer.getvalue(),
        "clip.mp4": (folder / "clip.mp4").read_bytes(),
    }
    shutil.rmtree(folder)
    return made


@pytest.fixture()
def ws(tmp_path, capsys) -> Path:
    """A workspace holding the tiny model's files (see `originals`)."""
    for name, data in originals().items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    capsys.readouterr()
    return tmp_path


def run(capsys, command: str, *argv) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of a command run in-process, within the time limit and without a traceback."""
    start = time.perf_counter()
    try:
        code = MAINS[command]([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert elapsed < TIME_LIMIT, f"{command} {argv}: {elapsed:.1f} s"
    return code, err.strip().splitlines()


def refused(ws: Path, capsys, command: str, *argv, code: int, names: tuple = (), says: str = "") -> str:
    """Run a command that must refuse: exit `code`, one stderr line holding every name and `says`, and the workspace
    exactly as before (nothing written, nothing left, inputs intact). Returns the line."""
    before = snapshot(ws)
    got, lines = run(capsys, command, *argv)
    assert got == code and len(lines) == 1, (got, lines)
    assert all(str(name) in lines[0] for name in names) and says in lines[0], lines[0]
    assert snapshot(ws) == before
    return lines[0]


def depth(*argv) -> tuple:
    return ("depth", *argv, "-q")


# --- 1. outputs that are not regular files --------------------------------------------------------------------------

# command and arguments (OUT: the hostile node; other capitals: the workspace's files), the node's path
WRITERS = {
    "convert": (("convert", "CKPT", "OUT"), "out.msgpack"),
    "export": (("export", "W", "OUT"), "out.pt"),
    "export folder": (("export", "W", "HF", "--format", "hf"), "hf/model.safetensors"),
    "predict": (depth("predict", "--weights", "W", "PHOTO", "--out", "OUTDIR"), "out/photo.npy"),
    "video": (depth("video", "CLIP", "--weights", "W", "--out", "OUT"), "out.mp4"),
}


def _argv(ws: Path, argv: tuple, out: Path) -> tuple:
    places = {
        "OUT": out,
        "HF": ws / "hf",
        "OUTDIR": ws / "out",
        "CKPT": ws / "ckpt.pt",
        "W": ws / "w.msgpack",
        "PHOTO": ws / "photo.png",
        "CLIP": ws / "clip.mp4",
    }
    return tuple(places.get(a, a) for a in argv)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_outputs_that_are_not_regular_files_are_never_replaced(ws, capsys, writer, kind):
    """A device node (as root: `/dev/null` once became a regular file), FIFO, socket, folder or symlink where an
    output goes: refused before any work, the node unchanged."""
    argv, node_name = WRITERS[writer]
    node = ws / node_name
    node.parent.mkdir(exist_ok=True)
    make_node(node, kind, target=ws / "victim")
    refused(
        ws,
        capsys,
        *_argv(ws, argv, node),
        code=EXIT[argv[0]]["output"],
        names=(node,),
        says="not a regular file; it is never replaced",
    )


# --- 2. and 3. outputs that are inputs ------------------------------------------------------------------------------


def test_an_output_that_is_an_input_is_refused(ws, capsys):
    """By path, through `..`, by hard link, and the files a folder input reads: the input stays intact."""
    os.link(ws / "ckpt.pt", ws / "hard.pt")
    (ws / "sub").mkdir()
    shutil.copy(ws / "w.msgpack", ws / "w.pt")  # a weights file may have any name
    cases = [
        (("convert", ws / "ckpt.pt", ws / "ckpt.pt"), ws / "ckpt.pt"),
        (("convert", ws / "ckpt.pt", ws / "sub" / ".." / "ckpt.pt"), ws / "ckpt.pt"),
        (("convert", ws / "ckpt.pt", ws / "hard.pt"), ws / "ckpt.pt"),
        (("convert", ws / "hub", ws / "hub" / "model.safetensors"), ws / "hub" / "model.safetensors"),
        (("convert", ws / "hub" / "model.safetensors", ws / "hub" / "config.json"), ws / "hub" / "config.json"),
        (("export", ws / "w.pt", ws / "w.pt"), ws / "w.pt"),
        (depth("video", ws / "clip.mp4", "--weights", ws / "w.msgpack", "--out", ws / "clip.mp4"), ws / "clip.mp4"),
    ]
    for argv, source in cases:
        refused(
            ws,
            capsys,
            *argv,
            code=EXIT[argv[0]]["output"],
            names=(f"is the input {source}",),
            says="writing it would destroy the input",
        )


def test_predict_never_writes_over_its_inputs(ws, capsys):
    """`predict DIR --out DIR` would replace photo.png with its depth map; so would a stem clash (photo.jpg and
    photo.png: photo.jpg's outputs are photo.npy and photo.png). Refused before any work, saying what to do; with
    --no-png nothing clashes and it runs."""
    pics = ws / "pics"
    pics.mkdir()
    shutil.copy(ws / "photo.png", pics / "photo.png")
    shutil.copy(ws / "photo.png", pics / "other.png")
    refused(
        ws,
        capsys,
        *depth("predict", "--weights", ws / "w.msgpack", pics, "--out", pics),
        code=2,
        names=(f"cannot write {pics / 'other.png'}: is the input {pics / 'other.png'}",),
        says="writing it would destroy the input (choose another --out folder)",
    )
    Image.open(pics / "photo.png").convert("RGB").save(pics / "photo.jpg")
    clash = depth("predict", "--weights", ws / "w.msgpack", pics / "photo.jpg", pics / "photo.png", "--out", pics)
    refused(ws, capsys, *clash, code=2, names=(f"is the input {pics / 'photo.png'}",))
    before = snapshot(ws)
    npy_only = depth("predict", "--weights", ws / "w.msgpack", pics / "photo.png", "--out", pics, "--no-png")
    assert run(capsys, *npy_only)[0] == 0
    assert snapshot(ws) == {**before, "pics/photo.npy": snapshot(ws)["pics/photo.npy"]}


# --- 4. the video's temp file ----------------------------------------------------------------------------------------


def test_video_temp_file_is_exclusive_and_unique(ws, capsys, monkeypatch):
    """The old temp name (.out.partial.mp4) planted as a symlink is ignored; two runs to one output each commit
    their own complete file; a run that finds its temp name taken fails cleanly; nothing is left behind."""
    import imageio.v2 as imageio

    from beit_flax import files

    (ws / "victim").write_bytes(b"precious")
    (ws / ".out.partial.mp4").symlink_to(ws / "victim")
    committed = []
    real_replace = files.replace
    monkeypatch.setattr("beit_flax.video.replace", lambda t, p: (committed.append(t), real_replace(t, p)))
    argv = depth("video", ws / "clip.mp4", "--weights", ws / "w.msgpack", "--out", ws / "out.mp4")
    codes = []
    runs = [threading.Thread(target=lambda: codes.append(depth_main([str(a) for a in argv[1:]]))) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(120)
    capsys.readouterr()
    assert codes == [0, 0] and len(set(committed)) == 2
    assert len(imageio.mimread(ws / "out.mp4", format="FFMPEG")) == 5
    assert (ws / "victim").read_bytes() == b"precious"
    assert sorted(p.name for p in ws.glob(".*")) == [".out.partial.mp4"]  # ours only: no temp left

    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "taken")
    (ws / ".out.taken.tmp.mp4").symlink_to(ws / "victim")
    refused(ws, capsys, *argv, code=1, names=(ws / "clip.mp4",), says="File exists")


# --- 5. small files describing huge models ---------------------------------------------------------------------------


def _weights_with(ws: Path, name: str, mutate) -> Path:
    payload = serialization.msgpack_restore(originals()["w.msgpack"])
    mutate(payload)
    (ws / name).write_bytes(serialization.msgpack_serialize(payload))
    return ws / name


def _every_weights_reader(ws: Path, capsys, weights: Path, says: str) -> None:
    """predict, video and export_weights refuse `weights` with exit 2, naming it, before any work."""
    refused(
        ws,
        capsys,
        *depth("predict", "--weights", weights, ws / "photo.png", "--out", ws / "o"),
        code=2,
        names=(weights,),
        says=says,
    )
    refused(
        ws,
        capsys,
        *depth("video", ws / "clip.mp4", "--weights", weights, "--out", ws / "o.mp4"),
        code=2,
        names=(weights,),
        says=says,
    )
    refused(ws, capsys, "export", weights, ws / "o.pt", code=2, names=(weights,), says=says)


def test_small_files_describing_huge_models_fail_before_tracing(ws, capsys):
    """depth=100000 in a 600 KB weights file, depth 60 over a 4-block tree, 2000 relative-position tables in a small
    .pt: refused from the config's bounds or the tree's block count, before any shape is traced."""
    huge = _weights_with(ws, "huge.msgpack", lambda p: p["config"].update(depth=100_000, hooks=[0, 1, 2, 99_999]))
    deep = _weights_with(ws, "deep.msgpack", lambda p: p["config"].update(depth=60, hooks=[0, 1, 2, 59]))
    table = "pretrained.model.blocks.{}.attn.relative_position_bias_table"  # 52 x 2 in the tiny model
    torch.save({**_midas_sd(), **{table.format(i): torch.zeros(52, 2) for i in range(4, 2000)}}, ws / "tables.pt")
    traced = traced_shapes.cache_info().misses
    _every_weights_reader(ws, capsys, huge, "depth 100000 is over the limit of 64")
    _every_weights_reader(ws, capsys, deep, "the tree has blocks 0..3 (4), the config's depth is 60")
    refused(
        ws,
        capsys,
        "convert",
        ws / "tables.pt",
        ws / "out.msgpack",
        code=2,
        names=(ws / "tables.pt",),
        says="depth 2000 is over the limit of 64",
    )
    assert traced_shapes.cache_info().misses == traced


# --- 6. the network input is bounded ---------------------------------------------------------------------------------


def test_network_input_is_bounded_by_max_pixels(ws, capsys):
    """net_size=10**9 in a weights file, --size 10**9, a net size whose square is over --max-pixels, and a panorama
    whose network input (not the image) is over it: refused up front (the panorama: that image, exit 1)."""
    huge = _weights_with(ws, "net.msgpack", lambda p: p["config"].update(net_size=10**9))
    _every_weights_reader(ws, capsys, huge, "net_size 1000000000 is over the limit of 8192")
    for argv in (
        depth("predict", "--weights", ws / "w.msgpack", ws / "photo.png", "--out", ws / "o"),
        depth("video", ws / "clip.mp4", "--weights", ws / "w.msgpack", "--out", ws / "o.mp4"),
    ):
        refused(
            ws,
            capsys,
            *argv,
            "--size",
            "1000000000",
            code=2,
            names=("--size 1000000000",),
            says="over the limit of 67.1 MP (raise it with --max-pixels)",
        )
        refused(
            ws,
            capsys,
            *argv,
            "--max-pixels",
            "4000",
            code=2,
            names=(ws / "w.msgpack",),
            says="64x64 network input is over the limit of 0.004 MP",
        )
    Image.fromarray(scene(60, 6000)).save(ws / "panorama.png")  # 0.36 MP; network input at net 64: 64 x 6400
    (ws / "o").mkdir()
    refused(
        ws,
        capsys,
        *depth(
            "predict", "--weights", ws / "w.msgpack", ws / "panorama.png", "--out", ws / "o", "--max-pixels", "400000"
        ),
        code=1,
        names=(ws / "panorama.png",),
        says="network input 6400x64 = 0.41 MP is over the limit of 0.4 MP",
    )


# --- 7. inputs that are not regular files, or too large ------------------------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as file:
        file.truncate(size)  # takes no disk
    return path


@pytest.mark.parametrize("kind", [*KINDS[:4], "too large"])
def test_inputs_that_are_not_regular_files_are_refused_unread(ws, capsys, kind):
    """A device (`--weights /dev/zero` read until memory ran out), FIFO (would block), socket, folder, or a sparse
    file larger than any weights file or checkpoint: refused from stat, by every command that reads it."""
    node = lambda name, limit: _sparse(ws / name, limit + 1) if kind == "too large" else make_node(ws / name, kind)
    says = {"too large": "larger than any", "folder": "folder"}.get(kind, "not a regular file")
    weights = node("node.msgpack", MAX_WEIGHTS_BYTES)
    with fifo_watchdog(weights):
        _every_weights_reader(ws, capsys, weights, says)
    checkpoint = node("node.pt", MAX_CHECKPOINT_BYTES)
    with fifo_watchdog(checkpoint):
        refused(ws, capsys, "convert", checkpoint, ws / "out.msgpack", code=2, names=(checkpoint,), says=says)
    (ws / "hub" / "config.json").unlink()
    config = node("hub/config.json", 2**20)
    with fifo_watchdog(config):
        refused(ws, capsys, "convert", ws / "hub", ws / "out.msgpack", code=2, names=(config,), says=says)


def test_export_of_a_missing_or_folder_input_is_a_bad_input(ws, capsys):
    """export_weights said "cannot write OUT.pt" (exit 3) for a missing or folder input: it is a bad input (2)."""
    refused(
        ws,
        capsys,
        "export",
        ws / "missing.msgpack",
        ws / "o.pt",
        code=2,
        names=(ws / "missing.msgpack",),
        says="no such file",
    )
    refused(ws, capsys, "export", ws / "hub", ws / "o.pt", code=2, names=(ws / "hub",), says="a folder")


@pytest.mark.parametrize("kind", ["fifo", "device", "socket"])
def test_an_image_that_is_not_a_regular_file_is_reported_and_skipped(ws, capsys, kind):
    """An image input that is a FIFO (would block), a device or a socket: one line, the other image done (exit 1)."""
    node = make_node(ws / f"{kind}.png", kind)
    with fifo_watchdog(node):
        code, lines = run(
            capsys, *depth("predict", "--weights", ws / "w.msgpack", node, ws / "photo.png", "--out", ws / "o")
        )
    assert code == 1 and lines == [f"beit-depth: error: {node}: {_KIND_TEXT[kind]}, not a regular file"], lines
    assert sorted(p.name for p in (ws / "o").iterdir()) == ["photo.npy", "photo.png"]


_KIND_TEXT = {"fifo": "a FIFO", "device": "a device", "socket": "a socket"}


# --- 8. compressed zip entries ------------------------------------------------------------------------------------


def _rezip(source: bytes, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return path


def test_deflated_checkpoints_are_read_correctly_and_zip_bombs_refused(ws, capsys):
    """A re-zipped (deflated) .pt converts to exactly the weights of the stored one (torch's mmap read the
    compressed bytes as tensor data); one whose entries would expand 1000x is refused as a zip bomb."""
    _rezip(originals()["ckpt.pt"], ws / "deflated.pt")
    assert run(capsys, "convert", ws / "deflated.pt", ws / "deflated.msgpack")[0] == 0
    assert (ws / "deflated.msgpack").read_bytes() == originals()["w.msgpack"]
    bomb = _rezip(originals()["ckpt.pt"], ws / "bomb.pt", {"midas/data/999": bytes(80 * 2**20)})
    refused(ws, capsys, "convert", bomb, ws / "out.msgpack", code=2, names=(bomb,), says="possible zip bomb")


# --- 9. tensors that are not fp32 / fp16 / bf16 --------------------------------------------------------------------


def _midas_sd() -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(originals()["ckpt.pt"]), weights_only=True)


def test_only_float_tensors_convert(ws, capsys):
    """int16 / int32 / int64 / bool / complex (its imaginary part was silently dropped) / float64 tensors, in a .pt
    and in a .safetensors: exit 2 naming the key and dtype; fp16 and bf16 convert."""
    from safetensors.torch import save_file

    key = "pretrained.model.blocks.1.gamma_1"
    for dtype in (torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64, torch.float64):
        sd = _midas_sd()
        sd[key] = sd[key].to(dtype)
        torch.save(sd, ws / "typed.pt")
        refused(
            ws,
            capsys,
            "convert",
            ws / "typed.pt",
            ws / "out.msgpack",
            code=2,
            names=(ws / "typed.pt", key),
            says=f"is a {str(dtype).removeprefix('torch.')} tensor",
        )
        if dtype is not torch.complex64:  # not a safetensors dtype
            save_file({k: v.contiguous() for k, v in sd.items()}, ws / "typed.safetensors")
            refused(
                ws,
                capsys,
                "convert",
                ws / "typed.safetensors",
                ws / "out.msgpack",
                code=2,
                names=(ws / "typed.safetensors", key),
                says=f"is a {str(dtype).removeprefix('torch.')} tensor",
            )
    for dtype in (torch.float16, torch.bfloat16):
        torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in _midas_sd().items()}, ws / "half.pt")
        assert run(capsys, "convert", ws / "half.pt", ws / "half.msgpack")[0] == 0


# --- 10. and 11. config values and leaves --------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [float("nan"), -1e-6, 0.0, "abc", None])
def test_config_values_are_validated_when_read(ws, capsys, eps):
    """layer_norm_eps NaN or negative gave an all-NaN depth map with exit 0; "abc" a traceback. In config.json and in
    a weights file: exit 2 naming the file and the value."""
    config = json.loads((ws / "hub" / "config.json").read_text())
    config["backbone_config"]["layer_norm_eps"] = eps
    (ws / "hub" / "config.json").write_text(json.dumps(config))
    says = "layer_norm_eps" if isinstance(eps, float) else "is not a number"
    refused(ws, capsys, "convert", ws / "hub", ws / "out.msgpack", code=2, names=(ws / "hub",), says=says)
    weights = _weights_with(ws, "eps.msgpack", lambda p: p["config"].update(layer_norm_eps=eps))
    _every_weights_reader(ws, capsys, weights, "layer_norm_eps must be a number in (0, 0.001]")


LEAVES = {
    "float": 3.0,
    "str": "x",
    "None": None,
    "bool": True,
    "list": [0.0] * 8,
    "int array": np.zeros(8, np.int32),
    "complex array": np.zeros(8, np.complex64),
    "empty dict": {},
}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_weights_with_leaves_that_are_not_float_arrays(ws, capsys, leaf):
    """3.0, "x" etc. in place of an array: one line naming the file and the path, exit 2 (was a traceback)."""
    weights = _weights_with(ws, "leaf.msgpack", lambda p: p["params"]["head"]["conv1"].update(bias=LEAVES[leaf]))
    says = "missing head/conv1/bias" if leaf == "empty dict" else "head/conv1/bias"
    _every_weights_reader(ws, capsys, weights, says)


# --- 13. interrupts -------------------------------------------------------------------------------------------------


SLOW_RENAME = """
import sys, time
import beit_flax.files as files
real = files.replace
files.replace = lambda temp, path: (print("TEMP", temp, flush=True), time.sleep(120), real(temp, path))
from beit_flax.cli import main as depth_main
from beit_flax.convert.cli import main as convert_main
sys.exit({"convert": convert_main, "depth": depth_main}[sys.argv[1]](sys.argv[2:]))
"""


def test_interrupts_leave_no_temp_file_and_one_line(ws):
    """Ctrl-C and SIGTERM while the output is about to be renamed into place (the temp file complete): exit 130 /
    143, one line, no temp file, the old output untouched. The three runs go in parallel."""
    (ws / "out.msgpack").write_bytes(b"old output")
    env = {**os.environ, "BEIT_FLAX_CACHE_DIR": "off", "JAX_PLATFORMS": "cpu"}
    jobs = {
        ("convert", signal.SIGINT): ["convert", ws / "ckpt.pt", ws / "out.msgpack"],
        ("convert", signal.SIGTERM): ["convert", ws / "ckpt.pt", ws / "out.msgpack"],
        ("video", signal.SIGTERM): [
            "depth",
            "video",
            ws / "clip.mp4",
            "--weights",
            ws / "w.msgpack",
            "--out",
            ws / "out.mp4",
            "-q",
        ],
    }
    before = snapshot(ws)
    procs = {
        job: subprocess.Popen(
            [sys.executable, "-c", SLOW_RENAME, *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for job, argv in jobs.items()
    }
    try:
        for (_, signum), proc in procs.items():
            line = proc.stdout.readline()  # the temp file is written and complete
            assert line.startswith("TEMP"), (line, proc.stderr.read() if proc.poll() is not None else "")
            proc.send_signal(signum)
        for (command, signum), proc in procs.items():
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 128 + signum, err
            prog = "convert_weights" if command == "convert" else "beit-depth"
            assert err.strip().splitlines() == [f"{prog}: interrupted ({signum.name}); no partial output was left"]
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert snapshot(ws) == before


# --- 14. video options and errors ----------------------------------------------------------------------------------


def test_video_options_and_ffmpeg_errors(ws, capsys, monkeypatch):
    """--fps nan / -5 / 0 / inf (a traceback, a broken pipe, silently ignored): refused by the parser. A video
        ffmpeg cannot read, or cannot encode (an unknown codec: was exit 0 with an empty file once the temp file was
    made up front): one line, exit 1; ffmpeg's log only with --debug."""
    argv = depth("video", ws / "clip.mp4", "--weights", ws / "w.msgpack", "--out", ws / "o.mp4")
    for fps in ("nan", "-5", "0", "inf", "1e9", "abc"):
        before = snapshot(ws)
        code, lines = run(capsys, *argv, "--fps", fps)
        assert code == 2 and "argument --fps: expected frames per second" in lines[-1] and fps in lines[-1], lines
        assert snapshot(ws) == before
    (ws / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    junk = depth("video", ws / "junk.mp4", "--weights", ws / "w.msgpack", "--out", ws / "o.mp4")
    refused(ws, capsys, *junk, code=1, names=(ws / "junk.mp4",), says="cannot read video")
    import imageio.v2 as imageio

    real_writer = imageio.get_writer  # ffmpeg fails; imageio does not say so (it ignores ffmpeg's exit status)
    monkeypatch.setattr(imageio, "get_writer", lambda *a, **k: real_writer(*a, **{**k, "codec": "no_such_codec"}))
    refused(ws, capsys, *argv, code=1, names=(ws / "clip.mp4",), says="cannot make the depth video")
    monkeypatch.undo()
    before = snapshot(ws)
    assert depth_main([str(a) for a in junk[1:]] + ["--debug"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) > 1 and snapshot(ws) == before  # the detail, on request


# --- 15. messages that name the file and the key -------------------------------------------------------------------


def test_bad_tensors_are_named_by_their_checkpoint_key(ws, capsys):
    """An extra block past the depth, a conv or fused qkv of the wrong rank or size, a 0-d tensor where the config
    is read: one line naming the file and the key (was "params: parameters do not match...", IndexError, "axes
    don't match array")."""
    sd = _midas_sd()
    cases = {
        "pretrained.model.blocks.7.attn.proj.weight": (
            sd["pretrained.model.blocks.0.attn.proj.weight"],
            "the config (4 blocks) has no encoder/block_7",
        ),
        "scratch.refinenet2.out_conv.weight": (torch.ones(16, 16), "has shape (16, 16), config needs (16, 16, 1, 1)"),
        "pretrained.model.blocks.0.attn.qkv.weight": (torch.ones(95, 32), "has shape (95, 32), config needs (96, 32)"),
        "pretrained.model.cls_token": (torch.tensor(1.0), "has shape (), not 3 dimensions"),
        "scratch.layer1_rn.weight": (torch.ones(16), "has shape (16,), not 4 dimensions"),
    }
    for key, (tensor, says) in cases.items():
        torch.save({**sd, key: tensor}, ws / "bad.pt")
        refused(ws, capsys, "convert", ws / "bad.pt", ws / "out.msgpack", code=2, names=(ws / "bad.pt", key), says=says)


# --- 16. unwritable output, as an unprivileged user ----------------------------------------------------------------


AS_NOBODY = """
import json, os, sys
import tqdm, PIL.Image
import beit_flax.cli, beit_flax.convert.cli, beit_flax.convert.checkpoint
PIL.Image.init()
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter lives under /root
runs = json.loads(sys.argv[1])
mains = {"convert": beit_flax.convert.cli.main, "export": beit_flax.convert.cli.export_main,
         "depth": beit_flax.cli.main}
for argv in runs:
    print(json.dumps([mains[argv[0]](argv[1:])]), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to nobody, which needs root")
def test_an_unwritable_output_folder_is_found_before_the_work(capsys):
    """As `nobody`, --out in a folder it cannot write: every command says so before any work (predict used to run
    inference on every image first), with nothing written."""
    root = Path(tempfile.mkdtemp(prefix="beit-flax-nobody-"))  # pytest's tmp_path is root-only
    try:
        for name, data in originals().items():
            (root / name).parent.mkdir(exist_ok=True)
            (root / name).write_bytes(data)
        (root / "locked").mkdir()
        for path in (root, root / "hub", root / "locked"):
            path.chmod(0o555)
        runs = [
            ["convert", root / "ckpt.pt", root / "locked" / "o.msgpack"],
            ["export", root / "w.msgpack", root / "locked" / "o.pt"],
            ["depth", "predict", "--weights", root / "w.msgpack", root / "photo.png", "--out", root / "locked"],
            ["depth", "video", root / "clip.mp4", "--weights", root / "w.msgpack", "--out", root / "locked" / "o.mp4"],
        ]
        before = snapshot(root)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, json.dumps([[str(a) for a in r] for r in runs])],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
            env={**os.environ, "BEIT_FLAX_CACHE_DIR": "off", "HOME": str(root)},
        )
        assert time.perf_counter() - start < TIME_LIMIT
        codes = [json.loads(line)[0] for line in done.stdout.splitlines()]
        lines = done.stderr.strip().splitlines()
        assert codes == [3, 3, 2, 2] and len(lines) == 4, done.stderr
        assert all(f"{root / 'locked'} is not writable" in line for line in lines), lines
        assert snapshot(root) == before
    finally:
        for path in (root, root / "hub", root / "locked"):
            path.chmod(0o755)
        shutil.rmtree(root)


# --- 17. a checkpoint truncated while it is converted ---------------------------------------------------------------


TRUNCATE_WHILE_CONVERTING = """
import os, sys
from beit_flax.convert import checkpoint
real = checkpoint.Checkpoint.take
def take(self, key):  # cut the file to a quarter as soon as the first tensor is asked for
    if not getattr(self, "cut", False):
        self.cut = True
        os.truncate(self.path, os.path.getsize(self.path) // 4)
    return real(self, key)
checkpoint.Checkpoint.take = take
from beit_flax.convert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_checkpoint_truncated_while_converted_is_a_clean_error(ws):
    """With the file mapped into memory, this was SIGBUS (exit 135, no message). Now a safetensors file is read with
    pread (a short read: exit 2, one line) and a .pt is read whole before (converts from what was read)."""
    outcomes = {}
    for name in ("hub/model.safetensors", "ckpt.pt"):
        done = subprocess.run(
            [sys.executable, "-c", TRUNCATE_WHILE_CONVERTING, str(ws / name), str(ws / "t.msgpack")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        outcomes[name] = done.returncode, done.stderr.strip().splitlines()
    code, lines = outcomes["hub/model.safetensors"]
    assert code == 2 and len(lines) == 1 and "the file ends inside" in lines[0], outcomes
    assert outcomes["ckpt.pt"] == (0, []), outcomes
    assert (ws / "t.msgpack").read_bytes() == originals()["w.msgpack"]


def test_images_are_not_memory_mapped(ws, monkeypatch):
    """Pillow maps raw grayscale images (PGM, BMP, TIFF) that it opens by name; a mapped file truncated while it is
    decoded is SIGBUS. read_image hands it a file object, which it reads instead."""
    import mmap

    from beit_flax.images import read_image

    maps = []
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: maps.append(a) or (_ for _ in ()).throw(OSError("spy")))
    gray = scene(40, 56)[:, :, 0]  # Pillow maps the modes it can use in place: L, P, RGBA, I;16...
    for name in ("raw.pgm", "raw.bmp", "raw.tif"):
        Image.fromarray(gray).save(ws / name)
        np.testing.assert_array_equal(read_image(ws / name), np.repeat(gray[:, :, None], 3, axis=2))
    assert maps == []


# --- 18. --max-pixels above Pillow's own guard -----------------------------------------------------------------------


def _png_header(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG that claims width x height and holds almost no data (decoding it fails early)."""
    import struct
    import zlib

    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    )
    return path


def test_max_pixels_is_the_one_limit(ws, capsys):
    """A 180 MP image is over Pillow's own guard (179 MP): with --max-pixels above it, the image is decoded (this one
    then fails as truncated), not refused by Pillow; by default our limit refuses it from the header."""
    big = _png_header(ws / "big.png", 20_000, 9_000)
    (ws / "o").mkdir()
    argv = depth("predict", "--weights", ws / "w.msgpack", big, "--out", ws / "o")
    refused(ws, capsys, *argv, "--max-pixels", "200000000", code=1, names=(big,), says="cannot read")
    refused(ws, capsys, *argv, code=1, names=(big,), says="is over the limit of 67.1 MP (raise it with --max-pixels)")
