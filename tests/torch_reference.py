"""Torch-only reference material for testing the Flax MiDaS v3.1 BEiT-DPT port.

Nothing here downloads anything: models are built from configs and filled with seeded random weights.

Contents
--------
* ``PRESETS``: specs (plain dicts, stated here independently of ``beit_flax.PRESETS``), and ``TINY`` for
  ``beit_flax.demo.torch_model.hf_config(spec)``, a transformers ``DPTConfig`` with a BEiT backbone that reproduces the
  MiDaS v3.1 BEiT-DPT architecture::

      {"width": C, "depth": L, "num_heads": nH, "train_grid": (gh, gw), "hooks": (b1, b2, b3, b4),   # 0-based blocks
       "reassemble_channels": (D1, D2, D3, D4), "fusion_channels": F, "head_channels": 32, "layer_norm_eps": 1e-6}

* re-exported from ``beit_flax.demo.torch_model``: ``build_reference(spec, seed)``, a ``DPTForDepthEstimation``
  (eval, fp32, eager attention) with *every* parameter perturbed so that the final ReLU output is far from zero
  (``assert_nondegenerate`` checks that).
* State-dict layouts: ``state_dict_v5`` (this venv's transformers names), ``to_v4_names`` / ``to_v5_names`` (the
  transformers 4 names used by the ``Intel/dpt-beit-*`` hub files, and back) and ``to_midas_layout`` (the MiDaS
  release ``.pt`` layout, including the unused buffers / classifier weights that the real file carries).
* An independent functional implementation of the *original* MiDaS forward pass from a MiDaS-layout state dict
  (``midas_forward``, ``midas_forward_intermediates`` and the pieces they are made of, e.g. ``midas_fusion_step``,
  ``relative_position_index``, ``relative_position_bias``). Unlike transformers, it follows the MiDaS fusion rule,
  which differs when H or W is a multiple of 16 but not of 32.

Shapes use B = batch, C = width, N = h*w patch tokens (plus 1 cls token), (h, w) = (H/16, W/16).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing in here may touch the network

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from tiny_config import TINY as TINY_CONFIG
from torch import Tensor, nn

from beit_flax.demo.torch_model import (  # the transformers reference model lives in the package (the demo uses it too)
    PATCH,
    REASSEMBLE_FACTORS,
    _check_spec,
    as_spec,
    assert_nondegenerate,
    build_model,
    build_reference,
    hf_config,
    random_images,
    reference_depth,
)

__all__ = [
    "PATCH",
    "PRESETS",
    "RCU",
    "REASSEMBLE_FACTORS",
    "TINY",
    "Conv",
    "FusionParams",
    "assert_nondegenerate",
    "build_model",
    "build_reference",
    "fusion_params",
    "hf_config",
    "midas_encoder",
    "midas_forward",
    "midas_forward_intermediates",
    "midas_fusion",
    "midas_fusion_step",
    "midas_head",
    "midas_rcu",
    "midas_reassemble",
    "random_images",
    "reference_depth",
    "relative_position_bias",
    "relative_position_index",
    "resize_relative_position_table",
    "state_dict_v5",
    "to_midas_layout",
    "to_v4_names",
    "to_v5_names",
]

PRESETS: dict[str, dict[str, Any]] = {
    "dpt_beit_large_512": {
        "width": 1024,
        "depth": 24,
        "num_heads": 16,
        "train_grid": (32, 32),
        "hooks": (5, 11, 17, 23),
        "reassemble_channels": (256, 512, 1024, 1024),
        "fusion_channels": 256,
        "head_channels": 32,
        "layer_norm_eps": 1e-6,
    },
    "dpt_beit_large_384": {
        "width": 1024,
        "depth": 24,
        "num_heads": 16,
        "train_grid": (24, 24),
        "hooks": (5, 11, 17, 23),
        "reassemble_channels": (256, 512, 1024, 1024),
        "fusion_channels": 256,
        "head_channels": 32,
        "layer_norm_eps": 1e-6,
    },
    "dpt_beit_base_384": {
        "width": 768,
        "depth": 12,
        "num_heads": 12,
        "train_grid": (24, 24),
        "hooks": (2, 5, 8, 11),
        "reassemble_channels": (96, 192, 384, 768),
        "fusion_channels": 256,
        "head_channels": 32,
        "layer_norm_eps": 1e-6,
    },
}
"""The three released MiDaS v3.1 BEiT models (see the table in ``midas-v31-beit.md``)."""

TINY: dict[str, Any] = as_spec(TINY_CONFIG)
"""The fast tests' tiny model (`tiny_config.TINY`) as a spec. ``head_channels`` is 8 on purpose (transformers
hard-codes 32, see ``build_model``)."""

NUM_CLASSES = 1000
"""Rows of the unused ImageNet classifier ``pretrained.model.head`` in the MiDaS release files."""


# --------------------------------------------------------------------------------------------------------------------
# state-dict layouts
# --------------------------------------------------------------------------------------------------------------------


def state_dict_v5(model: nn.Module) -> dict[str, Tensor]:
    """The model's own state dict (transformers 5 names), fp32, detached, cloned and contiguous.

    Under transformers 4 (which saves the v4 names) the keys are renamed to the v5 names.
    """
    sd = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in model.state_dict().items()}
    if any(k.startswith("backbone.encoder.layer.") for k in sd):
        return to_v5_names(sd)
    return sd


_P = r"(?P<p>weight|bias)"
_V5_LAYER_RE = r"backbone\.beit\.layers\.(?P<n>\d+)\."
_V4_LAYER_T = "backbone.encoder.layer.{n}."
_V4_LAYER_RE = r"backbone\.encoder\.layer\.(?P<n>\d+)\."
_V5_LAYER_T = "backbone.beit.layers.{n}."
_BLOCK_T = "pretrained.model.blocks.{n}."

Rule = tuple[str, str]
"""(regex fully matching a source key, ``str.format`` template of the target key).

