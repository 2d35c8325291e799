"""`convert_weights CKPT OUT.msgpack`: a MiDaS v3.1 BEiT or transformers DPT-BEiT checkpoint -> beit-flax weights."""

from __future__ import annotations

import argparse
import sys
import time

EXIT_BAD_INPUT = 2
EXIT_CANNOT_WRITE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights",
        description=(
            "Convert a MiDaS v3.1 BEiT-DPT checkpoint (dpt_beit_large_512.pt, dpt_beit_large_384.pt, "
            "dpt_beit_base_384.pt) or a transformers DPT-BEiT checkpoint (model.safetensors / pytorch_model.bin, "
            "or the folder holding it and config.json) into a beit-flax .msgpack weights file."
        ),
        epilog=f"Exit status: 0 converted, {EXIT_BAD_INPUT} bad or unsupported input, {EXIT_CANNOT_WRITE} output not writable.",
    )
    parser.add_argument("checkpoint", help="MiDaS .pt, transformers .safetensors/.bin, or a folder with config.json")
    parser.add_argument("output", help="where to write the .msgpack (written atomically)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        from beit_flax.weights import save
        from convert import ConversionError, open_checkpoint, torch_to_flax

        try:
            converted = torch_to_flax(open_checkpoint(args.checkpoint))
        except ConversionError:
            raise
        except Exception as err:  # unreadable, truncated or hostile files surface as many exception types
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise ConversionError(
                f"{args.checkpoint}: cannot read checkpoint ({type(err).__name__}: {first_line})"
            ) from err
        try:
            save(args.output, converted.config, converted.params)
        except OSError as err:
            print(f"convert_weights: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
    except ValueError as err:
        if args.debug:
            raise
        print(f"convert_weights: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import jax

    count = sum(leaf.size for leaf in jax.tree.leaves(converted.params))
    print(
        f"converted {converted.model_name} ({converted.layout} layout) -> {args.output}: "
        f"{count / 1e6:.1f}M parameters, {len(converted.dropped)} unused tensors dropped, "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
