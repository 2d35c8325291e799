"""PyTorch checkpoint -> (DPTConfig, beit-flax parameter tree), accounting for every tensor.

Order of work: layout from the names, config from the shapes (validated: bounds), then every tensor's name, dtype and
shape checked against the config's parameters, and only then the tensors read, one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from beit_flax.convert.checkpoint import Checkpoint, ConversionError
from beit_flax.convert.rules import Converted, plan_tensors, read_planned
from beit_flax.models.dpt.config import PRESETS, DPTConfig, default_hooks
from beit_flax.models.dpt.convert.keys import DROPPED, LAYOUTS, find_rule
from beit_flax.models.dpt.params import param_shapes

# A name that only one layout has, used to tell them apart.
_LAYOUT_MARKERS = {
    "midas": "pretrained.model.cls_token",
    "hf-v5": "backbone.beit.embeddings.cls_token",
    "hf-v4": "backbone.embeddings.cls_token",
}


# Other MiDaS / DPT architectures, recognised by a name only they have, so the error can say what the file is.
_OTHER_ARCHITECTURES = [
    ("DPT-Hybrid (ViT + ResNet-50)", r"(pretrained\.model|backbone)\.(patch_embed|embeddings)\.backbone\..*"),
    ("Swin / SwinV2 (MiDaS v3.1 Swin)", r"pretrained\.model\.layers\.\d+\.blocks\..*"),
    ("LeViT (MiDaS v3.1 LeViT)", r".*\.attention_biases"),
    ("Next-ViT (MiDaS v3.1 Next-ViT)", r"pretrained\.model\.(stem|features)\..*"),
    ("ViT (DPT-Large / DPT-Base, MiDaS v3.0)", r"pretrained\.model\.pos_embed|dpt\.embeddings\.position_embeddings"),
    ("MiDaS v2.x (ResNeXt / EfficientNet)", r"pretrained\.layer1\..*"),
]


DESCRIPTION = "a MiDaS v3.1 BEiT release (.pt) or a transformers DPT-BEiT checkpoint"


# transformers' backbones with an absolute position table (DINOv2: Depth Anything) share hf-v4's marker; BEiT has none
_ABSOLUTE_POSITIONS = "backbone.embeddings.position_embeddings"


def detect_layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The layout whose marker name the checkpoint has ("midas", "hf-v4", "hf-v5"), or None."""
    if _ABSOLUTE_POSITIONS in shapes:
        return None
    return next((layout for layout, marker in _LAYOUT_MARKERS.items() if marker in shapes), None)


