"""The depth head (MiDaS `scratch.output_conv`): fused features at half resolution -> inverse depth.

conv 3x3 (F -> F/2) -> bilinear x2 (align_corners=True) -> conv 3x3 (F/2 -> 32) -> ReLU -> conv 1x1 (32 -> 1) -> ReLU.
The output is relative inverse depth: larger is nearer, non-negative, unknown scale and shift.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.config import DPTConfig
from beit_flax.resize import resize_bilinear


class DepthHead(nn.Module):
    """(B, H/2, W/2, F) -> (B, H, W) float32."""

    config: DPTConfig

    @nn.compact
    def __call__(self, features_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        conv = lambda features, kernel, name: nn.Conv(
            features, (kernel, kernel), padding=((kernel // 2,) * 2,) * 2, dtype=cfg.compute_dtype, name=name
        )
        x = conv(cfg.fusion_channels // 2, 3, "conv1")(features_bhwc)
        _, h, w, _ = x.shape
        x = resize_bilinear(x, (2 * h, 2 * w), align_corners=True)
        x = nn.relu(conv(cfg.head_channels, 3, "conv2")(x))
        x = nn.relu(conv(1, 1, "conv3")(x))
        return x[..., 0].astype(jnp.float32)
