"""`beit-depth predict`: image files -> DIR/<stem>.npy + .png (+ .pfm, .ply, .glb), in the model's units (see `cli`)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from beit_flax.arguments import EXIT_FAILED_INPUTS, EXIT_USAGE, PROG, fov_arg, progress, report
from beit_flax.cli.common import check_size_flag, load_model
from beit_flax.files import OutputError, atomic_write_bytes, check_outputs
from beit_flax.geometry import DEFAULT_FOV_DEG, RELATIVE_NEAR_FAR, camera_focal
from beit_flax.images import IMAGE_EXTENSIONS, ImageError, read_image
from beit_flax.outputs import image_files, suffixes
from beit_flax.pipeline import ordered_map
from beit_flax.runtimes import RUNTIMES
from beit_flax.sharding import DISTRIBUTED_ENV, maybe_initialize_distributed, process_slice


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    images = sub.add_parser(
        "predict",
        parents=[common],
        help="image files -> DIR/<stem>.npy + DIR/<stem>.png (+ .pfm, .ply, .glb)",
        description="For each image: DIR/<stem>.npy, float32 (H, W) depth at the image's own size in the model's "
        "units (relative inverse depth, larger = nearer; or meters), and DIR/<stem>.png, the same map colormapped "
        "over the model's colour range (min-max per image; or a fixed range in meters), or 16-bit grayscale. "
        "Inputs with the same stem get <stem>_1, <stem>_2, ...",
    )
    images.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs ('*.jpg')")
    images.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    images.add_argument("--grayscale16", action="store_true", help="16-bit grayscale PNG, as MiDaS run.py writes")
    images.add_argument("--no-png", action="store_true", help="no .png files")
    images.add_argument(
        "--pfm",
        action="store_true",
        help="also DIR/<stem>.pfm: the .npy's values as MiDaS run.py writes them (grayscale PFM, little-endian, "
        "rows bottom to top)",
    )
    images.add_argument(
        "--ply",
        action="store_true",
        help="also DIR/<stem>.ply: a binary point cloud, one RGB point per pixel (pinhole camera, glTF axes: x "
        "right, y up, looking down -z; meters for metric models, relative depth on a normalised scale: nearest 1, "
        f"farthest {RELATIVE_NEAR_FAR:g})",
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
        "--runtime",
        choices=RUNTIMES,
        default="jax",
        help="jax: the jitted model on every device (default); onnxruntime / openvino: its ONNX export on the CPU, "
        "exported once per network input size and kept in the weights cache (float32, and bfloat16 in openvino; "
        "the [onnx] extra). On a CPU the fastest is machine-dependent: benchmarks/cpu_peers.py measures them",
    )
    images.add_argument(
        "--distributed",
        action="store_true",
        help=f"one process of a multi-host job (also ${DISTRIBUTED_ENV}=1): jax.distributed."
        "initialize(), then process i of k takes every k-th input of the sorted list from the i-th "
        "and writes its own outputs. Run the same command on every host; on GPU hosts set "
        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID",
    )


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
    wanted = suffixes(pfm=args.pfm, png=not args.no_png, ply=args.ply, glb=args.glb)
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
                output=predictor.output,
                colormap=args.colormap,
                grayscale16=args.grayscale16,
                pfm=args.pfm,
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

    def device_failed(failed: list[Job], err: Exception) -> None:  # e.g. out of device memory
        for job in failed:
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
    colours = predictor.output.range_text()
    camera = f"3D camera {', '.join(sorted(cameras))}, " if cameras else ""
    print(
        f"{PROG}: {who}{done} image{'s' * (done != 1)} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} img/s), "
        f"{predictor.describe()}, {shapes} input shape{'s' * (shapes != 1)}, "
        f"{f'{colours}, ' if colours else ''}{camera}"
        f"{len(failures)} failed{', ' + str(len(skipped)) + ' skipped' if skipped else ''}; outputs in {args.out}"
    )
    return EXIT_FAILED_INPUTS if failures else 0
