"""beit_flax.video through `beit-depth video`: the stabilized maps are the Stabilizer and the FlickerGuard over the
per-frame maps, the video shows them over one fixed range, --npy / --no-stabilize, a ball crossing a scene while the
light rises stays one scene at a steady scale (issue 23 item 6), and bad --npy folders refused before any work."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from predict_helpers import scene, tiny_files

from beit_flax.cli import main
from beit_flax.flicker import FlickerGuard, flicker
from beit_flax.images import colorize, colorize_unit, depth_range
from beit_flax.stabilize import Stabilizer

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg: fork + exec at once
FRAMES = 6


@pytest.fixture(scope="module")
def weights() -> Path:
    return tiny_files()[0]


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One scene, its brightness changing per frame (lossless enough: quality 10)."""
    rng = np.random.default_rng(0)
    base = scene(48, 64, 3).astype(np.float32)
    frames = [np.clip(base * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8) for _ in range(FRAMES)]
    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    imageio.mimwrite(path, frames, format="FFMPEG", fps=10, quality=10, macro_block_size=1, ffmpeg_log_level="error")
    return path


def run_video(weights: Path, clip: Path, out: Path, *extra: str) -> int:
    return main(["video", str(clip), "--weights", str(weights), "--out", str(out), "-q", *extra])


def maps(folder: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(folder.glob("frame_*.npy"))]


def test_stabilized_maps_are_the_stabilizer_over_the_per_frame_maps(weights, clip, tmp_path, capsys):
    assert run_video(weights, clip, tmp_path / "raw.mp4", "--no-stabilize", "--npy", str(tmp_path / "raw")) == 0
    assert "colours min-max per frame" in capsys.readouterr().out
    assert run_video(weights, clip, tmp_path / "stable.mp4", "--npy", str(tmp_path / "stable")) == 0
    summary = capsys.readouterr().out
    assert f"{FRAMES} frames in" in summary and "stabilized: one colour range per scene (1 scene)" in summary
    raw, stable = maps(tmp_path / "raw"), maps(tmp_path / "stable")
    assert len(raw) == len(stable) == FRAMES and raw[0].shape == (48, 64) and raw[0].dtype == np.float32
    assert np.ptp(raw[0]) > 0  # the perturbed tiny model's map has structure
    stabilizer, guard = Stabilizer(), FlickerGuard()
    for frame_raw, frame_stable in zip(raw, stable):
        np.testing.assert_array_equal(frame_stable, guard(stabilizer(frame_raw), depth_range(frame_raw))[0])
    np.testing.assert_allclose(stable[0].min(), 0, atol=1e-6)  # the first frame sets the range: its min-max
    np.testing.assert_allclose(stable[0].max(), 1, atol=1e-6)
    # the videos show those maps: the stabilized over the fixed [0, 1], the other min-max per frame. H.264 at this
    # size is lossy (~7 levels of 255), so each video must also be nearer its own colouring than the other one
    error = lambda picture, painted: np.abs(picture.astype(float) - painted).mean()
    for name, frames, paint, other in (
        ("stable", stable, colorize_unit, colorize),
        ("raw", raw, colorize, colorize_unit),
    ):
        decoded = imageio.mimread(tmp_path / f"{name}.mp4", format="FFMPEG")
        assert len(decoded) == FRAMES
        assert all(error(picture, paint(depth)) < 10 for picture, depth in zip(decoded, frames))
        own = np.mean([error(p, paint(d)) for p, d in zip(decoded[1:], frames[1:])])
        assert own < np.mean([error(p, other(d)) for p, d in zip(decoded[1:], frames[1:])])


def test_a_ball_crossing_a_brightening_scene_is_one_scene_at_a_steady_scale(weights, tmp_path, capsys):
    """Issue 23 item 6 through the real path, with the perturbed tiny model (30-40% of its map exact zeros after the
    ReLU): one continuous shot, a ball crossing it, the light rising from 0.7x to 1.3x. Before: 2 scenes, and the
    stabilized maps scaled down to 0.0007x of what --no-stabilize shows (a black picture); the stabilized video
    flickered less here, but nothing held it to that."""
    height, width, count = 48, 64, 12
    base = scene(height, width, 2).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        frame = base.copy()
        frame[(ys - 24) ** 2 + (xs - 6 - 52 * t / (count - 1)) ** 2 < 8**2] = [220, 60, 40]
        frames.append(np.clip(frame * (0.7 + 0.6 * t / (count - 1)), 0, 255).astype(np.uint8))
    clip = tmp_path / "ball.mp4"
    imageio.mimwrite(clip, frames, format="FFMPEG", fps=10, quality=10, macro_block_size=1, ffmpeg_log_level="error")
    assert run_video(weights, clip, tmp_path / "raw.mp4", "--no-stabilize", "--npy", str(tmp_path / "raw")) == 0
    assert run_video(weights, clip, tmp_path / "stable.mp4", "--npy", str(tmp_path / "stable")) == 0
    assert "one colour range per scene (1 scene)" in capsys.readouterr().out
    raw, stable = maps(tmp_path / "raw"), maps(tmp_path / "stable")
    assert 0.2 < np.mean([np.mean(m == 0) for m in raw]) < 0.6  # the class: many exact zeros
    for frame_raw, frame_stable in zip(raw, stable):  # least-squares slope on the min-max map: 1 = same contrast
        minmax = depth_range(frame_raw).ravel().astype(np.float64)
        design = np.stack([minmax, np.ones_like(minmax)], axis=1)
        slope = np.linalg.lstsq(design, frame_stable.ravel().astype(np.float64), rcond=None)[0][0]
        assert 1 / 3 < slope < 3  # seen: 0.59..1
    assert flicker([colorize_unit(m) for m in stable]) <= flicker([colorize(m) for m in raw])  # seen: 0.14, 0.31


