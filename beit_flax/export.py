"""Deployment artifacts that need no Python model code: a serialized StableHLO module (`jax.export`) or an ONNX file.

Both hold one function, the model's `apply` with the weights baked in as constants:

    images (B, H, W, 3) float32, normalised as the family's preprocessing does  ->  depth (B, H, W) float32
    ((x - 0.5) / 0.5 for MiDaS and ZoeDepth; ImageNet mean / std for Depth Anything)

in the model family's units (relative inverse depth for MiDaS, meters for ZoeDepth: `DepthOutput.units`). H and W
are fixed per export, multiples of the family's `input_multiple` (MiDaS 16, ZoeDepth 32); B is dynamic unless `batch`
is given. The graph is the model as traced by JAX with the XLA attention (no cuDNN custom call), so every model of
this project exports the same way. The host pre- and post-processing (resize, padding, flip) is not in the graph.

- StableHLO: `jax.export` bytes lowered for each of `platforms`; `jax.export.deserialize(data).call(images)` runs
  them with nothing but jax installed. jax's compatibility window: jax releases up to 6 months newer than the writer
  load them (backward compatibility); older ones only within about a month (forward compatibility).
- ONNX (opset `ONNX_OPSET`, standard ops only): the same traced program lowered primitive by primitive by
  `jax2onnx` (pyproject's `[onnx]` extra; Python >= 3.11). Its Flax-module shortcuts are switched
  off: it lowers the plain jaxpr, exactly what `jax.jit` runs (its linen ConvTranspose shortcut refuses the
  `transpose_kernel=True` that DPT's reassemble uses). That graph is then rewritten into the standard ops runtimes
  fuse (`beit_flax.onnx_rewrite`: MatMul, LayerNormalization, Softmax, Resize, channels-first convolutions; outputs
  within float32 rounding), which made BEiT-B 384 in onnxruntime twice as fast. 16-bit ONNX is not offered: see
  `run_export`.

16-bit exports (`dtype="bfloat16"` / `"float16"`) store the weights in that dtype (half the file) and compute as
`DPT(dtype=...)` does; input and output stay float32.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.arguments import EXIT_CANNOT_WRITE, one_line, positive_int, weights_help
from beit_flax.files import NoSpaceError, atomic_write_bytes, check_outputs
from beit_flax.models import registry
from beit_flax.models.precision import check_dtype
from beit_flax.transforms import DEFAULT_MAX_PIXELS, check_net_input

FORMATS = ("onnx", "stablehlo")
PLATFORMS = ("cpu", "cuda", "tpu")
ONNX_OPSET = 17  # onnxruntime >= 1.12, TensorRT >= 8.5; what jax2onnx emits for this model needs nothing newer
BATCH_DIM = "B"  # the name of the dynamic batch dimension in both formats


class ExportSummary(NamedTuple):
    format: str
    size_hw: tuple[int, int]
    batch: int | None  # None: dynamic
    dtype: str
    nbytes: int
    seconds: float

    def line(self, out: str | os.PathLike) -> str:
        batch = "dynamic" if self.batch is None else str(self.batch)
        return (
            f"{out}: {self.format}, {self.size_hw[0]}x{self.size_hw[1]}, batch {batch}, {self.dtype}, "
            f"{self.nbytes / 2**20:.1f} MiB in {self.seconds:.1f} s"
        )


def serving_function(model: nn.Module, params: Any) -> Callable[[jax.Array], jax.Array]:
    """images (B, H, W, 3) float32 -> (B, H, W) float32, `params` baked in (cast to the compute dtype if 16-bit)."""
    dtype = check_dtype(model.dtype)
    # the XLA attention: a cuDNN custom call would tie the program to NVIDIA GPUs (and cannot become ONNX)
    model = dataclasses.replace(model, attention="xla")
    # numpy, not device arrays: tracing captures them as the program's constants, and this is no copy for float32
    cast = lambda p: np.asarray(p, dtype if jnp.issubdtype(np.asarray(p).dtype, jnp.floating) else None)
    params = jax.tree.map(cast, params)
    return lambda images: model.apply({"params": params}, images.astype(jnp.float32)).astype(jnp.float32)


def _check_size(model: nn.Module, size_hw: tuple[int, int], batch: int | None) -> None:
    p = registry.of_model(model).input_multiple(model.config)
    if len(size_hw) != 2 or any(s < p or s % p for s in size_hw):
        raise ValueError(f"size must be H x W, positive multiples of {p} (this model's input multiple); got {size_hw}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive or None (dynamic), got {batch}")


def export_stablehlo(
    model: nn.Module,
    params: Any,
    size_hw: tuple[int, int],
    *,
    batch: int | None = None,
    platforms: Sequence[str] = PLATFORMS,
) -> bytearray:
    """Serialized `jax.export.Exported` of `serving_function` for (batch or dynamic B, H, W, 3) float32 inputs."""
    _check_size(model, size_hw, batch)
    unknown = set(platforms) - set(PLATFORMS)
    if not platforms or unknown:
        raise ValueError(f"platforms must be some of {PLATFORMS}, got {tuple(platforms)}")
    b = jax.export.symbolic_shape(BATCH_DIM)[0] if batch is None else batch
    spec = jax.ShapeDtypeStruct((b, *size_hw, 3), jnp.float32)
    exported = jax.export.export(jax.jit(serving_function(model, params)), platforms=tuple(platforms))(spec)
    return exported.serialize()  # a bytearray: a copy of BEiT-L's 1.3 GB fewer than bytes()


@contextlib.contextmanager
def _plain_jax_tracing() -> Iterator[None]:
    """jax2onnx traces under its plugins' monkey patches (flax.linen / nnx modules, jnp functions swapped for its own
    primitives); without them it traces plain JAX and lowers the primitives `jax.jit` would run."""
    from jax2onnx.converter import conversion_api
    from jax2onnx.plugins.plugin_system import import_all_plugins

    @contextlib.contextmanager
    def primitives_only() -> Iterator[None]:
        import_all_plugins()  # the primitive lowerings; no patches
        yield

    original = conversion_api._activate_plugin_worlds
    conversion_api._activate_plugin_worlds = primitives_only
    try:
        yield
    finally:
        conversion_api._activate_plugin_worlds = original


def export_onnx(
    model: nn.Module,
    params: Any,
    size_hw: tuple[int, int],
    *,
    batch: int | None = None,
    opset: int = ONNX_OPSET,
    rewrite: bool = True,
) -> bytes:
    """Serialized ONNX ModelProto of `serving_function`: input "images" (B, H, W, 3), output "depth" (B, H, W),
    both float32; checked with `onnx.checker`. rewrite=False: the graph as jax2onnx wrote it (slower to run)."""
    import logging

    import onnx
    import onnx_ir as ir

    try:
        import jax2onnx
    except ImportError:
        raise ImportError('ONNX export needs jax2onnx (Python >= 3.11): pip install -e ".[onnx]"') from None

    _check_size(model, size_hw, batch)
    # one graph: the chunked attention's lax.map would become an ONNX Loop, slow in onnxruntime
    model = dataclasses.replace(model, query_chunk=None)
    spec = (BATCH_DIM if batch is None else batch, *size_hw, 3)
    # jax2onnx logs every optional example plugin it cannot import, onnx_ir every shape value it leaves untyped,
    # onnxscript every node it does not fold
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with _plain_jax_tracing():
            graph = jax2onnx.to_onnx(
                serving_function(model, params),
                [spec],
                opset=opset,
                return_mode="ir",
                model_name="beit_flax_dpt",
                input_names=["images"],
                output_names=["depth"],
            )
        if rewrite:
            from beit_flax.onnx_rewrite import optimize

            optimize(graph)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    data = ir.to_proto(graph).SerializeToString()
    del graph  # BEiT-L's weights are 1.4 GB: one copy fewer at the peak
    onnx.checker.check_model(data)  # bytes: checked as they are, not serialized once more
    return data


def export(
    model: nn.Module,
    params: Any,
    fmt: str,
    size_hw: tuple[int, int],
    out: str | os.PathLike,
    *,
    batch: int | None = None,
    platforms: Sequence[str] = PLATFORMS,
) -> ExportSummary:
    """Export to `out` (written atomically, after `files.check_outputs`); the compute dtype is `model.dtype`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_outputs([out], make_folders=True)  # a missing folder is made, as predict's --out
    start = time.perf_counter()
    if fmt == "onnx":
        data = export_onnx(model, params, size_hw, batch=batch)
    else:
        data = export_stablehlo(model, params, size_hw, batch=batch, platforms=platforms)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return ExportSummary(
        fmt, tuple(size_hw), batch, str(check_dtype(model.dtype)), len(data), time.perf_counter() - start
    )


