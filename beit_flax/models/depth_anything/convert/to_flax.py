"""Depth Anything checkpoint -> (DepthAnythingConfig, beit-flax parameter tree), every tensor accounted for.

The architecture comes from the shapes, except what no tensor holds, which comes from what the source says, in this
order, and the summary line names the source: `max_depth` (metric or relative: a metric file has exactly a relative
one's tensors) from the caller (`convert_weights --max-depth`), transformers' config.json (`depth_estimation_type`,
`max_depth`) or the release file name (`..._metric_hypersim_...`: 20 m, `..._metric_vkitti_...`: 80 m), else
relative; the tapped blocks from config.json (`out_indices`), V1's file name (`depth_anything_vit?14`) or hub
config.json (`{"encoder": ...}`: the last four blocks), else V2's taps for the depth (12: 2, 5, 8, 11; 24: 4, 11, 17,
23; 40: 9, 19, 29, 39; any other depth: the last four); the head count from config.json, else width / 64 (DINOv2's).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from beit_flax.convert.checkpoint import Checkpoint, ConversionError
from beit_flax.convert.rules import Converted, plan_tensors, read_planned
from beit_flax.models.depth_anything.config import (
    ENCODERS,
    METRIC_MAX_DEPTH,
    PATCH_SIZE,
    PRESETS,
    DepthAnythingConfig,
)
from beit_flax.models.depth_anything.convert.keys import DROPPED, LAYOUTS, MARKERS, torch_name
from beit_flax.models.depth_anything.params import param_shapes

DESCRIPTION = (
    "a Depth Anything V1 / V2 release (.pth) or a transformers Depth Anything checkpoint (depth-anything/*-hf)"
)
HEAD_SIZE = 64  # DINOv2's attention head size in every release (ViT-S 6 x 64 ... ViT-G 24 x 64)
_V2_TAPS = {depth: taps for _, depth, *_, taps in ENCODERS.values()}  # 12 (S and B), 24 (L), 40 (G)


def detect_layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """ "release", "hf-v4" or "hf-v5" by a name only that layout has, or None."""
    return next((layout for layout, names in MARKERS.items() if all(name in shapes for name in names)), None)


def _dim(shapes: dict, layout: str, flax_path: str, rank: int, axis: int, source: str) -> int:
    key = torch_name(layout, flax_path).format(i=0)
    if key not in shapes:
        raise ConversionError(f"{source}: missing key {key}")
    if len(shapes[key]) != rank:
        raise ConversionError(f"{source}: {key} has shape {shapes[key]}, not {rank} dimensions")
    return shapes[key][axis]


def _hf_backbone(hf_config: dict | None, source: str) -> dict[str, Any]:
    backbone = (hf_config or {}).get("backbone_config") or {}
    if not isinstance(backbone, dict):
        raise ConversionError(f"{source}: config.json's backbone_config is not an object")
    return backbone


def _max_depth(checkpoint: Checkpoint, max_depth: float | None) -> tuple[float | None, str]:
    """(max_depth or None, where that came from)."""
    if max_depth is not None:
        return float(max_depth), f"metric, max depth {max_depth:g} m (--max-depth)"
    hf = checkpoint.hf_config or {}
    if "depth_estimation_type" in hf:
        kind, value = hf.get("depth_estimation_type"), hf.get("max_depth")
        if kind == "metric":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConversionError(f"{checkpoint.path}: config.json says metric with max_depth {value!r}")
            return float(value), f"metric, max depth {value:g} m (config.json)"
        if kind == "relative":
            return None, "relative (config.json)"
        raise ConversionError(f"{checkpoint.path}: config.json's depth_estimation_type {kind!r} is not known")
    name = Path(str(checkpoint.path)).name.lower()
    for dataset, meters in METRIC_MAX_DEPTH.items():
        if f"metric_{dataset}" in name:
            return meters, f"metric, max depth {meters:g} m (file name {name})"
    return None, "relative (nothing says metric; --max-depth M converts a metric file)"


def _taps(checkpoint: Checkpoint, depth: int) -> tuple[tuple[int, ...], str]:
    """(the four tapped blocks, where they came from)."""
    source = str(checkpoint.path)
    backbone = _hf_backbone(checkpoint.hf_config, source)
    indices = backbone.get("out_indices")
    if indices is None and backbone.get("out_features"):
        names = backbone["out_features"]
        if isinstance(names, list) and all(isinstance(n, str) and n.removeprefix("stage").isdigit() for n in names):
            indices = [int(n.removeprefix("stage")) for n in names]
    if indices is not None:  # index 0 is the embedding output
        if not (isinstance(indices, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices)):
            raise ConversionError(f"{source}: config.json's out_indices {indices!r} is not a list of ints")
        return tuple(i - 1 for i in indices), "taps from config.json"
    last_four = tuple(range(depth - 4, depth))
    name = Path(source).name.lower()
    if re.search(r"depth_anything_vit[sblg]14", name) or "encoder" in (checkpoint.hf_config or {}):
        return last_four, "V1 (the last four blocks)"
    if depth in _V2_TAPS:
        return _V2_TAPS[depth], "V2 taps"
    return last_four, "the last four blocks (no release has this depth)"


def infer_config(checkpoint: Checkpoint, layout: str, max_depth: float | None) -> tuple[DepthAnythingConfig, str]:
    """The architecture from the shapes and what the source says (module doc); (config, what was read where)."""
    shapes, source = checkpoint.shapes, str(checkpoint.path)
    dim = lambda path, rank, axis: _dim(shapes, layout, path, rank, axis, source)
    norm = torch_name(layout, "encoder/block_{i}/norm1/scale")
    pattern = re.escape(norm).replace(r"\{i\}", r"(?P<i>\d+)")
    blocks = sorted({int(m["i"]) for key in shapes if (m := re.fullmatch(pattern, key))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"{source}: encoder blocks are not numbered 0..N-1 (found {blocks[:8]}...)")
    width = dim("patch_embed/cls_token", 3, -1)
    positions = dim("patch_embed/pos_embed", 3, 1) - 1
    grid = math.isqrt(max(positions, 0))
    if grid < 1 or grid * grid != positions:
        raise ConversionError(f"{source}: the position embedding has {positions} patch positions, not a square grid")
    swiglu = any(re.fullmatch(r".*\.mlp\.(w12|weights_in|gate_proj)\.weight", key) for key in shapes)
    ffn_channels = (
        dim("encoder/block_{i}/mlp/gate/kernel", 2, 0) if swiglu else dim("encoder/block_{i}/mlp/fc1/kernel", 2, 0)
    )
    if swiglu and layout != "hf-v5":
        ffn_channels //= 2  # the fused [gate; up]
    backbone = _hf_backbone(checkpoint.hf_config, source)
    heads = backbone.get("num_attention_heads", max(width // HEAD_SIZE, 1))
    meters, depth_note = _max_depth(checkpoint, max_depth)
    taps, taps_note = _taps(checkpoint, len(blocks))
    eps = backbone.get("layer_norm_eps", 1e-6)
    try:
        config = DepthAnythingConfig(
            width=width,
            depth=len(blocks),
            num_heads=heads,
            pos_grid=grid,
            ffn="swiglu" if swiglu else "mlp",
            ffn_channels=ffn_channels,
            taps=taps,
            features=dim("reassemble_1/to_fusion/kernel", 4, 0),
            out_channels=tuple(dim(f"reassemble_{s}/project/kernel", 4, 0) for s in (1, 2, 3, 4)),
            use_clstoken=torch_name(layout, "reassemble_1/readout/kernel") in shapes,
            max_depth=meters,
            layer_norm_eps=eps,
            net_size=grid * PATCH_SIZE,  # the size it was trained at: 518 for every release
        )
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{source}: {err}") from None
    return config, f"{depth_note}; {taps_note}"


def model_name(config: DepthAnythingConfig) -> str:
    for name, preset in PRESETS.items():
        if preset.replace(layer_norm_eps=config.layer_norm_eps) == config:
            return name
    kind = "metric" if config.metric else "relative"
    return f"custom Depth Anything ({kind}, width {config.width}, depth {config.depth}, taps {list(config.taps)})"


def to_flax(checkpoint: Checkpoint, *, max_depth: float | None = None) -> Converted:
    """Map every tensor of `checkpoint` to the flax tree; unmapped, misshapen or missing tensors are errors listing
    the keys, found from the names and shapes before any tensor is read. max_depth: the file is a metric model
    with this range in meters (overrides config.json and the file name)."""
    layout = detect_layout(checkpoint.shapes)
    if layout is None:
        raise ConversionError(f"{checkpoint.path}: not {DESCRIPTION}")
    config, notes = infer_config(checkpoint, layout, max_depth)
    what = f"the config ({config.depth} blocks, ffn {config.ffn})"
    expected = param_shapes(config)
    plan, dropped = plan_tensors(checkpoint, LAYOUTS[layout], DROPPED[layout], expected, config.depth, what)
    return Converted(config, read_planned(checkpoint, plan), layout, f"{model_name(config)}, {notes}", dropped)