def test_npy_folder_that_is_a_file_is_refused_before_any_work(weights, clip, tmp_path, capsys):
    blocker = tmp_path / "maps"
    blocker.write_text("mine")
    assert run_video(weights, clip, tmp_path / "out.mp4", "--npy", str(blocker)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0]
    assert blocker.read_text() == "mine" and not (tmp_path / "out.mp4").exists()


def test_npy_frames_never_replace_the_input(weights, tmp_path, capsys):
    """--npy DIR holding a file of the frame name that is the input itself: refused, nothing changed."""
    folder = tmp_path / "maps"
    folder.mkdir()
    frames = [scene(32, 32, seed) for seed in range(2)]
    source = folder / "frame_000000.npy"  # a video that happens to carry that name
    imageio.mimwrite(folder / "v.mp4", frames, format="FFMPEG", fps=5, macro_block_size=1, ffmpeg_log_level="error")
    (folder / "v.mp4").rename(source)
    before = source.read_bytes()
    out = tmp_path / "o.mp4"
    code = main(["video", str(source), "--weights", str(weights), "--out", str(out), "-q", "--npy", str(folder)])
    assert code == 2 and source.read_bytes() == before
    assert "frame_000000.npy" in capsys.readouterr().err


def test_npy_folder_with_frame_maps_is_refused(weights, clip, tmp_path, capsys):
    """Maps of an earlier clip would mix with this one's (or be replaced without being asked): refused."""
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "frame_000003.npy").write_bytes(b"an earlier clip's")
    assert run_video(weights, clip, tmp_path / "out.mp4", "--npy", str(folder)) == 2
    assert "holds frame maps already" in capsys.readouterr().err
    assert (folder / "frame_000003.npy").read_bytes() == b"an earlier clip's" and not (tmp_path / "out.mp4").exists()


def test_a_failed_run_leaves_no_maps_and_no_video(weights, clip, tmp_path, capsys, monkeypatch):
    import beit_flax.video

    real, calls = beit_flax.video.atomic_write_bytes, []

    def failing_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(beit_flax.video, "atomic_write_bytes", failing_third)
    folder = tmp_path / "new" / "maps"
    assert run_video(weights, clip, tmp_path / "out.mp4", "--npy", str(folder)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    assert not folder.exists() and not (tmp_path / "out.mp4").exists()  # the two maps written went again
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_options_that_would_be_ignored_are_refused(weights, clip, tmp_path, capsys):
    image = tmp_path / "photo.png"
    imageio.imwrite(image, scene(32, 32, 1))
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(tmp_path / "o"), "--fov", "60"]) == 2
    assert "add --ply and / or --glb" in capsys.readouterr().err
    assert run_video(weights, clip, tmp_path / "out.webm") == 2  # WebM cannot hold H.264
    assert ".mp4" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_frames_over_the_pixel_limit_are_refused_before_the_weights_load(clip, tmp_path, capsys):
    """The header is read first: the weights (a download, a conversion) are not touched for a video we refuse."""
    missing = tmp_path / "not_there.msgpack"
    argv = ["video", str(clip), "--weights", str(missing), "--out", str(tmp_path / "o.mp4"), "-q"]
    assert main([*argv, "--max-pixels", "1000"]) == 1  # 64x48 frames = 3072 pixels
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the limit" in err[0] and "weights" not in err[0]
    assert main(argv) == 2 and "cannot load weights" in capsys.readouterr().err  # the same run, frames in bounds


def test_video_is_judged_by_its_content_not_its_extension(weights, clip, tmp_path, capsys):
    """An MPEG-TS `.ts` (and a file with no extension) that ffmpeg reads is read (issue 23, item 14); a `.ts` that
    is not a video is one error line, exit 1."""
    import subprocess

    import imageio_ffmpeg

    ts = tmp_path / "clip.ts"
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(clip)]
    subprocess.run([*ffmpeg, "-c", "copy", "-f", "mpegts", str(ts)], check=True)
    bare = tmp_path / "clip"
    bare.write_bytes(ts.read_bytes())
    for source in (ts, bare):
        out = tmp_path / f"{source.name}_depth.mp4"
        assert run_video(weights, source, out) == 0, capsys.readouterr().err
        with imageio.get_reader(out) as reader:
            assert reader.count_frames() == 6
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a video")
    assert run_video(weights, junk, tmp_path / "junk.mp4") == 1
    assert "junk.ts: cannot read video" in capsys.readouterr().err
