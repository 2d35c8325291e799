"""What the commands write and say about it: predict --pfm (MiDaS run.py's .pfm, read back by a reader written here
from the format's definition), `beit-depth export` / `export_weights` make a missing output folder as predict does,
and every `--weights` help names every known model of every family."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_helpers import scene, tiny_files

from beit_flax.cli import build_parser, main
from beit_flax.convert.cli import export_main
from beit_flax.models import registry


@pytest.fixture(scope="module")
def weights() -> Path:
    return tiny_files()[0]


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")  # in-process runs must not write to ~/.cache
    monkeypatch.setenv("BEIT_FLAX_WEIGHTS_DIR", str(tmp_path / "weights-cache"))


def read_pfm(path: Path) -> tuple[np.ndarray, float]:
    """A Portable Float Map as its definition has it (Paul Debevec's PFM page, as MiDaS utils.read_pfm reads it):
    three ASCII lines, "PF" (RGB) or "Pf" (gray), "width height", the scale whose sign is the byte order (negative:
    little-endian); then 4-byte floats, the bottom row first. -> ((H, W) float32 top row first, |scale|)."""
    data = path.read_bytes()
    lines = data.split(b"\n", 3)
    assert lines[0] == b"Pf", f"not a grayscale PFM: {lines[0]!r}"
    width, height = (int(v) for v in lines[1].split())
    scale = float(lines[2])
    byte_order = "<" if scale < 0 else ">"
    raster = lines[3]
    assert len(raster) == 4 * width * height, "the raster is not W x H floats"
    rows_bottom_up = np.frombuffer(raster, f"{byte_order}f4").reshape(height, width)
    return rows_bottom_up[::-1].astype(np.float32), abs(scale)


def test_predict_pfm_is_run_py_s_file(weights, tmp_path, capsys):
    """--pfm: one more file per image holding exactly the .npy's values, in the layout MiDaS run.py writes (its
    header bytes included); the other outputs are unchanged."""
    photo = tmp_path / "wide.png"
    Image.fromarray(scene(61, 97, 3)).save(photo)  # W != H, and a scene: a map that is not symmetric top to bottom
    out = tmp_path / "new" / "folder"  # predict makes it
    assert main(["predict", "--weights", str(weights), str(photo), "--out", str(out), "--pfm", "-q"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["wide.npy", "wide.pfm", "wide.png"]
    depth = np.load(out / "wide.npy")
    assert depth.shape == (61, 97) and np.ptp(depth) > 0
    assert not np.allclose(depth, depth[::-1]), "a vertically symmetric map would not show a flipped raster"
    pfm, scale = read_pfm(out / "wide.pfm")
    assert scale == 1.0
    np.testing.assert_array_equal(pfm, depth)  # bit for bit: both are the same float32 values
    # utils.write_pfm: "%d %d" (width first) and the scale 1 written with "%f", negated for little-endian
    assert (out / "wide.pfm").read_bytes().startswith(b"Pf\n97 61\n-1.000000\n")


def test_predict_pfm_output_is_checked_before_any_work(weights, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.fromarray(scene(40, 40, 1)).save(photo)
    out = tmp_path / "out"
    (out / "p.pfm").mkdir(parents=True)  # a folder where the .pfm would go: refused up front, nothing written
    assert main(["predict", "--weights", str(weights), str(photo), "--out", str(out), "--pfm", "-q"]) == 2
    assert "p.pfm: a folder, not a regular file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["p.pfm"]


def test_export_makes_a_missing_folder(weights, tmp_path, capsys):
    """`beit-depth export --out` in a folder that does not exist yet: made, as predict's --out is; a path under a
    file is still refused in one line, before the export."""
    import jax

    out = tmp_path / "deploy" / "cpu" / "tiny.stablehlo"
    argv = ["export", "--weights", str(weights), "--format", "stablehlo", "--size", "64", "--platforms", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = jax.export.deserialize(out.read_bytes())
    assert exported.out_avals[0].shape[1:] == (64, 64)

    (tmp_path / "a_file").write_text("not a folder")
    assert main([*argv, "--out", str(tmp_path / "a_file" / "sub" / "x.stablehlo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0], err


def test_export_takes_what_predict_takes(weights, tmp_path, capsys):
    """--weights: a PyTorch checkpoint (converted once into the weights cache), not only a .msgpack."""
    checkpoint = weights.parent / "midas.pt"
    out = tmp_path / "new" / "tiny.stablehlo"
    argv = ["export", "--weights", str(checkpoint), "--format", "stablehlo", "--size", "64x96", "--platforms", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    assert list((tmp_path / "weights-cache").rglob("*.msgpack")), "the checkpoint was not converted into the cache"


@pytest.mark.parametrize("layout", ["midas", "hf"])
def test_export_weights_makes_a_missing_folder(weights, tmp_path, layout, capsys):
    import torch
    from safetensors.numpy import load_file

    if layout == "midas":
        out = tmp_path / "back" / "to" / "midas.pt"
        assert export_main([str(weights), str(out), "--format", layout]) == 0
        assert torch.load(out, weights_only=True), "an empty state dict"
    else:  # a transformers folder, itself inside a missing folder
        out = tmp_path / "back" / "hf-folder"
        assert export_main([str(weights), str(out), "--format", layout]) == 0
        assert (out / "config.json").is_file() and load_file(out / "model.safetensors")
    capsys.readouterr()


def _weights_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{command: its --weights help} for every `beit-depth` command with a --weights option."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    helps = {}
    for name, command in commands.items():
        for action in command._actions:
            if "--weights" in action.option_strings:
                helps[name] = action.help
    return helps


def test_every_weights_help_names_every_known_model():
    """predict, video and export list every release of every family (the registry's list); app and evaluate say
    they take what predict takes."""
    names = list(registry.releases())
    families = {family.name for family, _ in registry.releases().values()}
    assert {"dpt", "zoedepth", "depth_anything"} <= families  # every family has its names in the list
    helps = _weights_helps(build_parser())
    assert {"predict", "video", "export"} <= set(helps)
    for command, text in helps.items():
        if command in ("predict", "video", "export"):
            listed = re.findall(r"[a-z0-9_]+", text)
            assert [n for n in names if n not in listed] == [], command
        else:
            assert "predict" in text, f"{command}'s --weights help says neither the names nor predict's: {text!r}"
    # and the formatted help, as a person reads it (argparse wraps at spaces only: names stay whole)
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("predict", "video", "export"):
        text = commands[command].format_help()
        assert [n for n in names if n not in text] == [], command
