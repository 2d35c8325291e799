"""The options every model-running command of `beit-depth` shares (`predict`, `video`), and the model they load."""

from __future__ import annotations

import argparse
import os

from beit_flax.arguments import net_size_arg, positive_int, report, weights_help
from beit_flax.images import COLORMAPS, DEFAULT_MAX_PIXELS
from beit_flax.models.precision import COMPUTE_DTYPES
from beit_flax.predictor import Predictor
from beit_flax.transforms import check_net_size


def model_options() -> argparse.ArgumentParser:
    """The parent parser of `predict` and `video`: weights, preprocessing, devices, colours, limits."""
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model and preprocessing")
    model.add_argument(
        "--weights",
        required=True,
        metavar="W",
        help=weights_help(),
    )
    model.add_argument(
        "--size",
        type=net_size_arg,
        metavar="N",
        help="net size to resize towards (default: the model's: MiDaS 512 or 384, Depth Anything's input_size 518)",
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
        help="no test-time reflect padding, for models whose pipeline pads (ZoeDepth's infer_pil; default: padded)",
    )
    model.add_argument(
        "--no-flip",
        action="store_true",
        help="no test-time flip averaging, for models whose pipeline has it (ZoeDepth's infer_pil; default: the "
        "flipped image's depth averaged in, twice the compute)",
    )
    model.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model.add_argument("--debug", action="store_true", help="full error detail: tracebacks, ffmpeg's log")
    return common


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
    --no-pad / --no-flip for a model whose pipeline has neither."""
    try:
        return Predictor(
            args.weights,
            size=args.size,
            square=args.square,
            dtype=args.dtype,
            pad=False if args.no_pad else None,
            flip=False if args.no_flip else None,
            batch_size=args.batch_size,
            devices=args.devices,
            max_pixels=args.max_pixels,
            progress=not args.quiet,
            runtime=getattr(args, "runtime", "jax"),  # predict's flag
        )
    except (OSError, ValueError) as err:
        report(f"error: {err}")
        return None
