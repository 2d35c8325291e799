"""`convert_weights CKPT OUT.msgpack`: a MiDaS v3.1 BEiT, ZoeDepth (ZoeD_M12_N / _K / _NK) or transformers DPT-BEiT /
ZoeDepth checkpoint -> beit-flax weights; `export_weights` the other way."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from beit_flax.files import OutputError, check_input, check_outputs, interruptible

EXIT_BAD_INPUT = 2
EXIT_CANNOT_WRITE = 3  # also: an output that is not a regular file, or is one of the inputs (files.check_outputs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights",
        description=(
            "Convert a MiDaS v3.1 BEiT-DPT checkpoint (dpt_beit_large_512.pt, dpt_beit_large_384.pt, "
            "dpt_beit_base_384.pt), a ZoeDepth release (ZoeD_M12_N.pt, ZoeD_M12_K.pt, ZoeD_M12_NK.pt) or a "
            "transformers DPT-BEiT / ZoeDepth checkpoint (model.safetensors / pytorch_model.bin, or the folder "
            "holding it and config.json) into a beit-flax .msgpack weights file."
        ),
        epilog=f"Exit status: 0 converted, {EXIT_BAD_INPUT} bad or unsupported input, {EXIT_CANNOT_WRITE} output not "
        "writable or refused (not a regular file, or one of the inputs), 130 / 143 interrupted.",
    )
    parser.add_argument("checkpoint", help="MiDaS .pt, transformers .safetensors/.bin, or a folder with config.json")
    parser.add_argument("output", help="where to write the .msgpack (written atomically)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def convert(checkpoint: str, output: str) -> str:
    """Convert and write atomically; returns the summary line. Raises ConversionError (bad input) or OSError."""
    import jax

    from beit_flax.convert import ConversionError, open_checkpoint, torch_to_flax
    from beit_flax.convert.zoedepth_torch_to_flax import is_zoedepth, zoedepth_torch_to_flax
    from beit_flax.weights import save

    start = time.perf_counter()
    try:
        opened = open_checkpoint(checkpoint)
        converted = (zoedepth_torch_to_flax if is_zoedepth(opened.shapes) else torch_to_flax)(opened)
    except ConversionError:
        raise
    except Exception as err:  # unreadable, truncated or hostile files surface as many exception types
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise ConversionError(f"{checkpoint}: cannot read checkpoint ({type(err).__name__}: {first_line})") from err
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
        return convert(args.checkpoint, args.output)

    return run("convert_weights", work, args.output, debug=args.debug)


def run(prog: str, work: Callable[[], str], output: str, *, debug: bool) -> int:
    """Print `work()`'s summary line and return 0, or print one error line and return the exit status: OSError
    (OutputError included) -> EXIT_CANNOT_WRITE, ValueError (ConversionError, a bad weights file, params that do not
    fit) -> EXIT_BAD_INPUT, Ctrl-C / SIGTERM -> 130 / 143 (`files.interruptible`). With `debug`, errors propagate
    with their traceback."""

    def attempt() -> int:
        try:
            print(work())
        except OutputError as err:
            if debug:
                raise
            print(f"{prog}: cannot write {err}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
        except OSError as err:
            if debug:
                raise
            print(f"{prog}: cannot write {output}: {err.strerror or err}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
        except ValueError as err:
            if debug:
                raise
            print(f"{prog}: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0

    return interruptible(prog, attempt)


EXPORT_LAYOUTS = {"midas": "midas", "hf": "hf-v4", "hf-v5": "hf-v5"}


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_weights",
        description="Write beit-flax weights back as a PyTorch state dict: the release layout (loads into the "
        "original MiDaS code; a ZoeDepth as {'model': state_dict}, as ZoeDepth's own files) or transformers' "
        "DPTForDepthEstimation / ZoeDepthForDepthEstimation names.",
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
        help="midas: the release names (MiDaS v3.1, or ZoeDepth's for a ZoeDepth file); hf: "
        "transformers hub (v4) names; hf-v5: transformers 5 module names (default: %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def export_outputs(output: str, layout: str) -> list[Path]:
    """The files `export` writes for OUT: OUT itself, or OUT/config.json + OUT/model.safetensors for a transformers
    folder (an OUT without a suffix, --format hf / hf-v5). ValueError for a name that is neither."""
    out = Path(output)
    if out.suffix == "" and layout != "midas":
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        return [out / "config.json", out / "model.safetensors"]
    if out.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{output}: use a .pt, .pth, .bin or .safetensors file name (or a folder with --format hf)")
    return [out]


def export(weights: str, output: str, layout: str) -> str:
    """Write the state dict for `layout`; returns the summary line. Raises ValueError (bad input) or OSError."""
    outputs = export_outputs(output, layout)
    check_input(weights)  # a missing file or a folder is a bad input (2), not an output problem
    check_outputs(outputs, [weights], make_folders=True)  # before the work; none of them the input

    import torch
    from safetensors.torch import save as safetensors_bytes

    from beit_flax.convert.flax_to_torch import flax_to_torch
    from beit_flax.convert.hf_config import hf_config_dict
    from beit_flax.convert.zoedepth_flax_to_torch import zoedepth_flax_to_torch
    from beit_flax.convert.zoedepth_hf_config import zoedepth_hf_config_dict
    from beit_flax.files import atomic_write, atomic_write_bytes
    from beit_flax.models.zoedepth.config import ZoeDepthConfig
    from beit_flax.weights import load

    start = time.perf_counter()
    model, params = load(weights)
    zoedepth = isinstance(model.config, ZoeDepthConfig)
    if zoedepth:  # the release names are ZoeDepth's; transformers' config.json first: it refuses what it cannot build
        hf_config = zoedepth_hf_config_dict(model.config) if len(outputs) == 2 else None
        arrays = zoedepth_flax_to_torch(params, model.config, "release" if layout == "midas" else layout)
    else:
        hf_config = hf_config_dict(model.config) if len(outputs) == 2 else None
        arrays = flax_to_torch(params, model.config, layout)
    state = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if hf_config is not None:  # a transformers folder; its config.json needs no transformers
        outputs[0].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(outputs[0], (json.dumps(hf_config, indent=2) + "\n").encode())
    out = outputs[-1]
    if out.suffix == ".safetensors":
        atomic_write_bytes(out, safetensors_bytes(state, metadata={"format": "pt"}))
    else:
        import io

        buffer = io.BytesIO()
        # ZoeDepth's release files are {"model": state_dict} (`zoedepth/models/model_io.py` reads either form)
        torch.save({"model": state} if zoedepth and layout == "midas" else state, buffer)
        atomic_write(out, [buffer.getbuffer()])
    return f"exported {len(state)} tensors ({layout} layout) -> {out}: {time.perf_counter() - start:.1f} s"


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    work = functools.partial(export, args.weights, args.output, EXPORT_LAYOUTS[args.format])
    return run("export_weights", work, args.output, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
