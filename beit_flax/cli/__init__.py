"""`beit-depth`: image files or a video -> depth maps, with each model family's own pre- and post-processing.

    beit-depth predict --weights W INPUT... --out DIR [--devices N] [--distributed]
    beit-depth video IN.mp4 --weights W --out OUT.mp4 [--side-by-side] [--no-stabilize] [--npy DIR]
    beit-depth app --weights W [--host 127.0.0.1] [--port 7860]
    beit-depth cache list|clear [NAME...]
    beit-depth evaluate --weights W --dataset NAME ROOT [--out R.json]   (or --predictions DIR: saved maps)

W: a known name (dpt_beit_large_512...), a hub repo id, a checkpoint or a .msgpack (`beit_flax.hub.resolve`).

The model family of W decides the rest (`models.registry`, through `Predictor`): MiDaS weights give relative inverse
depth with MiDaS run.py's pre- and post-processing; ZoeDepth weights give meters with its `infer_pil` steps (reflect
padding, flip averaging: --no-pad / --no-flip turn them off, refused for a family without them), PNGs and videos
over a fixed range 0..max depth (near = bright), stated in the summary line and the PNG's text; Depth Anything
weights give relative inverse depth, or meters for its metric models, with `infer_image`'s steps (--size: its
input_size).

One module per command: `predict`, `video` (and `beit_flax.app`, `beit_flax.export`); `common` holds the options
they share; argument types and reports live below all of them, in `beit_flax.arguments`.

Pipeline (predict): a thread pool decodes and preprocesses ahead (bounded), the main thread batches by network input
shape and keeps one batch on the devices (split over every local device, params replicated), a second pool
postprocesses and writes (temp file + rename). A bad input is reported on stderr and skipped; the exit status is 1
at the end if any input failed. Before any work, every output path is checked (`files.check_outputs`: a regular file
or absent, none of the inputs, its folder writable), and the network input against --max-pixels. With --distributed,
every process of a multi-host job runs this same command and handles every k-th input of the sorted list (process i
of k starts at the i-th).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from beit_flax.app import add_app_parser, run_app
from beit_flax.arguments import EXIT_FAILED_INPUTS, EXIT_USAGE, PROG
from beit_flax.cli import evaluate, predict, video
from beit_flax.cli.common import model_options
from beit_flax.export import add_export_parser, run_export
from beit_flax.images import set_pixel_limit
from beit_flax.interrupts import interruptible

__all__ = ["EXIT_FAILED_INPUTS", "EXIT_USAGE", "PROG", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="DPT monocular depth in JAX/Flax (MiDaS v3.1 BEiT-DPT, ZoeDepth, Depth Anything V1 / V2), each "
        "model with its own pre- and post-processing (MiDaS run.py, ZoeDepth infer_pil, Depth Anything infer_image).",
        epilog="Exit status: 0 all done, 1 some inputs failed (the others were written), 2 bad arguments, weights "
        "or output paths (nothing was processed), 130 / 143 interrupted (Ctrl-C / SIGTERM). Compiled programs are "
        "cached in ~/.cache/beit-flax/jax ($BEIT_FLAX_CACHE_DIR, 'off' disables).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,video,app,cache,export,evaluate}")
    common = model_options()
    predict.add_parser(sub, common)
    video.add_parser(sub, common)
    weights_cache = sub.add_parser(
        "cache",
        help="list or clear the converted weights cache",
        description="Converted weights, release downloads and the ONNX exports of predict --runtime "
        "onnxruntime|openvino (onnx/; removed by a full clear) live in ~/.cache/beit-flax/weights "
        "($BEIT_FLAX_WEIGHTS_DIR); hub downloads stay in the Hugging Face cache.",
    )
    weights_cache.add_argument("action", choices=("list", "clear"))
    weights_cache.add_argument(
        "names", nargs="*", metavar="NAME", help="clear only these (known names, repo ids, sources or cached files)"
    )
    add_app_parser(sub)
    add_export_parser(sub)
    evaluate.add_parser(sub)
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
    if args.command == "evaluate":
        return interruptible(PROG, lambda: evaluate.run_evaluate(args))
    set_pixel_limit(args.max_pixels)  # Pillow's own guard follows the flag: it is the one limit
    run = predict.run_predict if args.command == "predict" else video.run_video
    return interruptible(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
