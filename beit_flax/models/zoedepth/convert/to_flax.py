"""PyTorch ZoeDepth checkpoint -> (ZoeDepthConfig, beit-flax parameter tree), accounting for every tensor.

Reads the release files (ZoeD_M12_{N,K,NK}.pt: `{"model": state_dict}`, unwrapped by `open_checkpoint`; a leading
`module.` of DataParallel saves is stripped as the original loader does) and transformers' `Intel/zoedepth-*` layout
(v4 or v5 backbone names). The architecture comes from the tensor shapes (the core via the DPT converter's
`infer_config`), the rest (bin ranges, bin type, temperatures, router heads) from transformers' config.json when the
folder has one, else from the released preset whose parameter shapes the file has; `config=` overrides both.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np

from beit_flax.convert.checkpoint import Checkpoint, ConversionError
from beit_flax.convert.rules import Converted, Leaf, read_planned
from beit_flax.files import join_problems
from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.convert.to_flax import infer_config
from beit_flax.models.zoedepth.config import PRESETS, BinConfig, RouterConfig, ZoeDepthConfig
from beit_flax.models.zoedepth.convert.keys import CORE_LAYOUT, DROPPED, RELEASE_CORE_PREFIX, dpt_torch_name, rules
from beit_flax.models.zoedepth.params import param_shapes

_MARKERS = {  # layout -> names only that layout has
    "release": (RELEASE_CORE_PREFIX + "pretrained.model.cls_token", "conv2.weight"),
    "hf-v5": ("backbone.beit.embeddings.cls_token", "metric_head.conv2.weight"),
    "hf-v4": ("backbone.embeddings.cls_token", "metric_head.conv2.weight"),
}


def strip_module_prefix(name: str) -> str:
    """`module.x` -> `x`, as the original `load_state_dict` (`zoedepth/models/model_io.py`) does for DataParallel."""
    return name.removeprefix("module.")


DESCRIPTION = "a ZoeDepth release (ZoeD_M12_N / _K / _NK .pt) or a transformers ZoeDepth checkpoint"


def detect_layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The layout ("release", "hf-v4", "hf-v5") whose marker names the checkpoint has (a leading `module.` of
    DataParallel saves ignored), or None."""
    names = {strip_module_prefix(k) for k in shapes}
    return next((layout for layout, markers in _MARKERS.items() if all(m in names for m in markers)), None)


