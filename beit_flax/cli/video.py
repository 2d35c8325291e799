"""`beit-depth video`: a video -> its depth video (stable by default), through `beit_flax.video`."""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

from beit_flax.arguments import EXIT_FAILED_INPUTS, EXIT_USAGE, PROG, fps_arg, positive_int, progress, report
from beit_flax.cli.common import check_size_flag, load_model
from beit_flax.files import OutputError, check_outputs
from beit_flax.transforms import size_text


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    video = sub.add_parser(
        "video",
        parents=[common],
        help="a video -> a depth video (stable: frames aligned, one colour range)",
        description="Depth of every frame, encoded H.264 with imageio's ffmpeg (audio is not copied). Relative "
        "depth (MiDaS): each frame is aligned to a running reference (robust least-squares scale and shift; a scene "
        "cut starts again) and noise-gated per pixel, and every frame is coloured over one range for the whole clip "
        "(the first frame's min-max). Metric depth (ZoeDepth): no alignment, the fixed range in meters.",
    )
    video.add_argument("input", metavar="IN", help="input video (anything ffmpeg reads)")
    video.add_argument("--out", required=True, type=Path, metavar="OUT.mp4", help="output video")
    video.add_argument("--side-by-side", action="store_true", help="input frame left, depth right")
    video.add_argument("--fps", type=fps_arg, help="output frame rate (default: the input's)")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    video.add_argument(
        "--no-stabilize",
        action="store_true",
        help="relative depth: colour each frame by its own min-max (flickers; MiDaS' behaviour)",
    )
    video.add_argument(
        "--npy",
        type=Path,
        metavar="DIR",
        help="also write each frame's map as DIR/frame_000000.npy...: float32, the stabilized map in clip units "
        "(0..1 is the colour range), or with --no-stabilize the model's maps (relative inverse depth), or meters "
        "(metric models)",
    )


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
    if args.no_stabilize and not predictor.output.up_to_scale:
        report(f"error: --no-stabilize is for relative depth; {args.weights} gives {predictor.output.units}")
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
    if (colours := predictor.output.range_text()) is not None:
        scale = f", {colours}"
    elif args.no_stabilize:
        scale = ", colours min-max per frame"
    else:
        scale = f", stabilized: one colour range per scene ({result.scenes} scene{'s' * (result.scenes != 1)})"
    print(
        f"{PROG}: {result.frames} frames in {result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.2f} "
        f"frames/s), network input {shapes}, {predictor.describe()}{scale}; wrote {args.out}"
    )
    return 0
