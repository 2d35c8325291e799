"""`ResidualConvUnit` and `FeatureFusionBlock` vs direct torch ops (MiDaS `blocks.py`), with weights converted by the
converter's layout transform.

Includes a path that is not an exact doubling (13x7 -> 25x14, what a multiple-of-16-but-not-32 input produces).
"""

from __future__ import annotations

import jax
import pytest
import torch
import torch.nn.functional as F
from flax_helpers import (
    assert_close,
    assert_params_match_module,
    nchw_to_nhwc,
    randn,
    random_conv,
)
from tiny_config import TINY as CFG

from beit_flax.models.dpt.fusion import FeatureFusionBlock, ResidualConvUnit

F_CH = CFG.fusion_channels


def _rcu(gen, channels):
    (w1, b1), p1 = random_conv(gen, channels, channels, 3)
    (w2, b2), p2 = random_conv(gen, channels, channels, 3)

    def torch_rcu(x):
        return x + F.conv2d(F.relu(F.conv2d(F.relu(x), w1, b1, padding=1)), w2, b2, padding=1)

    return torch_rcu, {"conv1": p1, "conv2": p2}


def test_residual_conv_unit():
    gen = torch.Generator().manual_seed(0)
    torch_rcu, params = _rcu(gen, F_CH)
    x = randn(gen, 2, F_CH, 7, 5)
    module = ResidualConvUnit(F_CH)
    assert_params_match_module(module, params, nchw_to_nhwc(x))
    ours = jax.jit(lambda p, v: module.apply({"params": p}, v))(params, nchw_to_nhwc(x))
    assert_close(ours, nchw_to_nhwc(torch_rcu(x)), "ResidualConvUnit 7x5")


@pytest.mark.parametrize(
    "stage,path_hw,size_hw",
    [
        (4, (4, 3), (7, 5)),  # coarsest stage: no skip, resized to l3's size (not a doubling)
        (3, (13, 7), (25, 14)),  # with skip, not an exact doubling
        (2, (6, 5), (12, 10)),  # exact doubling
        (1, (6, 5), (12, 10)),
    ],
)
def test_feature_fusion_block(stage, path_hw, size_hw):
    gen = torch.Generator().manual_seed(stage)
    rcu1, rcu1_params = _rcu(gen, F_CH)
    rcu2, rcu2_params = _rcu(gen, F_CH)
    (w_out, b_out), out_params = random_conv(gen, F_CH, F_CH, 1)
    path = randn(gen, 2, F_CH, *path_hw)
    skip = randn(gen, 2, F_CH, *path_hw) if stage != 4 else None

    # MiDaS FeatureFusionBlock_custom.forward(path, skip, size=...)
    expected = path if skip is None else path + rcu1(skip)
    expected = rcu2(expected)
    expected = F.interpolate(expected, size=size_hw, mode="bilinear", align_corners=True)
    expected = F.conv2d(expected, w_out, b_out)

    params = {"rcu2": rcu2_params, "out_conv": out_params}
    if skip is not None:
        params["rcu1"] = rcu1_params
    module = FeatureFusionBlock(CFG.fusion_channels)
    skip_nhwc = None if skip is None else nchw_to_nhwc(skip)
    assert_params_match_module(module, params, nchw_to_nhwc(path), skip_nhwc, size_hw)
    ours = jax.jit(lambda p, a, b: module.apply({"params": p}, a, b, size_hw))(params, nchw_to_nhwc(path), skip_nhwc)
    assert ours.shape == (2, *size_hw, F_CH)
    assert_close(ours, nchw_to_nhwc(expected), f"FeatureFusionBlock stage {stage} {path_hw}->{size_hw}")
