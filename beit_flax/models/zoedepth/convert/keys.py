"""Key tables of ZoeDepth checkpoints: the DPT tables (`dpt/convert/keys.py`) under ZoeDepth's names for the core,
plus the metric head's own rules (same `Rule` and `KINDS`, so both directions read one table).

Layouts: "release" (the ZoeD_M12_*.pt files: `{"model": state_dict}`, the MiDaS release layout under `core.core.`)
and transformers' "hf-v4" / "hf-v5" (`ZoeDepthForDepthEstimation`: DPT's backbone and neck names, `relative_head.conv
{1,2,3}` for MiDaS's `scratch.output_conv.{0,2,4}`, `metric_head.*`). Head modules, release / transformers -> flax
("{d}" = the domain: "metric" for one head, its `BinConfig.name` for several):

  conv2 / metric_head.conv2                                   -> conv2
  seed_projector._net.{0,2} / .seed_projector.conv{1,2}       -> seed_projector/conv{1,2}
  projectors.{k}._net.{0,2} / .projectors.{k}.conv{1,2}       -> projector_{k}/conv{1,2}   (k = 0..3: r4 .. r1)
  seed_bin_regressor[s.{d}]._net.{0,2} / .conv{1,2}           -> {d}/seed_bin_regressor/conv{1,2}
  attractors[.{d}].{k}._net.{0,2} / .conv{1,2}                -> {d}/attractor_{k}/conv{1,2}
  conditional_log_binomial[.{d}].mlp.{0,2}                    -> {d}/conditional_log_binomial/conv{1,2}
  patch_transformer.embedding_convPxP                         -> router/embed
  patch_transformer.transformer_encoder[.layers].{i}.*        -> router/layer_{i}/*  (release: fused in_proj)
  mlp_classifier.{0,2} / .mlp_classifier.linear{1,2}          -> router/classifier_{1,2}
"""

from __future__ import annotations

import re

import numpy as np

from beit_flax.convert.rules import KINDS, Leaf, Rule
from beit_flax.models.dpt.convert.keys import DROPPED as DPT_DROPPED
from beit_flax.models.dpt.convert.keys import LAYOUTS as DPT_LAYOUTS
from beit_flax.models.zoedepth.config import ZoeDepthConfig

LAYOUTS = ("release", "hf-v4", "hf-v5")
CORE_LAYOUT = {"release": "midas", "hf-v4": "hf-v4", "hf-v5": "hf-v5"}
"""The DPT layout (`dpt.convert.keys.LAYOUTS`) that each ZoeDepth layout's core uses."""

RELEASE_CORE_PREFIX = "core.core."
_HF_HEAD = {"0": "1", "2": "2", "4": "3"}  # MiDaS / DPT `head.head.{n}` -> ZoeDepth `relative_head.conv{c}`

# The router's fused in-projection bias (torch `nn.MultiheadAttention.in_proj_bias`, (3E,) rows [q; k; v]): only
# ZoeDepth has one, so its kind is registered here, beside "qkv" (the fused weight), which it mirrors untransposed.
KINDS.setdefault(
    "qkv_bias",
    {
        "": Leaf(
            ("query/bias", "key/bias", "value/bias"),
            lambda b: tuple(np.split(b, 3)),
            lambda q, k, v: np.concatenate([q, k, v]),
        )
    },
)


def core_torch_name(layout: str, dpt_name: str) -> str:
    """ZoeDepth's name of the core tensor (or rule name) `dpt_name` of the DPT layout `CORE_LAYOUT[layout]`."""
    if layout == "release":
        return RELEASE_CORE_PREFIX + dpt_name
    found = re.fullmatch(r"head\.head\.([024])(.*)", dpt_name)
    return f"relative_head.conv{_HF_HEAD[found[1]]}{found[2]}" if found else dpt_name


def dpt_torch_name(layout: str, name: str) -> str | None:
    """Inverse of `core_torch_name`: the DPT name of a ZoeDepth core tensor, None for the metric head's tensors."""
    if layout == "release":
        return name.removeprefix(RELEASE_CORE_PREFIX) if name.startswith(RELEASE_CORE_PREFIX) else None
    found = re.fullmatch(r"relative_head\.conv([123])(.*)", name)
    if found:
        return f"head.head.{ {c: n for n, c in _HF_HEAD.items()}[found[1]] }{found[2]}"
    return name if name.startswith(("backbone.", "neck.")) else None


def core_rules(layout: str) -> list[Rule]:
    """The DPT rules of the core, renamed (torch side) and under "core/" (flax side)."""
    return [
        Rule(core_torch_name(layout, r.torch_name), f"core/{r.flax_path}", r.kind)
        for r in DPT_LAYOUTS[CORE_LAYOUT[layout]]
    ]


