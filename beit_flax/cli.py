"""`beit-depth`: image files or a video -> relative inverse depth, with MiDaS run.py's pre- and post-processing.

    beit-depth predict --weights W.msgpack INPUT... --out DIR [--devices N] [--distributed]
    beit-depth video IN.mp4 --weights W.msgpack --out OUT.mp4 [--side-by-side]

Pipeline: a thread pool decodes and preprocesses ahead (bounded), the main thread batches by network input shape
and keeps one batch on the devices (split over every local device, params replicated), a second pool
postprocesses and writes (temp file + rename). A bad input is reported on stderr and skipped; the exit status is 1
at the end if any input failed. Before any work, every output path is checked (`files.check_outputs`: a regular file
or absent, none of the inputs, its folder writable), and the network input against --max-pixels. With --distributed,
every process of a multi-host job runs this same command and handles every k-th input of the sorted list (process i
of k starts at the i-th).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import glob
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from beit_flax.compile_cache import enable_compilation_cache
from beit_flax.files import OutputError, atomic_write_bytes, check_outputs, interruptible, replace, temp_beside
from beit_flax.images import (
    COLORMAPS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    colorize,
    encode_npy,
    encode_png,
    read_image,
    set_pixel_limit,
    to_png16,
)
from beit_flax.models.precision import COMPUTE_DTYPES
from beit_flax.pipeline import Batcher, ordered_map
from beit_flax.sharding import DISTRIBUTED_ENV, maybe_initialize_distributed, process_slice
from beit_flax.transforms import (
    MIN_NET_SIZE,
    check_net_input,
    check_net_size,
    megapixels,
    postprocess,
    preprocess,
    size_text,
    target_size,
)
from beit_flax.weights import load

PROG = "beit-depth"
EXIT_FAILED_INPUTS = 1  # some inputs could not be processed; the others were
EXIT_USAGE = 2  # bad arguments, weights or output paths: nothing was processed


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def net_size_arg(text: str) -> int:
    value = positive_int(text)  # the bound (--max-pixels) is checked once both flags are known
    if value < MIN_NET_SIZE:
        raise argparse.ArgumentTypeError(f"net size must be an int >= {MIN_NET_SIZE}, got {value}")
    return value


MAX_FPS = 1000.0  # beyond any camera or player: a larger value is a typo


def fps_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_FPS):
        raise argparse.ArgumentTypeError(f"expected frames per second in (0, {MAX_FPS:g}], got {text}")
    return value


def first_line(err: BaseException) -> str:
    """The first line of an error: ffmpeg's (through imageio) come with its whole log, shown with --debug only."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model and preprocessing")
    model.add_argument("--weights", required=True, metavar="W.msgpack", help="beit-flax weights (convert_weights)")
    model.add_argument("--size", type=net_size_arg, metavar="N",
                       help="net size to resize towards (default: the model's, 512 or 384)")
    model.add_argument("--square", action="store_true", help="resize to N x N instead of keeping the aspect ratio")
    model.add_argument("--batch-size", type=positive_int, metavar="B",
                       help="images per step, all devices together (global), per input shape; rounded up to a "
                       "multiple of the device count (default: 1 per device on CPU, 8 per device on GPU / TPU)")
    model.add_argument("--devices", type=positive_int, metavar="N",
                       help="use the first N local devices (default: all; params replicated, batches split)")
    model.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32",
                       help="compute dtype; parameters stay float32 (default: %(default)s)")
    model.add_argument("--colormap", choices=COLORMAPS, default="inferno",
                       help="colormap of the PNGs / video (default: %(default)s, as MiDaS)")
    model.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1), metavar="N",
                       help="threads decoding and writing (default: %(default)s)")
    model.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help="the one pixel limit: larger images (read from the header) and network inputs are "
                       "refused (default: %(default)s)")
    model.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model.add_argument("--debug", action="store_true", help="full error detail: tracebacks, ffmpeg's log")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MiDaS v3.1 BEiT-DPT monocular depth (JAX/Flax), preprocessing as MiDaS run.py.",
        epilog="Exit status: 0 all done, 1 some inputs failed (the others were written), 2 bad arguments, weights "
        "or output paths (nothing was processed), 130 / 143 interrupted (Ctrl-C / SIGTERM). Compiled programs are "
        "cached in ~/.cache/beit-flax/jax ($BEIT_FLAX_CACHE_DIR, 'off' disables).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,video}")
    images = sub.add_parser(
        "predict", parents=[common], help="image files -> DIR/<stem>.npy + DIR/<stem>.png",
        description="For each image: DIR/<stem>.npy, float32 (H, W) relative inverse depth (larger = nearer) at "
        "the image's own size, and DIR/<stem>.png, the same map min-max normalised and colormapped (or 16-bit "
        "grayscale). Inputs with the same stem get <stem>_1, <stem>_2, ...",
    )
    images.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs ('*.jpg')")
    images.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    images.add_argument("--grayscale16", action="store_true", help="16-bit grayscale PNG, as MiDaS run.py writes")
    images.add_argument("--no-png", action="store_true", help="write only the .npy files")
    images.add_argument("--distributed", action="store_true",
                        help=f"one process of a multi-host job (also ${DISTRIBUTED_ENV}=1): jax.distributed."
                        "initialize(), then process i of k takes every k-th input of the sorted list from the i-th "
                        "and writes its own outputs. Run the same command on every host; on GPU hosts set "
                        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID")

    video = sub.add_parser("video", parents=[common], help="a video -> a depth video (frame by frame)",
                           description="Depth of every frame, colormapped (min-max per frame), encoded H.264 "
                           "with imageio's ffmpeg. Audio is not copied.")
    video.add_argument("input", metavar="IN", help="input video (anything ffmpeg reads)")
    video.add_argument("--out", required=True, type=Path, metavar="OUT.mp4", help="output video")
    video.add_argument("--side-by-side", action="store_true", help="input frame left, depth right")
    video.add_argument("--fps", type=fps_arg, help="output frame rate (default: the input's)")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_pixel_limit(args.max_pixels)  # Pillow's own guard follows the flag: it is the one limit
    return interruptible(PROG, lambda: run_predict(args) if args.command == "predict" else run_video(args))


# --- shared ---------------------------------------------------------------------------------------------------------


def report(message: str) -> None:
    """One line on stderr that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {message}", file=sys.stderr)


def check_size_flag(args: argparse.Namespace) -> bool:
    """--size within --max-pixels, reported before anything is read; False after reporting."""
    try:
        if args.size is not None:
            check_net_size(args.size, args.max_pixels)
    except ValueError as err:
        report(f"error: --size {args.size}: {err}")
        return False
    return True


def load_model(args: argparse.Namespace):
    """(Batcher, net size), or None after reporting a bad weights file, a net size over --max-pixels or --devices."""
    try:
        model, params = load(args.weights, dtype=args.dtype)
    except (OSError, ValueError) as err:
        report(f"error: cannot load weights: {err}")
        return None
    try:
        net = args.size or check_net_size(model.config.net_size, args.max_pixels)
    except ValueError as err:
        report(f"error: {args.weights}: the model's {err}")
        return None
    enable_compilation_cache()
    try:
        batcher = Batcher(model, params, args.batch_size, args.devices)
    except ValueError as err:  # --devices over the local count
        report(f"error: --devices {args.devices}: {err}")
        return None
    return batcher, net


def describe(batcher: Batcher) -> str:
    n = batcher.device_count
    return f"batch {batcher.batch_size} on {n} {batcher.mesh.devices.flat[0].platform} device{'s' * (n != 1)}"


def progress(total: int | None, unit: str, quiet: bool):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI); the summary line is printed either way
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=True if quiet else None, dynamic_ncols=True)


# --- predict --------------------------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str], list[Path]]:
    """INPUT arguments -> (image files in order, errors, skipped files).

    Directories (not recursive) and globs give the files with an image extension, sorted; other files there are
    skipped (hidden ones silently). A file named explicitly is always tried. Duplicates (same resolved path) are
    dropped.
    """
    found: list[Path] = []
    errors: list[str] = []
    skipped: list[Path] = []

    def take(candidates: list[Path]) -> None:
        for path in sorted(p for p in candidates if p.is_file() and not p.name.startswith(".")):  # .DS_Store, temps
            (found if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(path)

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            take(list(path.iterdir()))
        elif path.exists():
            found.append(path)
        elif glob.has_magic(text):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True)]
            if not any(m.is_file() for m in matches):
                errors.append(f"{text}: no file matches")
            take(matches)
        else:
            errors.append(f"{text}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, errors, skipped


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One output stem per input, never two alike (case-insensitively: macOS / Windows file systems).

    A stem used once keeps its name; clashing ones get <stem>, <stem>_1, ... in input order, skipping names that
    other inputs have.
    """
    counts = collections.Counter(p.stem.casefold() for p in paths)
    taken = {p.stem.casefold() for p in paths if counts[p.stem.casefold()] == 1}
    stems = []
    for path in paths:
        stem = path.stem
        if counts[stem.casefold()] > 1:
            candidate, n = stem, 0
            while candidate.casefold() in taken:
                n += 1
                candidate = f"{stem}_{n}"
            taken.add(candidate.casefold())
            stem = candidate
        stems.append(stem)
    return stems


@dataclasses.dataclass(frozen=True)
class Job:
    source: Path
    stem: str  # output files: out/<stem>.npy, out/<stem>.png
    size_hw: tuple[int, int] | None = None  # the decoded image's own size (set by decoding)


def start_distributed(flag: bool) -> tuple[int, int] | None:
    """(process index, process count) after jax.distributed.initialize() if asked for, else (0, 1); None after
    reporting a failure."""
    import jax

    try:
        if not maybe_initialize_distributed(flag):
            return 0, 1
    except (RuntimeError, ValueError) as err:  # bad env values, no coordinator, called after the backend started
        hint = ("; outside Cloud TPU / Slurm / Open MPI set JAX_COORDINATOR_ADDRESS (host:port of process 0), "
                "JAX_NUM_PROCESSES and JAX_PROCESS_ID") if "coordinator" in str(err).lower() else ""
        print(f"{PROG}: error: cannot start distributed JAX: {err}{hint}", file=sys.stderr)
        return None
    return jax.process_index(), jax.process_count()


def run_predict(args: argparse.Namespace) -> int:
    started = start_distributed(args.distributed)  # first: it must run before anything touches a device
    if started is None:
        return EXIT_USAGE
    index, count = started
    paths, failures, skipped = expand_inputs(args.inputs)
    if index == 0:  # every process sees the same inputs: only the first one reports (and counts) the bad ones
        for message in failures:
            report(f"error: {message}")
        for path in skipped:
            report(f"skipping {path}: not an image file extension")
    if not paths:
        if index == 0:
            report("error: no input images")
        return EXIT_FAILED_INPUTS if failures or skipped else EXIT_USAGE
    if index > 0:
        failures, skipped = [], []
    if count > 1:  # the same order on every host, whatever the shell's glob collation; names clash the same way
        paths = sorted(paths, key=lambda p: p.as_posix())
    if not check_size_flag(args):
        return EXIT_USAGE
    # stems from the whole list, so that processes never write the same name
    every_job = [Job(path, stem) for path, stem in zip(paths, output_stems(paths))]
    suffixes = (".npy",) if args.no_png else (".npy", ".png")
    try:  # before any work: e.g. --out the input folder would replace photo.png with its depth map
        outputs = (args.out / f"{job.stem}{suffix}" for job in every_job for suffix in suffixes)
        check_outputs(outputs, paths, make_folders=True)
    except OutputError as err:
        report(f"error: --out {args.out}: cannot write {err} (choose another --out folder)")
        return EXIT_USAGE
    loaded = load_model(args)
    if loaded is None:
        return EXIT_USAGE
    batcher, net = loaded
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report(f"error: cannot create {args.out}: {err}")
        return EXIT_USAGE
    jobs = process_slice(every_job, index, count)

    def decode(job: Job) -> tuple[Job, np.ndarray | None, str | None]:
        """-> (the job with its image's size, network input or None, error or None)."""
        try:
            image = read_image(job.source, args.max_pixels)
            check_net_input(target_size(*image.shape[:2], net, square=args.square), args.max_pixels)
            return dataclasses.replace(job, size_hw=image.shape[:2]), preprocess(image, net, square=args.square), None
        except ImageError as err:
            return job, None, str(err)
        except ValueError as err:  # the network input over --max-pixels
            return job, None, f"{job.source}: {err}"
        except MemoryError:
            return job, None, f"{job.source}: out of memory"

    def write(result: tuple[Job, np.ndarray]) -> str | None:
        job, depth = result
        try:
            full = postprocess(depth, job.size_hw)
            atomic_write_bytes(args.out / f"{job.stem}.npy", encode_npy(full))
            if not args.no_png:
                picture = to_png16(full) if args.grayscale16 else colorize(full, args.colormap)
                atomic_write_bytes(args.out / f"{job.stem}.png", encode_png(picture))
        except OSError as err:
            return f"{job.source}: cannot write output: {err}"
        return None

    done = 0
    bar = progress(len(jobs), "img", args.quiet)
    start = time.perf_counter()

    def decoded(pool: ThreadPoolExecutor) -> Iterator[tuple[Job, np.ndarray]]:
        for job, net_input, error in ordered_map(decode, jobs, pool, limit=2 * args.workers + batcher.batch_size):
            if error is None:
                yield job, net_input
            else:
                failures.append(error)
                report(f"error: {error}")
                bar.update()

    def finish(error: str | None) -> None:
        nonlocal done
        if error is None:
            done += 1
        else:
            failures.append(error)
            report(f"error: {error}")
        bar.update()

    def device_failed(failed: list[Job], err: Exception) -> None:  # e.g. out of device memory for a panorama
        for job in failed:
            failures.append(f"{job.source}: inference failed ({type(err).__name__}: {str(err)[:300]})")
            report(f"error: {failures[-1]}")
            bar.update()

    with (bar, ThreadPoolExecutor(args.workers, "beit-decode") as decoder,
          ThreadPoolExecutor(args.workers, "beit-write") as writer):
        results = batcher.run(decoded(decoder), on_error=device_failed)
        for error in ordered_map(write, results, writer, limit=2 * args.workers):
            finish(error)
    elapsed = time.perf_counter() - start
    who = f"process {index} of {count}: " if count > 1 else ""
    print(
        f"{PROG}: {who}{done} image{'s' * (done != 1)} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} img/s), "
        f"{describe(batcher)}, {len(batcher.shapes)} input shape{'s' * (len(batcher.shapes) != 1)}, "
        f"{len(failures)} failed{', ' + str(len(skipped)) + ' skipped' if skipped else ''}; outputs in {args.out}"
    )
    return EXIT_FAILED_INPUTS if failures else 0


# --- video ----------------------------------------------------------------------------------------------------------


def even(frame: np.ndarray) -> np.ndarray:
    """Pad (H, W, 3) to even H and W by repeating the last row / column (H.264 in yuv420p needs even sides)."""
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
    return np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame


def run_video(args: argparse.Namespace) -> int:
    # imageio-ffmpeg starts ffmpeg with subprocess (fork + exec, no Python in the child): JAX's fork warning is moot
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg
    except ImportError:
        report("error: video needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg)")
        return EXIT_USAGE
    if args.out.suffix.lower() not in (".mp4", ".mkv", ".mov", ".avi", ".webm"):
        report(f"error: --out {args.out}: use a video file name (.mp4, .mkv, .mov, .webm)")
        return EXIT_USAGE
    if not check_size_flag(args):
        return EXIT_USAGE
    try:
        check_outputs([args.out], [args.input], make_folders=True)  # before any work: e.g. --out the input itself
    except OutputError as err:
        report(f"error: --out {args.out}: cannot write {err}")
        return EXIT_USAGE

    def failed(message: str, err: BaseException) -> int:
        """One line of ours; ffmpeg's log (in imageio's message) and the traceback with --debug only."""
        if args.debug:
            traceback.print_exception(err)
        report(f"error: {args.input}: {message} ({first_line(err)})" + ("" if args.debug else "; --debug for more"))
        return EXIT_FAILED_INPUTS

    try:
        reader = imageio.get_reader(args.input, format="FFMPEG")
        meta = reader.get_meta_data()
    except Exception as err:  # imageio / ffmpeg raise a variety of types for unreadable input
        return failed("cannot read video", err)
    try:
        width, height = (int(side) for side in meta.get("size") or (0, 0))
        if width * height > args.max_pixels:  # from the header, before a frame is decoded
            reader.close()
            report(f"error: {args.input}: frames of {size_text(height, width)} = {megapixels(width * height)} are "
                   f"over the limit of {megapixels(args.max_pixels)} (raise it with --max-pixels)")
            return EXIT_FAILED_INPUTS
        loaded = load_model(args)
        if loaded is None:
            reader.close()
            return EXIT_USAGE
        batcher, net = loaded
        if width and height:
            check_net_input(target_size(height, width, net, square=args.square), args.max_pixels)
    except ValueError as err:
        reader.close()
        report(f"error: {args.input}: {err}")
        return EXIT_FAILED_INPUTS
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reader.close()
        report(f"error: cannot create {args.out.parent}: {err}")
        return EXIT_USAGE
    fps = args.fps or float(meta.get("fps") or 30.0)
    duration = meta.get("duration")
    total = round(duration * fps) if isinstance(duration, (int, float)) and np.isfinite(duration) else None
    if args.max_frames:
        total = min(total, args.max_frames) if total else args.max_frames

    def read() -> Iterator[np.ndarray]:
        for index, frame in enumerate(reader):
            if args.max_frames and index >= args.max_frames:
                break
            yield frame

    def prepare(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (the frame, as the metadata that travels with it; its network input)."""
        frame = np.asarray(frame)[:, :, :3]
        return frame, preprocess(frame, net, square=args.square)

    def render(result: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        frame, depth = result
        picture = colorize(postprocess(depth, frame.shape[:2]), args.colormap)
        return even(np.concatenate([frame, picture], axis=1) if args.side_by_side else picture)

    count, start = 0, time.perf_counter()
    try:
        # a new uniquely named file that only we created (ffmpeg then writes it in place), removed on every exit
        with temp_beside(args.out) as temp:
            writer = imageio.get_writer(temp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                        macro_block_size=1, ffmpeg_log_level="error" if args.debug else "quiet")
            try:
                # one render thread keeps the frames in order; the batcher yields one shape's results in input order
                with (progress(total, "frame", args.quiet) as bar,
                      ThreadPoolExecutor(args.workers, "beit-decode") as decoder,
                      ThreadPoolExecutor(1, "beit-render") as renderer):
                    results = batcher.run(ordered_map(prepare, read(), decoder, limit=2 * args.workers + 8))
                    for picture in ordered_map(render, results, renderer, limit=4):
                        writer.append_data(picture)
                        count += 1
                        bar.update()
            except BaseException:
                with contextlib.suppress(Exception):  # ffmpeg goes before its file; the first error is the one
                    writer.close()
                raise
            writer.close()
            if count == 0:
                raise RuntimeError("no frames decoded")
            # imageio does not check ffmpeg's exit status: a failed encode leaves a short or empty file
            written, _ = imageio_ffmpeg.count_frames_and_secs(str(temp))
            if written != count:
                raise RuntimeError(f"ffmpeg wrote {written} of {count} frames")
            replace(temp, args.out)
    except Exception as err:
        return failed("cannot make the depth video", err)
    finally:
        reader.close()
    elapsed = time.perf_counter() - start
    shapes = ", ".join(size_text(h, w) for _, h, w, _ in sorted(batcher.shapes))
    print(f"{PROG}: {count} frames in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.2f} frames/s), network input "
          f"{shapes}, {describe(batcher)}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
