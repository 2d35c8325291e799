"""PyTorch checkpoint -> (DPTConfig, beit-flax parameter tree), accounting for every tensor."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
from flax import traverse_util

from beit_flax.convert.checkpoint import Checkpoint, ConversionError
from beit_flax.convert.keys import DROPPED, LAYOUTS, find_rule
from beit_flax.models.dpt.config import PRESETS, DPTConfig, default_hooks

# A name that only one layout has, used to tell them apart.
_LAYOUT_MARKERS = {
    "midas": "pretrained.model.cls_token",
    "hf-v5": "backbone.beit.embeddings.cls_token",
    "hf-v4": "backbone.embeddings.cls_token",
}


@dataclasses.dataclass
class Converted:
    config: DPTConfig
    params: dict[str, Any]
    layout: str
    model_name: str
    dropped: list[str]


# Other MiDaS / DPT architectures, recognised by a name only they have, so the error can say what the file is.
_OTHER_ARCHITECTURES = [
    ("DPT-Hybrid (ViT + ResNet-50)", r"(pretrained\.model|backbone)\.(patch_embed|embeddings)\.backbone\..*"),
    ("Swin / SwinV2 (MiDaS v3.1 Swin)", r"pretrained\.model\.layers\.\d+\.blocks\..*"),
    ("LeViT (MiDaS v3.1 LeViT)", r".*\.attention_biases"),
    ("Next-ViT (MiDaS v3.1 Next-ViT)", r"pretrained\.model\.(stem|features)\..*"),
    ("ViT (DPT-Large / DPT-Base, MiDaS v3.0)", r"pretrained\.model\.pos_embed|dpt\.embeddings\.position_embeddings"),
    ("MiDaS v2.x (ResNeXt / EfficientNet)", r"pretrained\.layer1\..*"),
]


def detect_layout(shapes: dict[str, tuple[int, ...]], source: str) -> str:
    for layout, marker in _LAYOUT_MARKERS.items():
        if marker in shapes:
            return layout
    for architecture, pattern in _OTHER_ARCHITECTURES:
        if any(re.fullmatch(pattern, key) for key in shapes):
            raise ConversionError(
                f"{source}: looks like a {architecture} checkpoint; only the MiDaS v3.1 BEiT models "
                f"(dpt_beit_large_512, dpt_beit_large_384, dpt_beit_base_384) are supported"
            )
    sample = ", ".join(sorted(shapes)[:5]) or "none"
    raise ConversionError(
        f"{source}: not a MiDaS v3.1 BEiT or transformers DPT-BEiT checkpoint (none of "
        f"{sorted(_LAYOUT_MARKERS.values())} present; first keys: {sample})"
    )


def _shape(shapes: dict[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ConversionError(f"{source}: missing key {key}")
    return shapes[key]


def infer_config(layout: str, shapes: dict[str, tuple[int, ...]], hf_config: dict | None, source: str) -> DPTConfig:
    """Read the architecture off the tensor shapes (and transformers' config.json where it says more).

    The names are looked up in the layout's key table, so each layout's naming lives in `convert/keys.py` only.
    """
    shape = lambda flax_path: _shape(shapes, find_rule(layout, flax_path)[1].format(i=0), source)
    table_rule, table_name = find_rule(layout, "encoder/block_{i}/attn/relative_position/table")
    blocks = sorted({int(m["i"]) for key in shapes if (m := re.fullmatch(table_rule.torch_pattern, key))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"{source}: encoder blocks are not numbered 0..N-1 (found {blocks[:8]}...)")
    table_key = table_name.format(i=0)
    rows, heads = _shape(shapes, table_key, source)
    side = (math.isqrt(rows - 3) + 1) // 2
    if (2 * side - 1) ** 2 + 3 != rows:
        raise ConversionError(f"{source}: {table_key} has {rows} rows, not (2g-1)^2 + 3 for a square grid g")

    depth = len(blocks)
    hooks = default_hooks(depth)
    layer_norm_eps = 1e-6  # MiDaS / timm
    backbone = (hf_config or {}).get("backbone_config") or {}
    if backbone.get("out_indices"):
        hooks = tuple(int(i) - 1 for i in backbone["out_indices"])  # index 0 is the embedding output
    elif backbone.get("out_features"):
        hooks = tuple(int(name.removeprefix("stage")) - 1 for name in backbone["out_features"])
    if "layer_norm_eps" in backbone:
        layer_norm_eps = float(backbone["layer_norm_eps"])  # transformers runs with what config.json says

    width = shape("patch_embed/cls_token")[-1]
    reassemble_channels = tuple(shape(f"reassemble_{s}/project/kernel")[0] for s in (1, 2, 3, 4))
    fusion_channels, head_channels = shape("reassemble_1/to_fusion/kernel")[0], shape("head/conv2/kernel")[0]
    try:
        return DPTConfig(
            width=width,
            depth=depth,
            num_heads=heads,
            train_grid=(side, side),
            hooks=hooks,
            reassemble_channels=reassemble_channels,
            fusion_channels=fusion_channels,
            head_channels=head_channels,
            layer_norm_eps=layer_norm_eps,
            net_size=16 * side,
        )
    except ValueError as err:
        raise ConversionError(f"{source}: {err}") from None


def model_name(config: DPTConfig) -> str:
    for name, preset in PRESETS.items():
        if dataclasses.replace(preset, layer_norm_eps=config.layer_norm_eps) == config:
            return name
    return f"custom BEiT-DPT (width {config.width}, depth {config.depth}, grid {config.train_grid})"


def torch_to_flax(checkpoint: Checkpoint) -> Converted:
    """Map every tensor of `checkpoint` to the flax tree; unmapped or missing tensors are errors listing the keys."""
    source = str(checkpoint.path)
    layout = detect_layout(checkpoint.shapes, source)
    config = infer_config(layout, checkpoint.shapes, checkpoint.hf_config, source)
    rules, dropped_patterns = LAYOUTS[layout], DROPPED[layout]

    flat: dict[str, np.ndarray] = {}
    dropped, unknown = [], []
    for key in list(checkpoint.shapes):
        target = next((t for rule in rules if (t := rule.match(key)) is not None), None)
        if target is None:
            (dropped if any(re.fullmatch(p, key) for p in dropped_patterns) else unknown).append(key)
            continue
        tensor = checkpoint.take(key)
        if not np.isfinite(tensor).all():
            raise ConversionError(f"{source}: {key} has non-finite values (NaN or inf)")
        paths, leaf = target
        for path, value in zip(paths, leaf.to_flax(tensor), strict=True):
            flat[path] = np.ascontiguousarray(value, dtype=np.float32)
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} unexpected keys: {', '.join(unknown[:10])}")

    from beit_flax.params import param_shapes

    missing = sorted(param_shapes(config).keys() - flat.keys())
    if missing:
        raise ConversionError(f"{source}: {len(missing)} parameters missing from the checkpoint: {', '.join(missing[:10])}")
    params = traverse_util.unflatten_dict(flat, sep="/")
    return Converted(config, params, layout, model_name(config), dropped)
