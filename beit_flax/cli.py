"""`beit-depth`: image files or a video -> relative inverse depth, with MiDaS run.py's pre- and post-processing.

    beit-depth predict --weights W INPUT... --out DIR [--devices N] [--distributed]
    beit-depth video IN.mp4 --weights W --out OUT.mp4 [--side-by-side] [--no-stabilize] [--npy DIR]
    beit-depth app --weights W [--host 127.0.0.1] [--port 7860]
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
import dataclasses
import glob
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from beit_flax.app import add_app_parser, run_app
from beit_flax.export import add_export_parser, run_export
from beit_flax.files import OutputError, atomic_write_bytes, check_outputs, interruptible
from beit_flax.geometry import DEFAULT_FOV_DEG, RELATIVE_NEAR_FAR, camera_focal
from beit_flax.images import COLORMAPS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, read_image, set_pixel_limit
from beit_flax.models.precision import COMPUTE_DTYPES
from beit_flax.outputs import image_files, suffixes
from beit_flax.pipeline import ordered_map
from beit_flax.predictor import Predictor
from beit_flax.sharding import DISTRIBUTED_ENV, maybe_initialize_distributed, process_slice
from beit_flax.transforms import MIN_NET_SIZE, check_net_size, size_text

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


def fov_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a field of view in degrees, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 180):
        raise argparse.ArgumentTypeError(f"expected a horizontal field of view in (0, 180) degrees, got {text}")
    return value


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,video,app,cache,export}")
    images = sub.add_parser(
        "predict",
        parents=[common],
        help="image files -> DIR/<stem>.npy + DIR/<stem>.png (+ .ply, .glb)",
        description="For each image: DIR/<stem>.npy, float32 (H, W) relative inverse depth (larger = nearer) at "
        "the image's own size, and DIR/<stem>.png, the same map min-max normalised and colormapped (or 16-bit "
        "grayscale). Inputs with the same stem get <stem>_1, <stem>_2, ...",
    )
    images.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs ('*.jpg')")
    images.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    images.add_argument("--grayscale16", action="store_true", help="16-bit grayscale PNG, as MiDaS run.py writes")
    images.add_argument("--no-png", action="store_true", help="no .png files")
    images.add_argument(
        "--ply",
        action="store_true",
        help="also DIR/<stem>.ply: a binary point cloud, one RGB point per pixel (pinhole camera, glTF axes: x "
        "right, y up, looking down -z; meters for ZoeDepth, MiDaS depth on a normalised scale: nearest 1, farthest "
        f"{RELATIVE_NEAR_FAR:g})",
    )
    images.add_argument(
        "--glb",
        action="store_true",
        help="also DIR/<stem>.glb: the same geometry as a textured mesh, cut at depth discontinuities (opens in "
        "browsers, Blender, trimesh)",
    )
    images.add_argument(
        "--fov",
        type=fov_arg,
        metavar="DEG",
        help="horizontal field of view of the camera for --ply / --glb (default: from the EXIF focal length when "
        f"the image has one, else {DEFAULT_FOV_DEG:g})",
    )
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
        help="a video -> a depth video (stable: frames aligned, one colour range)",
        description="Depth of every frame, encoded H.264 with imageio's ffmpeg (audio is not copied). MiDaS "
        "weights: each frame's relative depth is aligned to a running reference (robust least-squares scale and "
        "shift; a scene cut starts again) and noise-gated per pixel, and every frame is coloured over one range for "
        "the whole clip (the first frame's min-max). ZoeDepth weights: no alignment, the fixed range in meters.",
    )
    video.add_argument("input", metavar="IN", help="input video (anything ffmpeg reads)")
    video.add_argument("--out", required=True, type=Path, metavar="OUT.mp4", help="output video")
    video.add_argument("--side-by-side", action="store_true", help="input frame left, depth right")
    video.add_argument("--fps", type=fps_arg, help="output frame rate (default: the input's)")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    video.add_argument(
        "--no-stabilize",
        action="store_true",
        help="MiDaS weights: colour each frame by its own min-max (flickers; MiDaS' behaviour)",
    )
    video.add_argument(
        "--npy",
        type=Path,
        metavar="DIR",
        help="also write each frame's map as DIR/frame_000000.npy...: float32, the stabilized map in clip units "
        "(0..1 is the colour range), or with --no-stabilize relative inverse depth, or meters (ZoeDepth)",
    )

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
    add_app_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cache":
        from beit_flax.hub.manage import main as cache_main

        return cache_main(args.action, args.names)
    if args.command == "app":
        return run_app(args)  # its own Ctrl-C / SIGTERM handling: the server stops, then one line
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


def load_model(args: argparse.Namespace) -> Predictor | None:
    """The Predictor, or None after reporting a bad weights file, a net size over --max-pixels, --devices, or
    ZoeDepth flags for a MiDaS model."""
    try:
        return Predictor(
            args.weights,
            size=args.size,
            square=args.square,
            dtype=args.dtype,
            pad=not args.no_pad,
            flip=not args.no_flip,
            batch_size=args.batch_size,
            devices=args.devices,
            max_pixels=args.max_pixels,
            progress=not args.quiet,
        )
    except (OSError, ValueError) as err:
        report(f"error: {err}")
        return None


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
    stem: str  # output files: out/<stem>.npy, out/<stem>.png, ...
    size_hw: tuple[int, int] | None = None  # the decoded image's own size (set by decoding)
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)  # kept only for --ply / --glb colours


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
    if args.fov is not None and not (args.ply or args.glb):
        report("error: --fov sets the camera of the 3D files: add --ply and / or --glb")
        return EXIT_USAGE
    # stems from the whole list, so that processes never write the same name
    every_job = [Job(path, stem) for path, stem in zip(paths, output_stems(paths))]
    wanted = suffixes(png=not args.no_png, ply=args.ply, glb=args.glb)
    try:  # before any work: e.g. --out the input folder would replace photo.png with its depth map
        outputs = (args.out / f"{job.stem}{suffix}" for job in every_job for suffix in wanted)
        check_outputs(outputs, paths, make_folders=True)
    except OutputError as err:
        report(f"error: --out {args.out}: cannot write {err} (choose another --out folder)")
        return EXIT_USAGE
    predictor = load_model(args)
    if predictor is None:
        return EXIT_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report(f"error: cannot create {args.out}: {err}")
        return EXIT_USAGE
    jobs = process_slice(every_job, index, count)

    def decode(item: tuple[int, Job]) -> tuple[Job, list | None, str | None]:
        """-> (the job with its image (kept for the 3D files' colours), [(view, network input)] or None, error)."""
        position, job = item
        try:
            image = read_image(job.source, args.max_pixels)
            predictor.check(*image.shape[:2])
            inputs = predictor.inputs(image, position)
            keep = image if args.ply or args.glb else None
            return dataclasses.replace(job, size_hw=image.shape[:2], image=keep), inputs, None
        except ImageError as err:
            return job, None, str(err)
        except ValueError as err:  # the network input over --max-pixels
            return job, None, f"{job.source}: {err}"
        except MemoryError:
            return job, None, f"{job.source}: out of memory"

    cameras: set[str] = set()

    def write(result: tuple[Job, tuple[int, int], list]) -> str | None:
        job, size_hw, parts = result
        try:
            depth = predictor.finish(size_hw, parts)
            focal_px = None
            if args.ply or args.glb:
                focal_px, camera = camera_focal(job.source, depth.shape[1], args.fov)
                cameras.add(camera)
            files = image_files(
                depth,
                job.image,
                top_m=predictor.top_m,
                colormap=args.colormap,
                grayscale16=args.grayscale16,
                png=not args.no_png,
                ply=args.ply,
                glb=args.glb,
                focal_px=focal_px,
            )
            for suffix, data in files.items():
                atomic_write_bytes(args.out / f"{job.stem}{suffix}", data)
        except OSError as err:
            return f"{job.source}: cannot write output: {err}"
        except MemoryError:
            return f"{job.source}: out of memory making its outputs"
        return None

    done = 0
    bar = progress(len(jobs), "img", args.quiet)
    start = time.perf_counter()

    def decoded(pool: ThreadPoolExecutor) -> Iterator[tuple[Job, tuple[int, int], list]]:
        limit = 2 * args.workers + predictor.batcher.batch_size
        for job, inputs, error in ordered_map(decode, enumerate(jobs), pool, limit=limit):
            if error is None:
                yield job, job.size_hw, inputs
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

    def device_failed(failed: list[Job], err: Exception) -> None:  # e.g. out of device memory
        for job in failed:
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
        results = predictor.run(decoded(decoder), on_error=device_failed)
        for error in ordered_map(write, results, writer, limit=2 * args.workers):
            finish(error)
    elapsed = time.perf_counter() - start
    who = f"process {index} of {count}: " if count > 1 else ""
    shapes = len(predictor.batcher.input_shapes)
    top_m = predictor.top_m
    camera = f"3D camera {', '.join(sorted(cameras))}, " if cameras else ""
    print(
        f"{PROG}: {who}{done} image{'s' * (done != 1)} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} img/s), "
        f"{predictor.describe()}, {shapes} input shape{'s' * (shapes != 1)}, "
        f"{f'metric depth, PNG range 0..{top_m:g} m (near bright), ' if top_m else ''}{camera}"
        f"{len(failures)} failed{', ' + str(len(skipped)) + ' skipped' if skipped else ''}; outputs in {args.out}"
    )
    return EXIT_FAILED_INPUTS if failures else 0


# --- video ----------------------------------------------------------------------------------------------------------


def video_failed(err: Exception, args: argparse.Namespace) -> int:
    """One line of ours; ffmpeg's log (in the cause's message) and the traceback with --debug only."""
    if args.debug:
        traceback.print_exception(err.__cause__ or err)
    hint = "; --debug for more" if err.__cause__ is not None and not args.debug else ""
    report(f"error: {args.input}: {err}{hint}")
    return EXIT_FAILED_INPUTS


def run_video(args: argparse.Namespace) -> int:
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        report("error: video needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg)")
        return EXIT_USAGE
    from beit_flax.video import VIDEO_SUFFIXES, VideoError, check_npy_dir, depth_video, read_header

    if args.out.suffix.lower() not in VIDEO_SUFFIXES:
        report(f"error: --out {args.out}: use a video file name ({', '.join(VIDEO_SUFFIXES)}: H.264)")
        return EXIT_USAGE
    if not check_size_flag(args):
        return EXIT_USAGE
    try:
        check_outputs([args.out], [args.input], make_folders=True)  # before any work: e.g. --out the input itself
        if args.npy is not None:
            check_npy_dir(args.npy, [args.input, args.out])
    except OutputError as err:
        report(f"error: cannot write {err}")
        return EXIT_USAGE
    try:
        read_header(args.input, args.max_pixels)  # before the weights (maybe a download): a bad input is found at once
    except VideoError as err:
        return video_failed(err, args)
    predictor = load_model(args)
    if predictor is None:
        return EXIT_USAGE
    if predictor.metric and args.no_stabilize:
        report(f"error: --no-stabilize is for MiDaS (relative depth) weights; {args.weights} is metric (ZoeDepth)")
        return EXIT_USAGE
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        report(f"error: cannot create {args.out.parent}: {err}")
        return EXIT_USAGE
    bar = None

    def start(total: int | None) -> None:
        nonlocal bar
        bar = progress(total, "frame", args.quiet)

    try:
        result = depth_video(
            predictor,
            args.input,
            args.out,
            stabilize=not args.no_stabilize,
            side_by_side=args.side_by_side,
            fps=args.fps,
            max_frames=args.max_frames,
            colormap=args.colormap,
            npy_dir=args.npy,
            workers=args.workers,
            on_start=start,
            on_frame=lambda: bar.update(),
            debug=args.debug,
        )
    except VideoError as err:
        return video_failed(err, args)
    finally:
        if bar is not None:
            bar.close()
    shapes = ", ".join(size_text(h, w) for h, w in result.input_shapes)
    if predictor.metric:
        scale = f", metric depth, colour range 0..{predictor.top_m:g} m (near bright)"
    elif args.no_stabilize:
        scale = ", colours min-max per frame"
    else:
        scale = f", stabilized: one colour range per scene ({result.scenes} scene{'s' * (result.scenes != 1)})"
    print(
        f"{PROG}: {result.frames} frames in {result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.2f} "
        f"frames/s), network input {shapes}, {predictor.describe()}{scale}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