Templates see the named groups plus ``k = i + 1`` (1-based reassemble stage) and ``r = 4 - i`` (MiDaS refinenet
number: transformers' fusion layer 0 is refinenet4) when the regex has a group ``i``.
"""

V5_TO_V4: list[Rule] = [
    (r"backbone\.beit\.embeddings\.(?P<rest>.+)", "backbone.embeddings.{rest}"),
    (_V5_LAYER_RE + r"attention\.q_proj\." + _P, _V4_LAYER_T + "attention.attention.query.{p}"),
    (_V5_LAYER_RE + r"attention\.k_proj\." + _P, _V4_LAYER_T + "attention.attention.key.{p}"),
    (_V5_LAYER_RE + r"attention\.v_proj\." + _P, _V4_LAYER_T + "attention.attention.value.{p}"),
    (_V5_LAYER_RE + r"attention\.o_proj\." + _P, _V4_LAYER_T + "attention.output.dense.{p}"),
    (_V5_LAYER_RE + r"mlp\.fc1\." + _P, _V4_LAYER_T + "intermediate.dense.{p}"),
    (_V5_LAYER_RE + r"mlp\.fc2\." + _P, _V4_LAYER_T + "output.dense.{p}"),
    (
        _V5_LAYER_RE + r"relative_position_bias\.relative_position_bias_table",
        _V4_LAYER_T + "attention.attention.relative_position_bias.relative_position_bias_table",
    ),
    (_V5_LAYER_RE + r"(?P<rest>lambda_[12]|layernorm_(?:before|after)\.(?:weight|bias))", _V4_LAYER_T + "{rest}"),
    (r"(?P<rest>(?:neck|head)\..+)", "{rest}"),
]
"""transformers 5 -> transformers 4 (hub) names. Everything outside the backbone keeps its name."""

V4_TO_V5: list[Rule] = [
    (r"backbone\.embeddings\.(?P<rest>.+)", "backbone.beit.embeddings.{rest}"),
    (_V4_LAYER_RE + r"attention\.attention\.query\." + _P, _V5_LAYER_T + "attention.q_proj.{p}"),
    (_V4_LAYER_RE + r"attention\.attention\.key\." + _P, _V5_LAYER_T + "attention.k_proj.{p}"),
    (_V4_LAYER_RE + r"attention\.attention\.value\." + _P, _V5_LAYER_T + "attention.v_proj.{p}"),
    (_V4_LAYER_RE + r"attention\.output\.dense\." + _P, _V5_LAYER_T + "attention.o_proj.{p}"),
    (_V4_LAYER_RE + r"intermediate\.dense\." + _P, _V5_LAYER_T + "mlp.fc1.{p}"),
    (_V4_LAYER_RE + r"output\.dense\." + _P, _V5_LAYER_T + "mlp.fc2.{p}"),
    (
        _V4_LAYER_RE + r"attention\.attention\.relative_position_bias\.relative_position_bias_table",
        _V5_LAYER_T + "relative_position_bias.relative_position_bias_table",
    ),
    (_V4_LAYER_RE + r"(?P<rest>lambda_[12]|layernorm_(?:before|after)\.(?:weight|bias))", _V5_LAYER_T + "{rest}"),
    (r"(?P<rest>(?:neck|head)\..+)", "{rest}"),
]
"""transformers 4 (hub) -> transformers 5 names: the inverse of ``V5_TO_V4``."""

V5_TO_MIDAS: list[Rule] = [
    (r"backbone\.beit\.embeddings\.cls_token", "pretrained.model.cls_token"),
    (r"backbone\.beit\.embeddings\.patch_embeddings\.projection\." + _P, "pretrained.model.patch_embed.proj.{p}"),
    (_V5_LAYER_RE + r"lambda_(?P<j>[12])", _BLOCK_T + "gamma_{j}"),
    (_V5_LAYER_RE + r"layernorm_before\." + _P, _BLOCK_T + "norm1.{p}"),
    (_V5_LAYER_RE + r"layernorm_after\." + _P, _BLOCK_T + "norm2.{p}"),
    (_V5_LAYER_RE + r"attention\.q_proj\.bias", _BLOCK_T + "attn.q_bias"),
    (_V5_LAYER_RE + r"attention\.v_proj\.bias", _BLOCK_T + "attn.v_bias"),
    (_V5_LAYER_RE + r"attention\.o_proj\." + _P, _BLOCK_T + "attn.proj.{p}"),
    (_V5_LAYER_RE + r"mlp\.(?P<fc>fc[12])\." + _P, _BLOCK_T + "mlp.{fc}.{p}"),
    (
        _V5_LAYER_RE + r"relative_position_bias\.relative_position_bias_table",
        _BLOCK_T + "attn.relative_position_bias_table",
    ),
    (
        r"neck\.reassemble_stage\.readout_projects\.(?P<i>[0-3])\.0\." + _P,
        "pretrained.act_postprocess{k}.0.project.0.{p}",
    ),
    (r"neck\.reassemble_stage\.layers\.(?P<i>[0-3])\.projection\." + _P, "pretrained.act_postprocess{k}.3.{p}"),
    (r"neck\.reassemble_stage\.layers\.(?P<i>[0-3])\.resize\." + _P, "pretrained.act_postprocess{k}.4.{p}"),
    (r"neck\.convs\.(?P<i>[0-3])\.weight", "scratch.layer{k}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.(?P<i>[0-3])\.projection\." + _P, "scratch.refinenet{r}.out_conv.{p}"),
    (
        r"neck\.fusion_stage\.layers\.(?P<i>[0-3])\.residual_layer(?P<j>[12])\.convolution(?P<c>[12])\." + _P,
        "scratch.refinenet{r}.resConfUnit{j}.conv{c}.{p}",
    ),
    (r"head\.head\.(?P<m>[024])\." + _P, "scratch.output_conv.{m}.{p}"),
]
"""transformers 5 -> MiDaS release names, for the keys that map one to one (q/k/v weights are fused separately)."""

V5_QKV_WEIGHT = _V5_LAYER_RE + r"attention\.(?P<which>[qkv])_proj\.weight"
"""q/k/v weights (C, C) each -> ``pretrained.model.blocks.{n}.attn.qkv.weight`` (3C, C), rows [q; k; v]."""


def _rename(key: str, rules: Sequence[Rule]) -> str | None:
    """Target name of ``key`` under the first rule whose regex fully matches it, or None."""
    for pattern, template in rules:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        fields: dict[str, Any] = dict(match.groupdict())
        if "i" in fields:
            fields["k"] = int(fields["i"]) + 1
            fields["r"] = 4 - int(fields["i"])
        return template.format(**fields)
    return None


def _apply_rules(sd: Mapping[str, Tensor], rules: Sequence[Rule], skip: Callable[[str], bool]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if skip(key):
            continue
        new = _rename(key, rules)
        if new is None:
            raise KeyError(f"no renaming rule for {key!r}")
        if new in out:
            raise KeyError(f"two keys map to {new!r}")
        out[new] = value.detach().to(torch.float32).clone().contiguous()
    return out


def to_v4_names(sd_v5: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers-5 DPT-BEiT state dict to the transformers-4 names of the ``Intel/dpt-beit-*`` hub files."""
    return _apply_rules(sd_v5, V5_TO_V4, skip=lambda _: False)


def to_v5_names(sd_v4: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers-4 (hub) DPT-BEiT state dict to the transformers-5 names.

    Drops any ``relative_position_index`` buffers (the current hub files have none; transformers ignores them on load).
    """
    return _apply_rules(sd_v4, V4_TO_V5, skip=lambda k: k.endswith("relative_position_index"))


def _extra_generator(seed: int = 1234) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to_midas_layout(sd_v5: Mapping[str, Tensor], spec: Mapping[str, Any]) -> dict[str, Tensor]:
    """Convert a transformers-5 DPT-BEiT state dict to the MiDaS v3.1 release layout (``dpt_beit_*.pt``).

    Besides the renames (``V5_TO_MIDAS``) and the qkv fusion (rows [q; k; v]; ``q_bias``/``v_bias`` kept, no key
    bias), adds what the release files carry but the forward pass never uses:

    * ``pretrained.model.blocks.{n}.attn.relative_position_index``: int64 (gh*gw+1, gh*gw+1) for the training grid
    * ``pretrained.model.fc_norm.{weight,bias}`` (C,) and ``pretrained.model.head.{weight,bias}`` (1000, C) / (1000,):
      deterministic random values (fixed seed), so a loader must really drop them
    * ``scratch.refinenet4.resConfUnit1.*`` comes from transformers' (equally unused) fusion layer 0 residual_layer1.
    """
    _check_spec(spec)
    out = _apply_rules(sd_v5, V5_TO_MIDAS, skip=lambda k: re.fullmatch(V5_QKV_WEIGHT, k) is not None)

    qkv: dict[int, dict[str, Tensor]] = {}
    for key, value in sd_v5.items():
        match = re.fullmatch(V5_QKV_WEIGHT, key)
        if match:
            qkv.setdefault(int(match["n"]), {})[match["which"]] = value.detach().to(torch.float32)
    if sorted(qkv) != list(range(spec["depth"])):
        raise KeyError(f"q/k/v weights found for blocks {sorted(qkv)}, expected {spec['depth']} blocks")
    index = relative_position_index(spec["train_grid"])
    for n, parts in qkv.items():
        out[f"pretrained.model.blocks.{n}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
        out[f"pretrained.model.blocks.{n}.attn.relative_position_index"] = index.clone()

    width = spec["width"]
    gen = _extra_generator()
    out["pretrained.model.fc_norm.weight"] = 1.0 + 0.1 * torch.randn(width, generator=gen)
    out["pretrained.model.fc_norm.bias"] = 0.1 * torch.randn(width, generator=gen)
    out["pretrained.model.head.weight"] = torch.randn((NUM_CLASSES, width), generator=gen) / math.sqrt(width)
    out["pretrained.model.head.bias"] = 0.1 * torch.randn(NUM_CLASSES, generator=gen)
    return out


# --------------------------------------------------------------------------------------------------------------------
# MiDaS forward pass, functional (torch.nn.functional only)
# --------------------------------------------------------------------------------------------------------------------


def relative_position_index(grid: tuple[int, int]) -> Tensor:
    """MiDaS/BEiT relative position index for a (h, w) patch grid: int64 (h*w+1, h*w+1).

    Token i = (y1, x1), j = (y2, x2) (row-major, after the cls token at 0) ->
    (y1 - y2 + h - 1) * (2w - 1) + (x1 - x2 + w - 1); row 0 (cls query) -> M - 3, column 0 (cls key) -> M - 2,
    [0, 0] -> M - 1, with M = (2h - 1)(2w - 1) + 3.
    """
    h, w = grid
    m = (2 * h - 1) * (2 * w - 1) + 3
    ys = torch.arange(h).repeat_interleave(w)  # (h*w,)
    xs = torch.arange(w).repeat(h)
    dy = ys[:, None] - ys[None, :] + (h - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    index = torch.empty((h * w + 1, h * w + 1), dtype=torch.int64)
    index[1:, 1:] = dy * (2 * w - 1) + dx
    index[0, :] = m - 3
    index[:, 0] = m - 2
    index[0, 0] = m - 1
    return index


def resize_relative_position_table(table: Tensor, train_grid: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Resize a relative position bias table (M, nH) from ``train_grid`` to ``grid`` -> (M', nH).

    The (2gh-1)(2gw-1) offset rows are reshaped as (1, 2gw-1, 2gh-1, nH) -> NCHW like the original code (the
    width/height swap only matters for non-square training grids) and resized bilinearly (align_corners=False, no
    antialias) to (2h-1, 2w-1), even when the size is unchanged; the 3 cls rows are kept.
    """
    gh, gw = train_grid
    h, w = grid
    old_h, old_w = 2 * gh - 1, 2 * gw - 1
    new_h, new_w = 2 * h - 1, 2 * w - 1
    m = old_h * old_w + 3
    if table.shape[0] != m:
        raise ValueError(f"table has {table.shape[0]} rows, expected {m} for training grid {train_grid}")
    heads = table.shape[1]
    sub = table[: m - 3].reshape(1, old_w, old_h, heads).permute(0, 3, 1, 2)
    sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear", align_corners=False)
    sub = sub.permute(0, 2, 3, 1).reshape(new_h * new_w, heads)
    return torch.cat([sub, table[m - 3 :]], 0)


def relative_position_bias(table: Tensor, train_grid: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Attention bias (nH, N, N), N = h*w + 1, of one block for the (h, w) patch grid."""
    h, w = grid
    resized = resize_relative_position_table(table, train_grid, grid)
    index = relative_position_index(grid)
    n = h * w + 1
    return resized[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).contiguous()


def _attention(x: Tensor, sd: Mapping[str, Tensor], prefix: str, num_heads: int, bias: Tensor) -> Tensor:
    """timm/MiDaS BEiT attention. x (B, N, C), bias (nH, N, N) -> (B, N, C)."""
    b, n, c = x.shape
    q_bias, v_bias = sd[prefix + "q_bias"], sd[prefix + "v_bias"]
    qkv_bias = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    qkv = F.linear(x, sd[prefix + "qkv.weight"], qkv_bias)  # (B, N, 3C)
    qkv = qkv.reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)  # (3, B, nH, N, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // num_heads) ** -0.5
    attn = q @ k.transpose(-2, -1) + bias.unsqueeze(0)  # (B, nH, N, N)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


def midas_encoder(sd: Mapping[str, Tensor], spec: Mapping[str, Any], images_nchw: Tensor) -> list[Tensor]:
    """BEiT encoder. images (B, 3, H, W), H and W multiples of 16 -> the 4 hooked block outputs, each (B, N+1, C)."""
    _, _, height, width = images_nchw.shape
    if height % PATCH or width % PATCH:
        raise ValueError(f"image size {height}x{width} is not a multiple of {PATCH}")
    grid = (height // PATCH, width // PATCH)
    eps = spec["layer_norm_eps"]
    c = spec["width"]
    p = "pretrained.model."
    x = F.conv2d(images_nchw, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major (y, x)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1)
    hooks: list[Tensor] = []
    for n in range(spec["depth"]):
        b = f"{p}blocks.{n}."
        bias = relative_position_bias(sd[b + "attn.relative_position_bias_table"], spec["train_grid"], grid)
        y = F.layer_norm(x, (c,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        x = x + sd[b + "gamma_1"] * _attention(y, sd, b + "attn.", spec["num_heads"], bias)
        y = F.layer_norm(x, (c,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        y = F.linear(
            F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
            sd[b + "mlp.fc2.weight"],
            sd[b + "mlp.fc2.bias"],
        )
        x = x + sd[b + "gamma_2"] * y
        if n in spec["hooks"]:
            hooks.append(x)
    return hooks


def midas_reassemble(sd: Mapping[str, Tensor], hooks: Sequence[Tensor], grid: tuple[int, int]) -> list[Tensor]:
    """Readout "project" + reassemble. hooks: 4 x (B, N+1, C) -> 4 maps (B, D_k, h_k, w_k).

    (h_k, w_k) = (4h, 4w), (2h, 2w), (h, w), (ceil(h/2), ceil(w/2)).
    """
    h, w = grid
    out: list[Tensor] = []
    for k, tokens in enumerate(hooks, start=1):
        a = f"pretrained.act_postprocess{k}."
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        y = torch.cat([patches, readout], -1)  # (B, N, 2C)
        y = F.gelu(F.linear(y, sd[a + "0.project.0.weight"], sd[a + "0.project.0.bias"]))
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], h, w)  # (B, C, h, w)
        y = F.conv2d(y, sd[a + "3.weight"], sd[a + "3.bias"])
        factor = REASSEMBLE_FACTORS[k - 1]
        if factor > 1:
            y = F.conv_transpose2d(y, sd[a + "4.weight"], sd[a + "4.bias"], stride=int(factor))
        elif factor < 1:
            y = F.conv2d(y, sd[a + "4.weight"], sd[a + "4.bias"], stride=round(1 / factor), padding=1)
        out.append(y)
    return out


class Conv(NamedTuple):
    """Conv2d parameters: weight (O, I, kh, kw), bias (O,) or None."""

    weight: Tensor
    bias: Tensor | None


class RCU(NamedTuple):
    """Residual conv unit: two 3x3 convs (padding 1)."""

    conv1: Conv
    conv2: Conv


class FusionParams(NamedTuple):
    """One MiDaS ``FeatureFusionBlock`` (``scratch.refinenet{k}``)."""

    rcu1: RCU
    rcu2: RCU
    out_conv: Conv


def fusion_params(sd: Mapping[str, Tensor], k: int) -> FusionParams:
    """Parameters of ``scratch.refinenet{k}`` (k = 1..4) from a MiDaS-layout state dict."""
    r = f"scratch.refinenet{k}."

    def conv(name: str) -> Conv:
        return Conv(sd[r + name + ".weight"], sd.get(r + name + ".bias"))

    def rcu(j: int) -> RCU:
        return RCU(conv(f"resConfUnit{j}.conv1"), conv(f"resConfUnit{j}.conv2"))

    return FusionParams(rcu(1), rcu(2), conv("out_conv"))


def midas_rcu(x: Tensor, rcu: RCU) -> Tensor:
    """x (B, F, h, w) -> x + conv2(relu(conv1(relu(x)))), same shape."""
    y = F.conv2d(F.relu(x), rcu.conv1.weight, rcu.conv1.bias, padding=1)
    y = F.conv2d(F.relu(y), rcu.conv2.weight, rcu.conv2.bias, padding=1)
    return x + y


def midas_fusion_step(
    path: Tensor, skip: Tensor | None, rcu1: RCU | None, rcu2: RCU, out_conv: Conv, size: tuple[int, int] | None = None
) -> Tensor:
    """The original MiDaS ``FeatureFusionBlock_custom`` forward (no batch norm, align_corners=True).

    path (B, F, h, w), skip (B, F, h, w) or None -> (B, F, *size) (or (B, F, 2h, 2w) when ``size`` is None):
    out = path (+ RCU1(skip)); out = RCU2(out); bilinear resize (align_corners=True); 1x1 out_conv.
    The skip is never resized: the *previous* block resized the path to the skip's size.
    """
    out = path
    if skip is not None:
        if rcu1 is None:
            raise ValueError("a skip input needs rcu1")
        out = out + midas_rcu(skip, rcu1)
    out = midas_rcu(out, rcu2)
    if size is None:
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    else:
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)
    return F.conv2d(out, out_conv.weight, out_conv.bias)


def midas_fusion(sd: Mapping[str, Tensor], layers_rn: Sequence[Tensor]) -> list[Tensor]:
    """MiDaS fusion. layers_rn: 4 maps (B, F, h_k, w_k) for k = 1..4 -> [path_4, path_3, path_2, path_1].

    refinenet4 resizes to layer3's size, refinenet3 to layer2's, refinenet2 to layer1's, refinenet1 doubles.
    """
    l1, l2, l3, l4 = layers_rn
    p4 = fusion_params(sd, 4)
    path_4 = midas_fusion_step(l4, None, None, p4.rcu2, p4.out_conv, size=tuple(l3.shape[2:]))
    path_3 = midas_fusion_step(path_4, l3, *fusion_params(sd, 3), size=tuple(l2.shape[2:]))
    path_2 = midas_fusion_step(path_3, l2, *fusion_params(sd, 2), size=tuple(l1.shape[2:]))
    path_1 = midas_fusion_step(path_2, l1, *fusion_params(sd, 1), size=None)
    return [path_4, path_3, path_2, path_1]


def midas_head(sd: Mapping[str, Tensor], path_1: Tensor) -> Tensor:
    """``scratch.output_conv``: (B, F, H/2, W/2) -> depth (B, H, W), non-negative.

    conv3x3 F -> F/2, bilinear x2 (align_corners=True), conv3x3 F/2 -> head_channels, ReLU, conv1x1 -> 1, ReLU.
    """
    o = "scratch.output_conv."
    y = F.conv2d(path_1, sd[o + "0.weight"], sd[o + "0.bias"], padding=1)
    y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
    y = F.relu(F.conv2d(y, sd[o + "2.weight"], sd[o + "2.bias"], padding=1))
    y = F.relu(F.conv2d(y, sd[o + "4.weight"], sd[o + "4.bias"]))
    return y.squeeze(1)


def midas_forward_intermediates(
    sd_midas: Mapping[str, Tensor], spec: Mapping[str, Any], images_nchw: Tensor
) -> dict[str, Any]:
    """The full MiDaS forward, keeping every stage (all float32 tensors, NCHW for maps).

    Returns {"hooks": 4 x (B, N+1, C), "reassembled": 4 x (B, D_k, h_k, w_k), "layers_rn": 4 x (B, F, h_k, w_k),
    "paths": [path_4, path_3, path_2, path_1] (path_1: (B, F, H/2, W/2)), "depth": (B, H, W)}.
    """
    _check_spec(spec)
    sd = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd_midas.items()}
    x = images_nchw.to(torch.float32)
    grid = (x.shape[2] // PATCH, x.shape[3] // PATCH)
    with torch.no_grad():
        hooks = midas_encoder(sd, spec, x)
        reassembled = midas_reassemble(sd, hooks, grid)
        layers_rn = [
            F.conv2d(y, sd[f"scratch.layer{k}_rn.weight"], None, padding=1) for k, y in enumerate(reassembled, start=1)
        ]
        paths = midas_fusion(sd, layers_rn)
        depth = midas_head(sd, paths[-1])
    return {"hooks": hooks, "reassembled": reassembled, "layers_rn": layers_rn, "paths": paths, "depth": depth}


def midas_forward(sd_midas: Mapping[str, Tensor], spec: Mapping[str, Any], images_nchw: Tensor) -> Tensor:
    """Original MiDaS v3.1 BEiT-DPT forward from a MiDaS-layout state dict.

    images (B, 3, H, W) float32, normalized, H and W multiples of 16 -> relative inverse depth (B, H, W).
    """
    return midas_forward_intermediates(sd_midas, spec, images_nchw)["depth"]