def explain(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What an unsupported checkpoint is, when its names tell (another MiDaS / DPT architecture), else None."""
    for architecture, pattern in _OTHER_ARCHITECTURES:
        if any(re.fullmatch(pattern, key) for key in shapes):
            return (
                f"looks like a {architecture} checkpoint; of MiDaS v3.1 only the BEiT models (dpt_beit_large_512, "
                f"dpt_beit_large_384, dpt_beit_base_384) are supported"
            )
    return None


def _shape(shapes: dict[str, tuple[int, ...]], key: str, source: str, rank: int) -> tuple[int, ...]:
    """The shape of `key`, which must be there with `rank` dimensions."""
    if key not in shapes:
        raise ConversionError(f"{source}: missing key {key}")
    if len(shapes[key]) != rank:
        raise ConversionError(f"{source}: {key} has shape {shapes[key]}, not {rank} dimensions")
    return shapes[key]


def _hf_fields(hf_config: dict, config_file: str) -> dict[str, Any]:
    """The DPTConfig fields transformers' config.json states (hooks, layer_norm_eps), type-checked; the values
    themselves are checked by DPTConfig."""
    backbone = hf_config.get("backbone_config") or {}
    if not isinstance(backbone, dict):
        raise ConversionError(f"{config_file}: backbone_config is not an object")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    fields: dict[str, Any] = {}
    if backbone.get("out_indices"):  # index 0 is the embedding output
        indices = backbone["out_indices"]
        if not (isinstance(indices, list) and all(is_int(i) for i in indices)):
            raise ConversionError(f"{config_file}: backbone_config.out_indices {indices!r} is not a list of ints")
        fields["hooks"] = tuple(i - 1 for i in indices)
    elif backbone.get("out_features"):
        names = backbone["out_features"]
        if not (
            isinstance(names, list) and all(isinstance(n, str) and n.removeprefix("stage").isdigit() for n in names)
        ):
            raise ConversionError(f"{config_file}: backbone_config.out_features {names!r} is not a list of 'stageN'")
        fields["hooks"] = tuple(int(n.removeprefix("stage")) - 1 for n in names)
    if "layer_norm_eps" in backbone:  # transformers runs with what config.json says
        eps = backbone["layer_norm_eps"]
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool)):
            raise ConversionError(f"{config_file}: backbone_config.layer_norm_eps {eps!r} is not a number")
        fields["layer_norm_eps"] = float(eps)
    return fields


def infer_config(layout: str, shapes: dict[str, tuple[int, ...]], hf_config: dict | None, source: str) -> DPTConfig:
    """Read the architecture off the tensor shapes (and transformers' config.json where it says more).

    The names are looked up in the layout's key table, so each layout's naming lives in `keys.py` only.
    Every tensor read here must have the rank its module gives it; the config is validated (types and bounds) before
    anything else is done with it.
    """
    dim = lambda flax_path, rank, i: _shape(shapes, find_rule(layout, flax_path)[1].format(i=0), source, rank)[i]
    table_rule, table_name = find_rule(layout, "encoder/block_{i}/attn/relative_position/table")
    blocks = sorted({int(m["i"]) for key in shapes if (m := re.fullmatch(table_rule.torch_pattern, key))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"{source}: encoder blocks are not numbered 0..N-1 (found {blocks[:8]}...)")
    table_key = table_name.format(i=0)
    rows, heads = _shape(shapes, table_key, source, 2)
    side = (math.isqrt(rows - 3) + 1) // 2 if rows > 3 else 0
    if side < 1 or (2 * side - 1) ** 2 + 3 != rows:
        raise ConversionError(f"{source}: {table_key} has {rows} rows, not (2g-1)^2 + 3 for a square grid g")

    depth = len(blocks)
    config_file = str(Path(source).parent / "config.json")
    told = _hf_fields(hf_config or {}, config_file)
    fields = {"hooks": default_hooks(depth), "layer_norm_eps": 1e-6, **told}  # MiDaS / timm's unless told
    sizes = {
        "width": dim("patch_embed/cls_token", 3, -1),
        "reassemble_channels": tuple(dim(f"reassemble_{s}/project/kernel", 4, 0) for s in (1, 2, 3, 4)),
        "fusion_channels": dim("reassemble_1/to_fusion/kernel", 4, 0),
        "head_channels": dim("head/conv2/kernel", 4, 0),
    }
    try:
        return DPTConfig(depth=depth, num_heads=heads, train_grid=(side, side), net_size=16 * side, **sizes, **fields)
    except ValueError as err:
        raise ConversionError(f"{source}: {err}" + (f" (read with {config_file})" if told else "")) from None


def model_name(config: DPTConfig) -> str:
    for name, preset in PRESETS.items():
        if dataclasses.replace(preset, layer_norm_eps=config.layer_norm_eps) == config:
            return name
    return f"custom BEiT-DPT (width {config.width}, depth {config.depth}, grid {config.train_grid})"


def to_flax(checkpoint: Checkpoint) -> Converted:
    """Map every tensor of `checkpoint` to the flax tree; unmapped, misshapen or missing tensors are errors listing
    the keys, found from the names and shapes before any tensor is read."""
    source = str(checkpoint.path)
    layout = detect_layout(checkpoint.shapes)
    if layout is None:
        why = explain(checkpoint.shapes) or f"not {DESCRIPTION} (none of {sorted(_LAYOUT_MARKERS.values())} present)"
        raise ConversionError(f"{source}: {why}")
    config = infer_config(layout, checkpoint.shapes, checkpoint.hf_config, source)
    what = f"the config ({config.depth} blocks)"
    plan, dropped = plan_tensors(checkpoint, LAYOUTS[layout], DROPPED[layout], param_shapes(config), config.depth, what)
    return Converted(config, read_planned(checkpoint, plan), layout, model_name(config), dropped)
