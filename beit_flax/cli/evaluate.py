"""`beit-depth evaluate`: a model (or saved maps) scored on a benchmark dataset with the published protocol.

    beit-depth evaluate --weights W --dataset NAME ROOT [--split FILE] [--protocol auto|metric|relative]
                        [--out R.json] [--predictions DIR --units depth|inverse-depth] [--depth-cap M] [--limit N]

Prints one JSON line (dataset, protocol, counts, model, the mean of each metric over the images) and, with --out,
writes it to R.json and one line per image to R.csv. The protocol follows the maps: metric depth gets ZoeDepth's
(where the dataset has a metric range), relative inverse depth MiDaS' (`beit_flax.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from beit_flax.arguments import EXIT_FAILED_INPUTS, EXIT_USAGE, net_size_arg, positive_int, progress, report
from beit_flax.evaluation.datasets import DATASETS, DatasetError, open_dataset
from beit_flax.evaluation.runner import (
    DEPTH,
    INVERSE_DEPTH,
    PROTOCOLS,
    choose_protocol,
    csv_text,
    missing_predictions,
    model_rows,
    one_view,
    prediction_rows,
    summary,
)
from beit_flax.files import OutputError, atomic_write_bytes, check_outputs
from beit_flax.images import DEFAULT_MAX_PIXELS
from beit_flax.models.precision import COMPUTE_DTYPES

UNITS = {"depth": DEPTH, "inverse-depth": INVERSE_DEPTH}


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="score a model on NYU-v2, KITTI, DIODE, iBims-1, ETH3D or Sintel with the published protocol",
        description="Runs the model over the dataset on every local device and scores each image with the "
        "protocol that fits its maps: metric depth as ZoeDepth's evaluate.py (flip averaging, clipping to the "
        "dataset's range, Eigen / Garg crop, nine metrics), relative inverse depth as MiDaS' evaluation "
        "(least-squares scale and shift in disparity, depth cap). Datasets: "
        + "; ".join(f"{name}: {d.description}" for name, d in DATASETS.items()),
    )
    evaluate.add_argument(
        "--dataset",
        nargs=2,
        required=True,
        metavar=("NAME", "ROOT"),
        help=f"the dataset ({', '.join(DATASETS)}) and its folder, as the dataset ships it",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="W", help="the model: anything predict's --weights takes")
    source.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="score saved maps instead: DIR/<key>.npy for each image, key = the image's path under the dataset "
        "root without its suffix, (H, W) float at any resolution",
    )
    evaluate.add_argument("--split", type=Path, metavar="FILE", help="file list (nyu, nyu_labeled; required: kitti)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="auto", help="default: the one that fits the maps")
    evaluate.add_argument(
        "--units",
        choices=UNITS,
        help="what --predictions maps hold (default: depth for --protocol metric, "
        "inverse-depth for --protocol relative)",
    )
    evaluate.add_argument("--depth-cap", type=positive_float, metavar="M", help="the relative protocol's cap, meters")
    evaluate.add_argument("--out", type=Path, metavar="R.json", help="write the result there and R.csv per image")
    evaluate.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images (a quick check)")
    model = evaluate.add_argument_group("model")
    model.add_argument("--size", type=net_size_arg, metavar="N", help="net size (default: the model's)")
    model.add_argument("--square", action="store_true", help="resize to N x N instead of keeping the aspect ratio")
    model.add_argument("--batch-size", type=positive_int, metavar="B", help="images per step, all devices together")
    model.add_argument("--devices", type=positive_int, metavar="N", help="use the first N local devices")
    model.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32", help="compute dtype (default float32)")
    model.add_argument("--workers", type=positive_int, default=4, metavar="N", help="reading threads (default 4)")
    model.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N", help="pixel limit")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--debug", action="store_true", help="tracebacks")


def _units(args: argparse.Namespace) -> str | None:
    if args.units is not None:
        return UNITS[args.units]
    return {"metric": DEPTH, "relative": INVERSE_DEPTH}.get(args.protocol)


def run_evaluate(args: argparse.Namespace) -> int:
    name, root = args.dataset[0], Path(args.dataset[1])
    if name not in DATASETS:
        report(f"error: unknown dataset {name!r}; one of {', '.join(DATASETS)}")
        return EXIT_USAGE
    dataset = DATASETS[name]
    if args.weights is not None and args.units is not None:
        report("error: --units describes --predictions maps; a model's maps say what they are")
        return EXIT_USAGE
    outputs = [args.out, args.out.with_suffix(".csv")] if args.out is not None else []
    if args.out is not None and args.out.suffix.lower() != ".json":
        report(f"error: --out {args.out}: name a .json file (the per-image table goes beside it as .csv)")
        return EXIT_USAGE
    try:
        items = open_dataset(name, root, args.split)[: args.limit]
        check_outputs(outputs, [root], make_folders=True)
    except DatasetError as err:
        report(f"error: {err}")
        return EXIT_USAGE
    except OutputError as err:
        report(f"error: --out {args.out}: cannot write {err}")
        return EXIT_USAGE
    if args.predictions is not None:
        units = _units(args)
        if units is None:
            report("error: --predictions needs --units depth|inverse-depth or --protocol metric|relative")
            return EXIT_USAGE
    else:
        predictor = _predictor(args)
        if predictor is None:
            return EXIT_USAGE
        units = INVERSE_DEPTH if predictor.output.up_to_scale else DEPTH
    try:
        protocol = choose_protocol(dataset, args.protocol, units, args.depth_cap)
    except ValueError as err:
        report(f"error: {err}")
        return EXIT_USAGE
    if args.predictions is not None:
        if not args.predictions.is_dir():
            report(f"error: --predictions {args.predictions}: no such folder")
            return EXIT_USAGE
        missing = missing_predictions(args.predictions, items)
        if missing:
            report(
                f"error: --predictions {args.predictions}: {len(missing)} of {len(items)} maps missing "
                f"(first: {missing[0]}; DIR/<key>.npy mirrors the images' paths under {root})"
            )
            return EXIT_USAGE
    bar = progress(len(items), "img", args.quiet)
    start = time.perf_counter()

    def on_row(row) -> None:
        if row.error:
            report(f"error: {row.key}: {row.error}")
        bar.update()

    with bar:
        if args.predictions is not None:
            rows = prediction_rows(args.predictions, items, protocol, units, args.workers, on_row)
            model = f"predictions:{args.predictions}"
        else:
            rows = model_rows(predictor, items, protocol, args.workers, on_row)
            model = str(args.weights)
    result = summary(rows, protocol, dataset, root, model)
    result["seconds"] = round(time.perf_counter() - start, 3)
    line = json.dumps(result, allow_nan=True)
    if args.out is not None:
        try:
            atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
            atomic_write_bytes(args.out.with_suffix(".csv"), csv_text(rows, protocol).encode())
        except OSError as err:
            report(f"error: cannot write {args.out}: {err}")
            return EXIT_USAGE
    print(line)
    return EXIT_FAILED_INPUTS if result["failed"] else 0


def _predictor(args: argparse.Namespace):
    """The model with one view per image (`runner.one_view`), or None after reporting why not."""
    from beit_flax.images import set_pixel_limit
    from beit_flax.predictor import Predictor

    set_pixel_limit(args.max_pixels)
    try:
        predictor = Predictor(
            args.weights,
            size=args.size,
            square=args.square,
            dtype=args.dtype,
            batch_size=args.batch_size,
            devices=args.devices,
            max_pixels=args.max_pixels,
            progress=not args.quiet,
        )
        one_view(predictor, args.size, args.square)
    except (OSError, ValueError) as err:
        report(f"error: {err}")
        return None
    return predictor
