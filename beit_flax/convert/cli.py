"""`convert_weights CKPT OUT.msgpack`: a checkpoint of any model family (MiDaS v3.1 BEiT, ZoeDepth ZoeD_M12_N / _K /
_NK, Depth Anything V1 / V2, their transformers folders) -> beit-flax weights; `export_weights` the other way. The
family's own converter does the work (`models.registry`)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beit_flax.arguments import EXIT_CANNOT_WRITE, one_line  # 3: also an output that is refused
from beit_flax.files import OutputError, check_input, check_outputs
from beit_flax.interrupts import interruptible

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights",
        description=(
            "Convert a MiDaS v3.1 BEiT-DPT checkpoint (dpt_beit_large_512.pt, dpt_beit_large_384.pt, "
            "dpt_beit_base_384.pt), a ZoeDepth release (ZoeD_M12_N.pt, ZoeD_M12_K.pt, ZoeD_M12_NK.pt), a Depth "
            "Anything V2 / V1 release (depth_anything_v2_vitl.pth, ...) or a transformers DPT-BEiT / ZoeDepth / "
            "Depth Anything checkpoint (model.safetensors / pytorch_model.bin, or the folder "
            "holding it and config.json) into a beit-flax .msgpack weights file."
        ),
        epilog=f"Exit status: 0 converted, {EXIT_BAD_INPUT} bad or unsupported input, {EXIT_CANNOT_WRITE} output not "
        "writable or refused (not a regular file, or one of the inputs), 130 / 143 interrupted.",
    )
    parser.add_argument("checkpoint", help="MiDaS .pt, transformers .safetensors/.bin, or a folder with config.json")
    parser.add_argument("output", help="where to write the .msgpack (written atomically)")
    parser.add_argument(
        "--max-depth",
        type=float,
        metavar="M",
        help="the checkpoint is a metric model with outputs up to M meters, for files that do not say so themselves "
        "(Depth Anything: a metric .pth has a relative one's tensors; its config.json or release file name "
        "say it otherwise)",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def convert(
    checkpoint: str,
    output: str,
    max_depth: float | None = None,
    check: Callable[[Any, Any], None] | None = None,
) -> str:
    """Convert and write atomically; returns the summary line. `check(config, params)`, run before anything is
    written, may refuse the result (ValueError: a known name's promise, `hub.sources.Known.check`). Raises
    ConversionError (bad input), ValueError (refused by `check`) or OSError."""
    import jax

    from beit_flax.convert import ConversionError, open_checkpoint, torch_to_flax
    from beit_flax.weights import save

    start = time.perf_counter()
    try:
        converted = torch_to_flax(open_checkpoint(checkpoint), max_depth=max_depth)
    except ConversionError:
        raise
    except Exception as err:  # unreadable, truncated or hostile files surface as many exception types
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise ConversionError(f"{checkpoint}: cannot read checkpoint ({type(err).__name__}: {first_line})") from err
    if check is not None:
        check(converted.config, converted.params)
    save(output, converted.config, converted.params)
    count = sum(leaf.size for leaf in jax.tree.leaves(converted.params))
    return (
        f"converted {converted.model_name} ({converted.layout} layout) -> {output}: {count / 1e6:.1f}M parameters, "
        f"{len(converted.dropped)} unused tensors dropped, {time.perf_counter() - start:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> str:
        from beit_flax.convert.checkpoint import checkpoint_files

        # before minutes of work: an output we may write, and none of the files the conversion reads
        check_outputs([args.output], checkpoint_files(args.checkpoint))
        return convert(args.checkpoint, args.output, args.max_depth)

    return run("convert_weights", work, args.output, debug=args.debug)


def run(prog: str, work: Callable[[], str], output: str, *, debug: bool) -> int:
    """Print `work()`'s summary line and return 0, or print one error line and return the exit status: OSError
    (OutputError included) -> EXIT_CANNOT_WRITE, ValueError (ConversionError, a bad weights file, params that do not
    fit) -> EXIT_BAD_INPUT, Ctrl-C / SIGTERM -> 130 / 143 (`interrupts.interruptible`). With `debug`, errors propagate
    with their traceback."""

    def attempt() -> int:
        try:
            print(work())
        except OutputError as err:
            if debug:
                raise
            print(f"{prog}: cannot write {one_line(err)}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
        except OSError as err:
            if debug:
                raise
            print(f"{prog}: cannot write {one_line(output)}: {one_line(err.strerror or err)}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
        except ValueError as err:
            if debug:
                raise
            print(f"{prog}: {one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0

    return interruptible(prog, attempt)


# --format -> the index into the family's `Checkpoints.layouts` (its release layout first, then transformers' v4, v5)
EXPORT_LAYOUTS = {"midas": 0, "release": 0, "hf": 1, "hf-v5": 2}


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_weights",
        description="Write beit-flax weights back as a PyTorch state dict: the model family's release layout (loads "
        "into the original code: MiDaS; a ZoeDepth as {'model': state_dict}, as ZoeDepth's own files) or "
        "transformers' names (DPTForDepthEstimation, ZoeDepthForDepthEstimation).",
        epilog="OUT ending in .safetensors is written with safetensors, .pt/.pth/.bin with torch.save; with --format "
        "hf/hf-v5 an OUT without a suffix becomes a folder holding config.json + model.safetensors "
        "(DPTForDepthEstimation / ZoeDepthForDepthEstimation.from_pretrained(OUT)). "
        f"Exit status: 0 written, {EXIT_BAD_INPUT} bad input, {EXIT_CANNOT_WRITE} output not writable or refused, "
        "130 / 143 interrupted.",
    )
    parser.add_argument("weights", help="a beit-flax .msgpack (convert_weights, beit_flax.save)")
    parser.add_argument("output", help="OUT.pt / OUT.safetensors / OUT folder")
    parser.add_argument(
        "--format",
        choices=sorted(EXPORT_LAYOUTS),
        default="midas",
        help="release (or midas): the family's release names (MiDaS v3.1's, ZoeDepth's for a ZoeDepth file); hf: "
        "transformers hub (v4) names; hf-v5: transformers 5 module names (default: %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def export_outputs(output: str, layout: int) -> list[Path]:
    """The files `export` writes for OUT: OUT itself, or OUT/config.json + OUT/model.safetensors for a transformers
    folder (an OUT without a suffix, --format hf / hf-v5). ValueError for a name that is neither."""
    out = Path(output)
    if out.suffix == "" and layout != EXPORT_LAYOUTS["release"]:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        return [out / "config.json", out / "model.safetensors"]
    if out.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{output}: use a .pt, .pth, .bin or .safetensors file name (or a folder with --format hf)")
    return [out]


def export(weights: str, output: str, layout: int) -> str:
    """Write the state dict in the family's `layouts[layout]`; returns the summary line. Raises ValueError (bad
    input) or OSError."""
    outputs = export_outputs(output, layout)
    check_input(weights)  # a missing file or a folder is a bad input (2), not an output problem
    check_outputs(outputs, [weights], make_folders=True)  # before the work; none of them the input

    import torch
    from safetensors.torch import save as safetensors_bytes

    from beit_flax.files import atomic_write, atomic_write_bytes
    from beit_flax.models import registry
    from beit_flax.weights import load

    start = time.perf_counter()
    model, params = load(weights)
    family = registry.of_model(model)
    formats = family.checkpoints
    name = formats.layouts[layout] if layout < len(formats.layouts) else None
    if name is None or (len(outputs) == 2 and formats.hf_config is None):
        raise ValueError(f"{weights}: {family.title} has no {'transformers' if layout else 'release'} layout")
    # transformers' config.json first: it refuses what transformers cannot build
    hf_config = formats.hf_config(model.config) if len(outputs) == 2 else None
    arrays = formats.to_torch(params, model.config, name)
    state = {name: torch.from_numpy(array) for name, array in arrays.items()}
    out = outputs[-1]
    out.parent.mkdir(parents=True, exist_ok=True)  # as predict's --out: check_outputs allowed a folder to make
    if hf_config is not None:  # a transformers folder; its config.json needs no transformers
        atomic_write_bytes(outputs[0], (json.dumps(hf_config, indent=2) + "\n").encode())
    if out.suffix == ".safetensors":
        atomic_write_bytes(out, safetensors_bytes(state, metadata={"format": "pt"}))
    else:
        import io

        buffer = io.BytesIO()
        # some release files wrap the state dict (ZoeDepth's {"model": ...}; its loader reads either form)
        wrap = formats.release_key if layout == EXPORT_LAYOUTS["release"] else None
        torch.save({wrap: state} if wrap else state, buffer)
        atomic_write(out, [buffer.getbuffer()])
    return f"exported {len(state)} tensors ({name} layout) -> {out}: {time.perf_counter() - start:.1f} s"


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    work = functools.partial(export, args.weights, args.output, EXPORT_LAYOUTS[args.format])
    return run("export_weights", work, args.output, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
