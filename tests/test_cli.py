"""`beit-depth`: predict on a folder of mixed images end to end (in-process, plus one run of the console script),
bad inputs reported and skipped, name clashes, video."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_helpers import scene, tiny_files, write_images

import beit_flax
from beit_flax.cli import main
from beit_flax.cli.predict import expand_inputs, output_stems
from beit_flax.images import read_image, to_png16

BATCH = "2"  # as in test_predict.py: the jitted programs are shared within the session


@pytest.fixture(scope="module")
def weights() -> Path:
    return tiny_files()[0]


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")  # in-process runs must not write to ~/.cache


def api_depth(weights: Path, path: Path) -> np.ndarray:
    model, params = beit_flax.load(weights)
    return beit_flax.predict(model, params, [read_image(path)], batch_size=int(BATCH))[0]


def test_predict_folder_end_to_end(weights, tmp_path, capsys):
    images = write_images(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not an image, skipped")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "broken.png").write_text("not a png")
    (tmp_path / "more").mkdir()
    shutil.copy(images["portrait"][0], tmp_path / "more" / "landscape.png")  # clashes with in/landscape.jpg
    out = tmp_path / "out"
    argv = [
        "predict",
        "--weights",
        str(weights),
        str(tmp_path / "in"),
        str(tmp_path / "more" / "*.png"),
        str(tmp_path / "missing.jpg"),
        "--out",
        str(out),
        "--batch-size",
        BATCH,
        "-q",
    ]
    assert main(argv) == 1  # three bad inputs; everything else written

    err = capsys.readouterr()
    assert "empty.jpg: empty file" in err.err and "broken.png: not an image" in err.err
    assert "missing.jpg: no such file" in err.err and "skipping" in err.err and "notes.txt" in err.err
    assert f"{len(images) + 1} images in" in err.out and "3 failed, 1 skipped" in err.out

    sources = {**{name: path for name, (path, _) in images.items()}, "landscape_1": tmp_path / "more" / "landscape.png"}
    sizes = {**{name: size for name, (_, size) in images.items()}, "landscape_1": images["portrait"][1]}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in sources for e in ("npy", "png"))
    for stem, source in sources.items():
        depth = np.load(out / f"{stem}.npy")
        assert depth.shape == sizes[stem] and depth.dtype == np.float32, stem
        # the CLI ran pairs (batch 2), the API this image alone (batch 1, unpadded on CPU): two programs, rounding apart
        np.testing.assert_allclose(depth, api_depth(weights, source), rtol=0, atol=1e-5 * np.abs(depth).max())
        with Image.open(out / f"{stem}.png") as png:
            assert png.size == sizes[stem][::-1] and png.mode == "RGB", stem


def test_grayscale16_and_colormap(weights, tmp_path, capsys):
    Image.fromarray(scene(61, 97)).save(tmp_path / "a.jpg")
    assert (
        main(
            [
                "predict",
                "--weights",
                str(weights),
                str(tmp_path / "a.jpg"),
                "--out",
                str(tmp_path / "o"),
                "--batch-size",
                BATCH,
                "--grayscale16",
                "-q",
            ]
        )
        == 0
    )
    depth = np.load(tmp_path / "o" / "a.npy")
    with Image.open(tmp_path / "o" / "a.png") as png:
        assert png.mode == "I;16" and png.size == (97, 61)
        np.testing.assert_array_equal(np.asarray(png), to_png16(depth))
    assert (
        main(
            [
                "predict",
                "--weights",
                str(weights),
                str(tmp_path / "a.jpg"),
                "--out",
                str(tmp_path / "p"),
                "--batch-size",
                BATCH,
                "--colormap",
                "turbo",
                "--no-png",
                "-q",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.npy"]
    assert "1 image in" in capsys.readouterr().out


def test_bad_arguments_and_weights(weights, tmp_path, capsys):
    Image.fromarray(scene(40, 40)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["predict", "--weights", str(weights), str(tmp_path / "a.png"), "--out", str(tmp_path), "--batch-size", "0"]
        )
    assert exit_info.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    (tmp_path / "bad.msgpack").write_bytes(b"\x00garbage")
    assert (
        main(
            [
                "predict",
                "--weights",
                str(tmp_path / "bad.msgpack"),
                str(tmp_path / "a.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "cannot load weights" in capsys.readouterr().err
    assert main(["predict", "--weights", str(weights), str(tmp_path / "nothing*.jpg"), "--out", str(tmp_path)]) == 1
    assert "no file matches" in capsys.readouterr().err


def test_expand_inputs_and_output_stems(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt", "sub/a.jpg", "sub/A.webp", "sub/a_1.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    paths, errors, skipped = expand_inputs(
        [
            str(tmp_path),
            str(tmp_path / "b.jpg"),
            str(tmp_path / "sub" / "*"),
            str(tmp_path / "c.txt"),
            str(tmp_path / "nope"),
        ]
    )
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rel == ["a.PNG", "b.jpg", "sub/A.webp", "sub/a.jpg", "sub/a_1.png", "c.txt"]  # b.jpg once; c.txt named
    assert [p.name for p in skipped] == ["c.txt"] and len(errors) == 1 and "nope" in errors[0]
    # a, A and a clash (case-insensitively); a_1 is another input's own name, so the clashes skip it
    assert output_stems(paths) == ["a", "b", "A_2", "a_3", "a_1", "c"]


def test_console_script_and_persistent_cache(weights, tmp_path):
    script = Path(sys.executable).with_name("beit-depth")
    if not script.exists():
        pytest.skip("console script not installed (pip install -e .)")
    Image.fromarray(scene(61, 97, 3)).save(tmp_path / "photo.png")
    env = {**os.environ, "BEIT_FLAX_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [
            str(script),
            "predict",
            "--weights",
            str(weights),
            str(tmp_path / "photo.png"),
            "--out",
            str(tmp_path / "out"),
            "--batch-size",
            BATCH,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "1 image in" in run.stdout
    depth = np.load(tmp_path / "out" / "photo.npy")
    np.testing.assert_allclose(depth, api_depth(weights, tmp_path / "photo.png"), rtol=0, atol=1e-5)
    assert any((tmp_path / "cache").iterdir())  # the compiled program, for the next process


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg's subprocess: fork + exec at once
def test_video(weights, tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = [scene(48, 96, seed) for seed in range(5)]  # network input 128 wide, 64 high
    imageio.mimwrite(tmp_path / "in.mp4", frames, format="FFMPEG", fps=10, macro_block_size=1, ffmpeg_log_level="error")
    for extra, width in (([], 96), (["--side-by-side"], 192)):
        out = tmp_path / f"out{width}.mp4"
        assert (
            main(
                [
                    "video",
                    str(tmp_path / "in.mp4"),
                    "--weights",
                    str(weights),
                    "--out",
                    str(out),
                    "--batch-size",
                    BATCH,
                    "-q",
                    *extra,
                ]
            )
            == 0
        )
        written = imageio.mimread(out, format="FFMPEG")
        assert len(written) == 5 and written[0].shape == (48, width, 3)
        assert not list(tmp_path.glob(".*"))  # the temp file was renamed
    summary = capsys.readouterr().out
    assert "5 frames in" in summary and "network input 128x64" in summary  # width x height, as everywhere
    assert main(["video", str(tmp_path / "missing.mp4"), "--weights", str(weights), "--out", str(out)]) == 1


def _unconverted(kind: str, path: Path) -> Path:
    """A checkpoint a user may pass to --weights before converting it."""
    import torch
    from safetensors.numpy import save_file

    tensors = {"pretrained.model.cls_token": np.zeros((1, 1, 8), np.float32)}
    if kind == "torch zip":
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path / "model.pt")
        return path / "model.pt"
    if kind == "torch legacy pickle":
        torch.save(
            {k: torch.from_numpy(v) for k, v in tensors.items()},
            path / "model.pth",
            _use_new_zipfile_serialization=False,
        )
        return path / "model.pth"
    if kind == "safetensors":
        save_file(tensors, str(path / "model.safetensors"))
        return path / "model.safetensors"
    (path / "hub").mkdir()
    save_file(tensors, str(path / "hub" / "model.safetensors"))
    (path / "hub" / "config.json").write_text("{}")
    return path / "hub"


@pytest.mark.parametrize("kind", ["torch zip", "torch legacy pickle", "safetensors", "hub folder"])
def test_unconverted_checkpoint_as_weights_names_the_fix(kind, tmp_path, capsys):
    """Every kind of PyTorch checkpoint passed to --weights: exit 2, one line that says what the file is and the
    convert_weights command, no traceback, nothing written."""
    weights = _unconverted(kind, tmp_path)
    Image.fromarray(scene(40, 40)).save(tmp_path / "a.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["predict", "--weights", str(weights), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a beit-flax weights file" in err[0] and f"convert_weights {weights}" in err[0], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_predict_3d_files(weights, tmp_path, capsys):
    """--ply / --glb: the files `outputs.image_files` makes from the written .npy, with the EXIF focal length
    when the photo has one and --fov over it; the camera is named in the summary line."""
    import trimesh

    from beit_flax.geometry import camera_focal, focal_from_fov
    from beit_flax.outputs import image_files

    exif = Image.Exif()
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0xA405] = 28  # FocalLengthIn35mmFilm
    photo = tmp_path / "in" / "photo.jpg"
    photo.parent.mkdir()
    Image.fromarray(scene(40, 60, 9)).save(photo, exif=exif.tobytes(), quality=95)
    for extra, camera in (([], "EXIF 28 mm"), (["--fov", "90"], "fov 90 deg")):
        out = tmp_path / f"out{len(extra)}"
        argv = ["predict", "--weights", str(weights), str(photo), "--out", str(out), "--ply", "--glb", "-q", *extra]
        assert main(argv) == 0
        assert camera in capsys.readouterr().out
        depth = np.load(out / "photo.npy")
        focal, _ = camera_focal(photo, 60, float(extra[1]) if extra else None)
        expected = image_files(depth, read_image(photo), ply=True, glb=True, focal_px=focal)
        for suffix in (".ply", ".glb"):
            assert (out / f"photo{suffix}").read_bytes() == expected[suffix]
    assert focal == pytest.approx(focal_from_fov(90, 60))
    cloud = trimesh.load(out / "photo.ply")
    assert len(cloud.vertices) == 40 * 60
    mesh = trimesh.load(out / "photo.glb")
    assert len(mesh.geometry) == 1
    for bad in ("180", "0", "nan", "wide"):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage + one error line, exit 2
            main(["predict", "--weights", str(weights), str(photo), "--out", str(out), "--fov", bad])
        assert exit_info.value.code == 2 and "--fov" in capsys.readouterr().err


def test_a_file_name_with_a_newline_stays_on_one_line(weights, tmp_path, capsys):
    """One line means one line: control characters in names are escaped in every message (issue 23, item 13)."""
    from beit_flax.convert.cli import main as convert_main

    bad = tmp_path / "broken\nname.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--weights", str(weights), str(bad), "--out", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken\\nname.png: not an image" in err
    assert convert_main([str(bad), str(tmp_path / "o.msgpack")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken\\nname.png" in err