def is_zoedepth(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a checkpoint's names are a ZoeDepth's."""
    return detect_layout(shapes) is not None


def detect_zoedepth_layout(shapes: dict[str, tuple[int, ...]], source: str) -> str:
    layout = detect_layout(shapes)
    if layout is not None:
        return layout
    sample = ", ".join(sorted(shapes)[:5]) or "none"
    raise ConversionError(f"{source}: not a ZoeDepth checkpoint (release or transformers layout); first keys: {sample}")


def _plan(
    layout: str, config: ZoeDepthConfig, names: list[str]
) -> tuple[dict[str, tuple[list[str], Leaf]], list[str], list[str]]:
    """(name -> (flax paths, Leaf), dropped names, unknown names) for the checkpoint names `names`."""
    table, dropped_patterns = rules(layout, config), DROPPED[layout]
    plan, dropped, unknown = {}, [], []
    for name in names:
        target = next((t for rule in table if (t := rule.match(name)) is not None), None)
        if target is not None:
            plan[name] = target
        else:
            (dropped if any(re.fullmatch(p, name) for p in dropped_patterns) else unknown).append(name)
    return plan, dropped, unknown


def shape_problems(layout: str, config: ZoeDepthConfig, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """What keeps a checkpoint with these names and shapes from being `config` (empty: nothing): unknown names,
    missing parameters, wrong shapes. Works on shapes alone (zero-size views stand in for the tensors)."""
    plan, _, unknown = _plan(layout, config, list(shapes))
    got: dict[str, tuple[int, ...]] = {}
    for name, (paths, leaf) in plan.items():
        stand_in = np.broadcast_to(np.float32(0), shapes[name])
        try:
            got |= {path: value.shape for path, value in zip(paths, leaf.to_flax(stand_in), strict=True)}
        except ValueError as err:  # e.g. a fused qkv whose rows do not split in 3
            unknown.append(f"{name} {shapes[name]} ({err})")
    expected = param_shapes(config)
    return (
        [f"unexpected {n}" for n in unknown]
        + [f"missing {p}" for p in sorted(expected.keys() - got.keys())]
        + [
            f"{p} has shape {got[p]}, config needs {expected[p]}"
            for p in sorted(expected.keys() & got.keys())
            if got[p] != expected[p]
        ]
    )


def model_name(config: ZoeDepthConfig) -> str:
    for name, preset in PRESETS.items():
        if _same_up_to_eps(preset, config):
            return name
    return f"custom ZoeDepth ({len(config.bins)} bin heads, {config.bin_centers_type}, core width {config.core.width})"


def _same_up_to_eps(preset: ZoeDepthConfig, config: ZoeDepthConfig) -> bool:
    return preset.replace(core=preset.core.replace(layer_norm_eps=config.core.layer_norm_eps)) == config


def infer_zoedepth_config(checkpoint: Checkpoint, layout: str, shapes: dict[str, tuple[int, ...]]) -> ZoeDepthConfig:
    """The config of a checkpoint: from config.json (transformers layout) or the matching released preset."""
    source = str(checkpoint.path)
    core_shapes = {n: s for name, s in shapes.items() if (n := dpt_torch_name(layout, name)) is not None}
    hf = checkpoint.hf_config or {}
    core = infer_config(CORE_LAYOUT[layout], core_shapes, hf or None, source)
    if hf.get("model_type") == "zoedepth":
        config = _from_hf_config(hf, core, shapes, checkpoint, source)
        problems = shape_problems(layout, config, shapes)
        if problems:
            raise ConversionError(f"{source}: tensors do not match its config.json: {'; '.join(problems[:10])}")
        return config
    candidates = [
        p.replace(core=core) for p in PRESETS.values() if p.core.replace(layer_norm_eps=core.layer_norm_eps) == core
    ]
    for candidate in candidates:
        if not shape_problems(layout, candidate, shapes):
            return candidate
    raise ConversionError(
        f"{source}: a ZoeDepth checkpoint ({layout} layout) that matches none of the released configs "
        f"{sorted(PRESETS)} and has no transformers config.json; pass the ZoeDepthConfig (config=...)"
    )


def _from_hf_config(
    hf: dict[str, Any], core: DPTConfig, shapes: dict[str, tuple[int, ...]], checkpoint: Checkpoint, source: str
) -> ZoeDepthConfig:
    """transformers' ZoeDepthConfig fields + the widths it hard-codes (read off the shapes) -> our config.

    transformers calls `inv_attractor(dx)` with its defaults whatever config.json says (alpha 300, gamma 2, "inv"),
    and its router LayerNorms are torch's default (eps 1e-5); these are not read.
    """
    shape = lambda name: _shape(shapes, name, source)
    confs = hf.get("bin_configurations") or [{"n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0}]
    multi = len(confs) > 1
    bins = tuple(
        BinConfig(c.get("name", "metric"), int(c["n_bins"]), float(c["min_depth"]), float(c["max_depth"]))
        for c in confs
    )
    first = bins[0].name if multi else None
    seed = f"metric_head.seed_bin_regressors.{first}" if multi else "metric_head.seed_bin_regressor"
    attractor = lambda k: f"metric_head.attractors.{first}.{k}" if multi else f"metric_head.attractors.{k}"
    clb = "metric_head.conditional_log_binomial" + (f".{first}" if multi else "")
    normed = hf.get("bin_centers_type", "softplus") == "normed"
    embedding = shape("metric_head.seed_projector.conv2.weight")[0]
    router = None
    if multi:
        encoder = r"metric_head\.patch_transformer\.transformer_encoder\.(\d+)\."
        layers = {int(m[1]) for name in shapes if (m := re.match(encoder, name))}
        router = RouterConfig(
            width=shape("metric_head.patch_transformer.embedding_convPxP.weight")[0],
            depth=len(layers),
            num_heads=int(hf.get("patch_transformer_num_attention_heads") or RouterConfig.num_heads),
            mlp_dim=shape("metric_head.patch_transformer.transformer_encoder.0.linear1.weight")[0],
        )
    size = _preprocessor_size(checkpoint)
    try:
        config = ZoeDepthConfig(
            core=core,
            bins=bins,
            bin_centers_type=hf.get("bin_centers_type", "softplus"),
            bin_embedding_dim=embedding,
            n_attractors=tuple(shape(f"{attractor(k)}.conv2.weight")[0] // (2 if normed else 1) for k in range(4)),
            attractor_kind=hf.get("attractor_kind", "mean"),
            min_temp=float(hf.get("min_temp", 0.0212)),
            max_temp=float(hf.get("max_temp", 50.0)),
            seed_mlp_dim=shape(f"{seed}.conv1.weight")[0],
            projector_mlp_dim=shape("metric_head.seed_projector.conv1.weight")[0],
            attractor_mlp_dim=shape(f"{attractor(0)}.conv1.weight")[0],
            log_binomial_mlp_dim=shape(f"{clb}.mlp.0.weight")[0],
            condition_on_relative_depth=shape(f"{clb}.mlp.0.weight")[1] == core.head_channels + 1 + embedding,
            router=router,
            net_size=size or (384, 512),
        )
    except ValueError as err:
        raise ConversionError(f"{source}: {err}") from None
    # transformers' single-head configs name no domain, and config.json has no net size: a config that is a released
    # preset but for these takes the preset's.
    for preset in PRESETS.values():
        fill: dict[str, Any] = {"net_size": size or preset.net_size}
        if not multi and len(preset.bins) == 1:
            fill["bins"] = (dataclasses.replace(bins[0], name=preset.bins[0].name),)
        if _same_up_to_eps(preset, config.replace(**fill)):
            return config.replace(**fill)
    return config


def _preprocessor_size(checkpoint: Checkpoint) -> tuple[int, int] | None:
    """(H, W) of transformers' preprocessor_config.json beside the weights, if there is one."""
    path = checkpoint.path.parent / "preprocessor_config.json"
    if checkpoint.hf_config is None or not path.is_file():
        return None
    size = json.loads(path.read_text()).get("size") or {}
    return (int(size["height"]), int(size["width"])) if {"height", "width"} <= set(size) else None


def _shape(shapes: dict[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ConversionError(f"{source}: missing key {key}")
    return shapes[key]


def to_flax(checkpoint: Checkpoint, config: ZoeDepthConfig | None = None) -> Converted:
    """Map every tensor of a ZoeDepth `checkpoint` to the flax tree of `ZoeDepth(config)`.

    config: the architecture, when neither config.json nor a released preset tells it (the file must then match it).
    Unmapped, missing or misshapen tensors are a `ConversionError` listing the keys.
    """
    source = str(checkpoint.path)
    originals = {strip_module_prefix(k): k for k in checkpoint.shapes}
    shapes = {name: checkpoint.shapes[k] for name, k in originals.items()}
    layout = detect_zoedepth_layout(shapes, source)
    if config is None:
        config = infer_zoedepth_config(checkpoint, layout, shapes)
    problems = shape_problems(layout, config, shapes)
    if problems:
        raise ConversionError(f"{source}: not the ZoeDepth of this config: {join_problems(problems)}")
    plan, dropped, _ = _plan(layout, config, list(shapes))
    params = read_planned(checkpoint, ((originals[name], paths, leaf) for name, (paths, leaf) in plan.items()))
    return Converted(config, params, layout, model_name(config), dropped)
