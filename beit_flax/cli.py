"""`beit-depth`: image files or a video -> relative inverse depth, with MiDaS run.py's pre- and post-processing.

    beit-depth predict --weights W INPUT... --out DIR [--devices N] [--distributed]
    beit-depth video IN.mp4 --weights W --out OUT.mp4 [--side-by-side]
    beit-depth cache list|clear [NAME...]

W: a known name (dpt_beit_large_512...), a hub repo id, a checkpoint or a .msgpack (`beit_flax.hub.resolve`).

ZoeDepth weights (`convert_weights ZoeD_M12_N.pt ...`, or the names zoedepth_nyu / _kitti / _nyu_kitti) give metric
depth in meters instead, with ZoeDepth's own `infer_pil` pre- and post-processing (`zoedepth_transforms`: reflect
padding, flip averaging; --no-pad / --no-flip turn them off and are refused for MiDaS weights), PNGs and videos over
the fixed range 0..max depth (near = bright), the range stated in the summary line and the PNG's text.

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
from beit_flax.export import add_export_parser, run_export
from beit_flax.files import OutputError, atomic_write_bytes, check_outputs, interruptible, replace, temp_beside
from beit_flax.hub import resolve
from beit_flax.images import (
    COLORMAPS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    colorize,
    colorize_metric,
    encode_npy,
    encode_png,
    read_image,
    set_pixel_limit,
    to_png16,
)
from beit_flax.models.precision import COMPUTE_DTYPES
from beit_flax.models.zoedepth.zoedepth import ZoeDepth
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
from beit_flax.zoedepth_pipeline import check_net_hw, depth_range_m, grouped
from beit_flax.zoedepth_transforms import merge, pad_sizes, preprocess_views
from beit_flax.zoedepth_transforms import target_size as zoedepth_target_size

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
    model.add_argument(
        "--weights",
        required=True,
        metavar="W",
        help="a known name (dpt_beit_large_512, dpt_beit_large_384, dpt_beit_base_384: downloaded, "
        "converted and cached once), a hub repo id (Intel/dpt-beit-large-512[@revision]), a PyTorch "
        "checkpoint or transformers folder (converted once, cached), or a beit-flax .msgpack",
    )
    model.add_argument(
        "--size", type=net_size_arg, metavar="N", help="net size to resize towards (default: the model's, 512 or 384)"
    )
    model.add_argument("--square", action="store_true", help="resize to N x N instead of keeping the aspect ratio")
    model.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="images per step, all devices together (global), per input shape; rounded up to a "
        "multiple of the device count (default: 1 per device on CPU, 8 per device on GPU / TPU)",
    )
    model.add_argument(
        "--devices",
        type=positive_int,
        metavar="N",
        help="use the first N local devices (default: all; params replicated, batches split)",
    )
    model.add_argument(
        "--dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="compute dtype; parameters stay float32 (default: %(default)s)",
    )
    model.add_argument(
        "--colormap",
        choices=COLORMAPS,
        default="inferno",
        help="colormap of the PNGs / video (default: %(default)s, as MiDaS)",
    )
    model.add_argument(
        "--workers",
        type=positive_int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="threads decoding and writing (default: %(default)s)",
    )
    model.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="the one pixel limit: larger images (read from the header) and network inputs are "
        "refused (default: %(default)s)",
    )
    model.add_argument(
        "--no-pad",
        action="store_true",
        help="ZoeDepth weights only: no reflect padding before the network (default: padded, as ZoeDepth's infer_pil)",
    )
    model.add_argument(
        "--no-flip",
        action="store_true",
        help="ZoeDepth weights only: no flip averaging (default: the flipped image's depth averaged "
        "in, as ZoeDepth's infer_pil; twice the compute)",
    )
    model.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model.add_argument("--debug", action="store_true", help="full error detail: tracebacks, ffmpeg's log")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MiDaS v3.1 BEiT-DPT monocular depth (JAX/Flax), preprocessing as MiDaS run.py.",
        epilog="Exit status: 0 all done, 1 some inputs failed (the others were written), 2 bad arguments, weights "
        "or output paths (nothing was processed), 130 / 143 interrupted (Ctrl-C / SIGTERM). Compiled programs are "
        "cached in ~/.cache/beit-flax/jax ($BEIT_FLAX_CACHE_DIR, 'off' disables).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,video,cache,export}")
    images = sub.add_parser(
        "predict",
        parents=[common],
        help="image files -> DIR/<stem>.npy + DIR/<stem>.png",
        description="For each image: DIR/<stem>.npy, float32 (H, W) relative inverse depth (larger = nearer) at "
        "the image's own size, and DIR/<stem>.png, the same map min-max normalised and colormapped (or 16-bit "
        "grayscale). Inputs with the same stem get <stem>_1, <stem>_2, ...",
    )
    images.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs ('*.jpg')")
    images.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    images.add_argument("--grayscale16", action="store_true", help="16-bit grayscale PNG, as MiDaS run.py writes")
    images.add_argument("--no-png", action="store_true", help="write only the .npy files")
    images.add_argument(
        "--distributed",
        action="store_true",
        help=f"one process of a multi-host job (also ${DISTRIBUTED_ENV}=1): jax.distributed."
        "initialize(), then process i of k takes every k-th input of the sorted list from the i-th "
        "and writes its own outputs. Run the same command on every host; on GPU hosts set "
        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID",
    )

    video = sub.add_parser(
        "video",
        parents=[common],
        help="a video -> a depth video (frame by frame)",
        description="Depth of every frame, colormapped (min-max per frame), encoded H.264 "
        "with imageio's ffmpeg. Audio is not copied.",
    )
    video.add_argument("input", metavar="IN", help="input video (anything ffmpeg reads)")
    video.add_argument("--out", required=True, type=Path, metavar="OUT.mp4", help="output video")
    video.add_argument("--side-by-side", action="store_true", help="input frame left, depth right")
    video.add_argument("--fps", type=fps_arg, help="output frame rate (default: the input's)")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")

    weights_cache = sub.add_parser(
        "cache",
        help="list or clear the converted weights cache",
        description="Converted weights (and release downloads) live in "
        "~/.cache/beit-flax/weights ($BEIT_FLAX_WEIGHTS_DIR); hub downloads stay in the "
        "Hugging Face cache.",
    )
    weights_cache.add_argument("action", choices=("list", "clear"))
    weights_cache.add_argument(
        "names", nargs="*", metavar="NAME", help="clear only these (known names, repo ids, sources or cached files)"
    )
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cache":
        from beit_flax.hub.manage import main as cache_main

        return cache_main(args.action, args.names)
    if args.command == "export":
        return interruptible(PROG, lambda: run_export(args))
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
    """(Batcher, net size), or None after reporting a bad weights file, a net size over --max-pixels, --devices, or
    ZoeDepth flags for a MiDaS model. A ZoeDepth's net size is (H, W) (--size N: N x N)."""
    try:
        model, params = load(resolve(args.weights, progress=not args.quiet), dtype=args.dtype)
    except (OSError, ValueError) as err:
        report(f"error: cannot load weights: {err}")
        return None
    metric = isinstance(model, ZoeDepth)
    if not metric and (args.no_pad or args.no_flip):
        report(f"error: --no-pad / --no-flip are ZoeDepth options; {args.weights} is a MiDaS (relative depth) model")
        return None
    try:
        if metric:
            net = check_net_hw(args.size or model.config.net_size)
            check_net_input(net, args.max_pixels)
        else:
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


