"""`PatchEmbed` vs torch: conv k16 s16, row-major flatten, cls token prepended (BEiT: no absolute position)."""

from __future__ import annotations

import jax
import torch
import torch.nn.functional as F
from flax_helpers import assert_close, assert_params_match_module, nchw_to_nhwc, randn, to_numpy, torch_conv_to_flax
from tiny_config import TINY as CFG

from beit_flax.models.dpt.patch_embed import PatchEmbed


def test_patch_embed():
    gen = torch.Generator().manual_seed(3)
    c, p = CFG.width, CFG.patch_size
    weight = randn(gen, c, 3, p, p, scale=(3 * p * p) ** -0.5)
    bias = randn(gen, c, scale=0.1)
    cls_token = randn(gen, 1, 1, c)
    images = randn(gen, 2, 3, 48, 80)  # grid (3, 5)

    patches = F.conv2d(images, weight, bias, stride=p).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
    expected = torch.cat([cls_token.expand(2, -1, -1), patches], dim=1)

    params = {"proj": {"kernel": torch_conv_to_flax(weight), "bias": to_numpy(bias)}, "cls_token": to_numpy(cls_token)}
    module = PatchEmbed(c, p)
    assert_params_match_module(module, params, nchw_to_nhwc(images))
    tokens, grid_hw = jax.jit(lambda q, v: module.apply({"params": q}, v))(params, nchw_to_nhwc(images))
    assert tuple(int(g) for g in grid_hw) == (3, 5)
    assert tokens.shape == (2, 16, c)
    assert_close(tokens, expected, "PatchEmbed 48x80")