def export_weights(
    weights: str | os.PathLike,
    fmt: str,
    size_hw: tuple[int, int],
    out: str | os.PathLike,
    *,
    batch: int | None = None,
    dtype: str = "float32",
    platforms: Sequence[str] = PLATFORMS,
) -> ExportSummary:
    """`export` of the model `weights` names: anything `beit_flax.load` takes (a .msgpack, a checkpoint, a known name,
    a hub repo id: `hub.resolve`)."""
    from beit_flax.hub.resolve import resolve
    from beit_flax.weights import load

    check_outputs([out], [weights], make_folders=True)  # before a download or a conversion
    path = resolve(weights)
    check_outputs([out], [weights, path], make_folders=True)  # nor the converted file in the cache
    model, params = load(path, dtype=dtype)
    return export(model, params, fmt, size_hw, out, batch=batch, platforms=platforms)


# --- `beit-depth export` ---------------------------------------------------------------------------------------------


def size_arg(text: str) -> tuple[int, int]:
    """'384' -> (384, 384); '384x512' -> (384, 512) (H x W); the patch-size rule is checked on export."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size must be N or HxW (positive integers), got {text!r}")
    return int(parts[0]), int(parts[-1])


def platforms_arg(text: str) -> tuple[str, ...]:
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    if not platforms or set(platforms) - set(PLATFORMS):
        raise argparse.ArgumentTypeError(f"platforms must be a comma-separated subset of {','.join(PLATFORMS)}")
    return platforms


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from beit_flax.models.precision import COMPUTE_DTYPES

    parser = sub.add_parser(
        "export",
        help="weights -> an ONNX file or serialized StableHLO, weights baked in",
        description="One function, weights baked in: images (B, H, W, 3) float32, normalised as the model's "
        "preprocessing does ((x - 0.5) / 0.5; Depth Anything: ImageNet mean / std) -> "
        "(B, H, W) float32 depth. H and W are fixed; B is dynamic unless --batch is given.",
    )
    parser.add_argument("--weights", required=True, metavar="W", help=weights_help())
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--size", required=True, type=size_arg, metavar="HxW", help="network input (or N: N x N)")
    parser.add_argument("--batch", type=positive_int, metavar="B", help="a fixed batch size (default: dynamic)")
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="the largest network input H x W, as predict's (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=COMPUTE_DTYPES,
        help="compute dtype; 16-bit also stores the weights in 16 bits (default: %(default)s; ONNX: float32 only)",
    )
    parser.add_argument(
        "--platforms",
        type=platforms_arg,
        default=PLATFORMS,
        metavar="P,...",
        help=f"StableHLO: the platforms to lower for (default: {','.join(PLATFORMS)})",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the file to write (folders created)")


def run_export(args: argparse.Namespace) -> int:
    """0 after printing the summary line; 2 after reporting bad arguments, weights or output path; 3 when the
    output does not fit on its disk."""
    import sys

    try:
        # jax2onnx 0.17 types a weak-typed scalar (the attention scale) float32 inside a float16 graph, which
        # onnxruntime refuses (Mul of float16 and float); ONNX's Conv has no bfloat16
        if args.fmt == "onnx" and args.dtype != "float32":
            raise ValueError(f"ONNX exports are float32 only (got --dtype {args.dtype}); StableHLO takes 16-bit")
        check_net_input(args.size, args.max_pixels)  # the bound predict has: no artifact for a gigapixel input
        summary = export_weights(
            args.weights, args.fmt, args.size, args.out, batch=args.batch, dtype=args.dtype, platforms=args.platforms
        )
    except NoSpaceError as err:  # the output named, nothing of it left
        print(f"beit-depth: error: {one_line(err)}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    except (ImportError, OSError, ValueError) as err:  # OutputError, InputError, bad weights files, no jax2onnx
        print(f"beit-depth: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"beit-depth: wrote {summary.line(args.out)}")
    return 0