# --- the two kinds of model: relative inverse depth (MiDaS) and metric depth (ZoeDepth) ------------------------------


def is_metric(batcher: Batcher) -> bool:
    return isinstance(batcher.model, ZoeDepth)


def network_size(height: int, width: int, net, args: argparse.Namespace, metric: bool) -> tuple[int, int]:
    """The network input (H', W') of a (height, width) image (ZoeDepth's: of the padded image)."""
    if not metric:
        return target_size(height, width, net, square=args.square)
    pad_h, pad_w = pad_sizes(height, width, not args.no_pad)
    return zoedepth_target_size(height + 2 * pad_h, width + 2 * pad_w, net, keep_aspect=not args.square)


def network_inputs(image: np.ndarray, index: int, net, args: argparse.Namespace, metric: bool) -> list:
    """[(view or None, network input)]: ZoeDepth's views of the image (plain, flipped), or MiDaS' one input."""
    if metric:
        return preprocess_views(
            image, net, index=index, pad=not args.no_pad, flip=not args.no_flip, keep_aspect=not args.square
        )
    return [(None, preprocess(image, net, square=args.square))]


def regroup(results, args: argparse.Namespace, metric: bool):
    """`Batcher.run`'s `((meta, view), depth)` -> `(meta, [(view, depth), ...])`, an image's views together."""
    if metric:
        yield from grouped(results, 1 if args.no_flip else 2)
    else:
        for (meta, view), depth in results:
            yield meta, [(view, depth)]


