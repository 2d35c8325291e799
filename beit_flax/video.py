"""A video -> its depth video (H.264 through imageio's ffmpeg), frame by frame, stable by default.

Relative depth (MiDaS: `DepthOutput.up_to_scale`): each frame's inverse depth is aligned to the running reference
and noise-gated (`stabilize.Stabilizer`) and every frame is coloured over one range for the whole clip, held back
where needed so that the pictures never flicker more than per-frame min-max would (`flicker.FlickerGuard`);
`stabilize=False` colours each frame by its own min-max as before (and as MiDaS does). Metric depth (ZoeDepth): no
alignment, the model's fixed range in meters (0..top, near bright). `npy_dir` gets each frame's map as
`frame_000000.npy`...: clip units (the stabilized map, 0..1 = the colour range), relative inverse depth
(`stabilize=False`) or meters (metric models).

Pipeline: worker threads decode and preprocess ahead, the devices run batches, one thread stabilizes and colours in
frame order, ffmpeg encodes into a temp file beside `out` that replaces `out` only when every frame is in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from beit_flax.files import OutputError, atomic_write_bytes, check_outputs, first_line, replace, temp_beside
from beit_flax.flicker import FlickerGuard
from beit_flax.images import encode_npy
from beit_flax.outputs import picture
from beit_flax.pipeline import ordered_map
from beit_flax.predictor import Predictor
from beit_flax.stabilize import Stabilizer
from beit_flax.transforms import megapixels, size_text

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")  # containers that take H.264 (WebM does not)
NPY_PATTERN = "frame_*.npy"


class VideoError(ValueError):
    """The input cannot be read or the depth video cannot be made; the message is one line."""


@dataclasses.dataclass(frozen=True)
class VideoResult:
    frames: int
    seconds: float
    fps: float
    scenes: int  # scene starts found by the stabilizer (0 when it did not run)
    input_shapes: tuple[tuple[int, int], ...]  # the network input (H', W')


def npy_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:06d}.npy"


def check_npy_dir(folder: str | Path, inputs: Iterable[str | Path]) -> None:
    """Raise OutputError unless `folder` can take a clip's frame maps: absent or a folder we may write, holding no
    frame maps already (they would mix with this clip's, or be replaced without being asked)."""
    folder = Path(folder)
    check_outputs([npy_path(folder, 0)], inputs, make_folders=True)
    if folder.is_dir() and (old := next(folder.glob(NPY_PATTERN), None)) is not None:
        raise OutputError(f"{folder}: it holds frame maps already ({old.name}...); choose an empty folder")


def _open(source: str | Path):
    """(imageio reader, its metadata) or VideoError: ffmpeg cannot read `source`."""
    # imageio-ffmpeg starts ffmpeg with subprocess (fork + exec, no Python in the child): JAX's fork warning is moot
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    import imageio.v2 as imageio

    try:
        try:
            reader = imageio.get_reader(source, format="FFMPEG")
        except RuntimeError:
            if not Path(source).is_file():
                raise
            # imageio judges files by their extension (an MPEG-TS `.ts` is refused): ffmpeg probes the content, so
            # a local file is handed to it whatever its name
            import imageio.v3 as iio

            reader = iio.imopen(source, "r", plugin="FFMPEG", extension=".mp4", legacy_mode=True).legacy_get_reader()
        return reader, reader.get_meta_data()
    except Exception as err:  # imageio / ffmpeg raise a variety of types for unreadable input
        raise VideoError(f"cannot read video ({first_line(err)})") from err


def check_frame_pixels(meta: dict, max_pixels: int) -> tuple[int, int]:
    """(height, width) of the frames from the header (0, 0 when it does not say), or VideoError over `max_pixels`."""
    width, height = (int(side) for side in meta.get("size") or (0, 0))
    if width * height > max_pixels:
        raise VideoError(
            f"frames of {size_text(height, width)} = {megapixels(width * height)} are over the limit of "
            f"{megapixels(max_pixels)} (raise it with --max-pixels)"
        )
    return height, width


def read_header(source: str | Path, max_pixels: int) -> dict:
    """The video's metadata (size, fps, duration...), or VideoError: ffmpeg cannot read it, or its frames are over
    `max_pixels` (`check_frame_pixels`). Decodes nothing: for a check before the weights load."""
    reader, meta = _open(source)
    reader.close()
    check_frame_pixels(meta, max_pixels)
    return meta


def announced_frames(meta: dict) -> int | None:
    """The frame count a video's header announces (duration x fps; 30 fps when it gives none), None when it gives
    no duration: a bound checked before any frame is decoded (the app's --max-video-frames)."""
    duration = meta.get("duration")
    if not (isinstance(duration, (int, float)) and np.isfinite(duration)):
        return None
    return round(duration * float(meta.get("fps") or 30.0))


def even(frame: np.ndarray) -> np.ndarray:
    """Pad (H, W, 3) to even H and W by repeating the last row / column (H.264 in yuv420p needs even sides)."""
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame


def depth_frames(
    predictor: Predictor,
    frames: Iterable[np.ndarray],
    *,
    stabilize: bool = True,
    colormap: str = "inferno",
    workers: int = 4,
    stabilizer: Stabilizer | None = None,
    guard: FlickerGuard | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield `(frame, map, picture)` per frame of `frames` ((H, W, 3) uint8 each), in order: the frame, its (H, W)
    float32 map (units: see the module doc) and its (H, W, 3) uint8 picture. `stabilizer` / `guard`: the ones to use
    (to read `scenes` / `held` from afterwards; `guard` of `colormap`); new ones by default."""
    if stabilize and predictor.output.up_to_scale:
        stabilizer = stabilizer if stabilizer is not None else Stabilizer()
        guard = guard if guard is not None else FlickerGuard(colormap)  # never more flicker than min-max per frame
        finish = lambda depth: guard(stabilizer(depth), predictor.output.unit(depth))
    else:  # as predict's PNG: a metric model's fixed range in meters, or min-max per frame
        finish = lambda depth: (depth, picture(depth, predictor.output, colormap))

    def prepare(item: tuple[int, np.ndarray]) -> tuple:
        index, frame = item
        frame = np.asarray(frame)[:, :, :3]
        return frame, frame.shape[:2], predictor.inputs(frame, index)

    def finished(result: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame, size_hw, parts = result
        return (frame, *finish(predictor.finish(size_hw, parts)))

    with (
        ThreadPoolExecutor(workers, "beit-decode") as decoder,
        ThreadPoolExecutor(1, "beit-render") as renderer,  # one thread: the stabilizer sees the frames in order
    ):
        prepared = ordered_map(prepare, enumerate(frames), decoder, limit=2 * workers + 8)
        yield from ordered_map(finished, predictor.run(prepared), renderer, limit=4)


def depth_video(
    predictor: Predictor,
    source: str | Path,
    out: str | Path,
    *,
    stabilize: bool = True,
    side_by_side: bool = False,
    fps: float | None = None,
    max_frames: int | None = None,
    colormap: str = "inferno",
    npy_dir: str | Path | None = None,
    workers: int = 4,
    on_start: Callable[[int | None], None] | None = None,
    on_frame: Callable[[], None] | None = None,
    debug: bool = False,
) -> VideoResult:
    """Write the depth video of `source` to `out` (see the module doc) and return what was done.

    side_by_side: the input frame left, depth right. fps: the output rate (default: the input's). on_start gets the
    expected frame count (None when unknown), on_frame is called per written frame (progress bars). Raises
    VideoError (unreadable input, frames over the predictor's pixel limit, a failed encode); `out` and the npy
    folder are checked by the caller (`files.check_outputs`).
    """
    import imageio.v2 as imageio
    import imageio_ffmpeg

    out = Path(out)
    reader, meta = _open(source)
    try:
        height, width = check_frame_pixels(meta, predictor.max_pixels)  # from the header, before a frame is decoded
        if width and height:
            try:
                predictor.check(height, width)
            except ValueError as err:
                raise VideoError(str(err)) from None
        input_fps = float(meta.get("fps") or 30.0)
        fps = fps or input_fps
        total = announced_frames(meta)
        if max_frames:
            total = min(total, max_frames) if total else max_frames
        if on_start:
            on_start(total)

        def frames() -> Iterator[np.ndarray]:
            for index, frame in enumerate(reader):
                if max_frames and index >= max_frames:
                    break
                yield frame

        npy_folder = Path(npy_dir) if npy_dir is not None else None
        made_folder = npy_folder is not None and not npy_folder.exists()
        if npy_folder is not None:
            npy_folder.mkdir(parents=True, exist_ok=True)
        stabilizer = Stabilizer()
        count, start, shape = 0, time.perf_counter(), (height, width)
        # a new uniquely named file that only we created (ffmpeg then writes it in place), removed on every exit
        with temp_beside(out) as temp:
            try:
                writer = imageio.get_writer(
                    temp,
                    format="FFMPEG",
                    mode="I",
                    fps=fps,
                    codec="libx264",
                    quality=8,
                    macro_block_size=1,
                    ffmpeg_log_level="error" if debug else "quiet",
                )
                try:
                    results = depth_frames(
                        predictor,
                        frames(),
                        stabilize=stabilize,
                        colormap=colormap,
                        workers=workers,
                        stabilizer=stabilizer,
                    )
                    for frame, depth_map, shown in results:
                        shape = frame.shape[:2]
                        if npy_folder is not None:
                            atomic_write_bytes(npy_path(npy_folder, count), encode_npy(depth_map))
                        writer.append_data(even(np.concatenate([frame, shown], axis=1) if side_by_side else shown))
                        count += 1
                        if on_frame:
                            on_frame()
                except BaseException:
                    with contextlib.suppress(Exception):  # ffmpeg goes before its file; the first error is the one
                        writer.close()
                    raise
                writer.close()
                # imageio does not check ffmpeg's exit status: a failed encode leaves a short or empty file
                written = imageio_ffmpeg.count_frames_and_secs(str(temp))[0] if count else 0
                if count == 0 or written != count:
                    why = "no frames decoded" if count == 0 else f"ffmpeg wrote {written} of {count} frames"
                    raise VideoError(f"cannot make the depth video ({why})")
                replace(temp, out)
            except BaseException:
                _remove_maps(npy_folder, count, made_folder)  # all the maps or none, the rename included
                raise
    except VideoError:
        raise
    except (OSError, RuntimeError, ValueError) as err:  # ffmpeg's broken pipe, a full disk, a frame over the limit
        raise VideoError(f"cannot make the depth video ({first_line(err)})") from err
    except MemoryError as err:
        raise VideoError("cannot make the depth video (out of memory)") from err
    finally:
        reader.close()
    scenes = stabilizer.scenes if stabilize and predictor.output.up_to_scale else 0
    return VideoResult(count, time.perf_counter() - start, fps, scenes, (predictor.network_size(*shape),))


def _remove_maps(folder: Path | None, count: int, made_folder: bool) -> None:
    """Remove the frame maps this run wrote (and the folder, if this run made it)."""
    if folder is None:
        return
    for index in range(count):
        npy_path(folder, index).unlink(missing_ok=True)
    if made_folder:
        with contextlib.suppress(OSError):
            folder.rmdir()