def domain_path(config: ZoeDepthConfig, index: int) -> str:
    """Flax name of bin head `index`: "metric" for a single head, else its `BinConfig.name`."""
    return "metric" if config.router is None else config.bins[index].name


def head_rules(layout: str, config: ZoeDepthConfig) -> list[Rule]:
    """The metric head's rules for `config` (single head or several, with the router)."""
    release, multi = layout == "release", config.router is not None
    # torch names of a module's two 1x1 convs
    mlp = (
        (lambda prefix: (f"{prefix}._net.0", f"{prefix}._net.2"))
        if release
        else (lambda prefix: (f"{prefix}.conv1", f"{prefix}.conv2"))
    )
    top = "" if release else "metric_head."
    two_convs = lambda torch_prefix, flax_prefix, names=mlp: [
        Rule(torch_name, f"{flax_prefix}/conv{c}", "conv") for c, torch_name in zip((1, 2), names(torch_prefix))
    ]
    rules = [Rule(f"{top}conv2", "conv2", "conv"), *two_convs(f"{top}seed_projector", "seed_projector")]
    for k in range(4):
        rules += two_convs(f"{top}projectors.{k}", f"projector_{k}")
    for index, b in enumerate(config.bins):
        d = domain_path(config, index)
        rules += two_convs(
            f"{top}seed_bin_regressors.{b.name}" if multi else f"{top}seed_bin_regressor", f"{d}/seed_bin_regressor"
        )
        for k in range(4):
            rules += two_convs(
                f"{top}attractors.{b.name}.{k}" if multi else f"{top}attractors.{k}", f"{d}/attractor_{k}"
            )
        clb = f"{top}conditional_log_binomial" + (f".{b.name}" if multi else "")
        rules += two_convs(clb, f"{d}/conditional_log_binomial", lambda p: (f"{p}.mlp.0", f"{p}.mlp.2"))
    if multi:
        rules += _router_rules(release, top)
    return rules


def _router_rules(release: bool, top: str) -> list[Rule]:
    encoder = f"{top}patch_transformer.transformer_encoder." + ("layers.{i}" if release else "{i}")
    layer = "router/layer_{i}"
    if release:  # torch nn.MultiheadAttention: fused in_proj (weight rows and bias [q; k; v])
        attention = [
            Rule(f"{encoder}.self_attn.in_proj_weight", f"{layer}/attn", "qkv"),
            Rule(f"{encoder}.self_attn.in_proj_bias", f"{layer}/attn", "qkv_bias"),
        ]
    else:  # transformers' ZoeDepthMultiheadAttention: three Linear layers
        attention = [Rule(f"{encoder}.self_attn.{n}", f"{layer}/attn/{n}", "dense") for n in ("query", "key", "value")]
    classifier = ("0", "2") if release else ("linear1", "linear2")
    return [
        *attention,
        Rule(f"{encoder}.self_attn.out_proj", f"{layer}/attn/out", "dense"),
        Rule(f"{encoder}.linear1", f"{layer}/fc1", "dense"),
        Rule(f"{encoder}.linear2", f"{layer}/fc2", "dense"),
        Rule(f"{encoder}.norm1", f"{layer}/norm1", "norm"),
        Rule(f"{encoder}.norm2", f"{layer}/norm2", "norm"),
        Rule(f"{top}patch_transformer.embedding_convPxP", "router/embed", "conv"),
        *[Rule(f"{top}mlp_classifier.{n}", f"router/classifier_{c}", "dense") for c, n in zip((1, 2), classifier)],
    ]


def rules(layout: str, config: ZoeDepthConfig) -> list[Rule]:
    """Every rule of `layout` for `config`: the core's, then the metric head's."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ZoeDepth layout {layout!r}; one of {LAYOUTS}")
    return core_rules(layout) + head_rules(layout, config)


LOG_BINOMIAL_BUFFERS = r"conditional_log_binomial(\.\w+)?\.log_binomial_transform\.(k_idx|K_minus_1)"
"""The release files' log-binomial constants (`LogBinomial`'s k_idx = arange(n_bins), K_minus_1 = n_bins - 1,
persistent buffers); transformers' are not persistent."""

DROPPED: dict[str, list[str]] = {
    "release": [re.escape(RELEASE_CORE_PREFIX) + p for p in DPT_DROPPED["midas"]] + [LOG_BINOMIAL_BUFFERS],
    "hf-v4": list(DPT_DROPPED["hf-v4"]),
    "hf-v5": list(DPT_DROPPED["hf-v5"]),
}
"""Tensors that ZoeDepth never uses, per layout (regexes over the whole name): the core's (`keys.DROPPED`) and the
log-binomial buffers."""