def full_depth(parts: list, size_hw: tuple[int, int], metric: bool) -> np.ndarray:
    """An image's network outputs -> (H, W) float32: meters (ZoeDepth) or relative inverse depth (MiDaS)."""
    return merge(parts) if metric else postprocess(parts[0][1], size_hw)


def render(depth: np.ndarray, args: argparse.Namespace, top_m: float | None) -> np.ndarray:
    """The PNG / video picture: MiDaS' min-max per map, or (top_m set) ZoeDepth's fixed 0..top_m meters."""
    if top_m is None:
        return colorize(depth, args.colormap)
    return colorize_metric(depth, top_m, args.colormap)


def metric_png16(depth_m: np.ndarray, top_m: float) -> np.ndarray:
    """(H, W) meters -> uint16 over the fixed range: 65535 at 0 m, 0 at top_m and beyond (near = bright)."""
    return (65535 * (1.0 - np.clip(np.nan_to_num(depth_m, nan=top_m) / top_m, 0.0, 1.0))).astype(np.uint16)


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
        hint = (
            (
                "; outside Cloud TPU / Slurm / Open MPI set JAX_COORDINATOR_ADDRESS (host:port of process 0), "
                "JAX_NUM_PROCESSES and JAX_PROCESS_ID"
            )
            if "coordinator" in str(err).lower()
            else ""
        )
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
    metric = is_metric(batcher)
    top_m = depth_range_m(batcher.config) if metric else None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report(f"error: cannot create {args.out}: {err}")
        return EXIT_USAGE
    jobs = process_slice(every_job, index, count)

    def decode(item: tuple[int, Job]) -> tuple[Job, list | None, str | None]:
        """-> (the job with its image's size, [(view, network input)] or None, error or None)."""
        position, job = item
        try:
            image = read_image(job.source, args.max_pixels)
            check_net_input(network_size(*image.shape[:2], net, args, metric), args.max_pixels)
            inputs = network_inputs(image, position, net, args, metric)
            return dataclasses.replace(job, size_hw=image.shape[:2]), inputs, None
        except ImageError as err:
            return job, None, str(err)
        except ValueError as err:  # the network input over --max-pixels
            return job, None, f"{job.source}: {err}"
        except MemoryError:
            return job, None, f"{job.source}: out of memory"

    png_text = {"depth": "metric, meters", "depth_range_m": f"0 {top_m:g}", "near": "bright"} if metric else None

    def write(result: tuple[Job, list]) -> str | None:
        job, parts = result
        try:
            full = full_depth(parts, job.size_hw, metric)
            atomic_write_bytes(args.out / f"{job.stem}.npy", encode_npy(full))
            if not args.no_png:
                if args.grayscale16:
                    picture = metric_png16(full, top_m) if metric else to_png16(full)
                else:
                    picture = render(full, args, top_m)
                atomic_write_bytes(args.out / f"{job.stem}.png", encode_png(picture, png_text))
        except OSError as err:
            return f"{job.source}: cannot write output: {err}"
        return None

    done = 0
    bar = progress(len(jobs), "img", args.quiet)
    start = time.perf_counter()

    def decoded(pool: ThreadPoolExecutor) -> Iterator[tuple[tuple[Job, object], np.ndarray]]:
        limit = 2 * args.workers + batcher.batch_size
        for job, inputs, error in ordered_map(decode, enumerate(jobs), pool, limit=limit):
            if error is None:
                for view, net_input in inputs:
                    yield (job, view), net_input
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

    reported: set[Path] = set()

    def device_failed(failed: list[tuple[Job, object]], err: Exception) -> None:  # e.g. out of device memory
        for job, _ in failed:
            if job.source in reported:  # both views of a ZoeDepth image
                continue
            reported.add(job.source)
            failures.append(f"{job.source}: inference failed ({type(err).__name__}: {str(err)[:300]})")
            report(f"error: {failures[-1]}")
            bar.update()

    with (
        bar,
        ThreadPoolExecutor(args.workers, "beit-decode") as decoder,
        ThreadPoolExecutor(args.workers, "beit-write") as writer,
    ):
        results = regroup(batcher.run(decoded(decoder), on_error=device_failed), args, metric)
        for error in ordered_map(write, results, writer, limit=2 * args.workers):
            finish(error)
    elapsed = time.perf_counter() - start
    who = f"process {index} of {count}: " if count > 1 else ""
    print(
        f"{PROG}: {who}{done} image{'s' * (done != 1)} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} img/s), "
        f"{describe(batcher)}, {len(batcher.input_shapes)} input shape{'s' * (len(batcher.input_shapes) != 1)}, "
        f"{f'metric depth, PNG range 0..{top_m:g} m (near bright), ' if metric else ''}"
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
            report(
                f"error: {args.input}: frames of {size_text(height, width)} = {megapixels(width * height)} are "
                f"over the limit of {megapixels(args.max_pixels)} (raise it with --max-pixels)"
            )
            return EXIT_FAILED_INPUTS
        loaded = load_model(args)
        if loaded is None:
            reader.close()
            return EXIT_USAGE
        batcher, net = loaded
        metric = is_metric(batcher)
        top_m = depth_range_m(batcher.config) if metric else None
        if width and height:
            check_net_input(network_size(height, width, net, args, metric), args.max_pixels)
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

    def read() -> Iterator[tuple[int, np.ndarray]]:
        for index, frame in enumerate(reader):
            if args.max_frames and index >= args.max_frames:
                break
            yield index, frame

    def prepare(item: tuple[int, np.ndarray]) -> list:
        """-> [((the frame, as the metadata that travels with it; its view), its network input)]."""
        index, frame = item
        frame = np.asarray(frame)[:, :, :3]
        return [((frame, view), net_input) for view, net_input in network_inputs(frame, index, net, args, metric)]

    def inputs(pool: ThreadPoolExecutor) -> Iterator:
        for prepared in ordered_map(prepare, read(), pool, limit=2 * args.workers + 8):
            yield from prepared

    def picture_of(result: tuple[np.ndarray, list]) -> np.ndarray:
        frame, parts = result
        picture = render(full_depth(parts, frame.shape[:2], metric), args, top_m)
        return even(np.concatenate([frame, picture], axis=1) if args.side_by_side else picture)

    count, start = 0, time.perf_counter()
    try:
        # a new uniquely named file that only we created (ffmpeg then writes it in place), removed on every exit
        with temp_beside(args.out) as temp:
            writer = imageio.get_writer(
                temp,
                format="FFMPEG",
                mode="I",
                fps=fps,
                codec="libx264",
                quality=8,
                macro_block_size=1,
                ffmpeg_log_level="error" if args.debug else "quiet",
            )
            try:
                # one render thread keeps the frames in order; the batcher yields one shape's results in input order
                with (
                    progress(total, "frame", args.quiet) as bar,
                    ThreadPoolExecutor(args.workers, "beit-decode") as decoder,
                    ThreadPoolExecutor(1, "beit-render") as renderer,
                ):
                    results = regroup(batcher.run(inputs(decoder)), args, metric)
                    for picture in ordered_map(picture_of, results, renderer, limit=4):
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
    shapes = ", ".join(size_text(h, w) for h, w in sorted(batcher.input_shapes))
    scale = f", metric depth, colour range 0..{top_m:g} m (near bright)" if metric else ""
    print(
        f"{PROG}: {count} frames in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.2f} frames/s), network input "
        f"{shapes}, {describe(batcher)}{scale}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
