"""`DepthHead` (MiDaS `scratch.output_conv`) vs direct torch ops, with weights in the converter's layout."""

from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn.functional as F
from flax_helpers import assert_close, assert_params_match_module, nchw_to_nhwc, randn, random_conv, to_numpy
from tiny_config import TINY as CFG

from beit_flax.models.dpt.head import DepthHead

F_CH = CFG.fusion_channels


def test_depth_head():
    gen = torch.Generator().manual_seed(5)
    (w1, b1), p1 = random_conv(gen, F_CH // 2, F_CH, 3)
    (w2, b2), p2 = random_conv(gen, CFG.head_channels, F_CH // 2, 3)
    (w3, b3), p3 = random_conv(gen, 1, CFG.head_channels, 1)
    b3 += 1.0  # keep most of the final ReLU's inputs positive so the comparison is not mostly zeros
    p3["bias"] = to_numpy(b3)
    x = randn(gen, 2, F_CH, 13, 7)

    expected = F.conv2d(x, w1, b1, padding=1)
    expected = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=True)
    expected = F.relu(F.conv2d(expected, w2, b2, padding=1))
    expected = F.relu(F.conv2d(expected, w3, b3))[:, 0]
    assert (expected > 0).float().mean() > 0.5

    params = {"conv1": p1, "conv2": p2, "conv3": p3}
    module = DepthHead(CFG.fusion_channels, CFG.head_channels)
    assert_params_match_module(module, params, nchw_to_nhwc(x))
    ours = jax.jit(lambda p, v: module.apply({"params": p}, v))(params, nchw_to_nhwc(x))
    assert ours.shape == (2, 26, 14) and ours.dtype == np.float32
    assert_close(ours, expected, "DepthHead 13x7 -> 26x14")
