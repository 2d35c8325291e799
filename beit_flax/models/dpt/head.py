"""The depth head (MiDaS `scratch.output_conv`): fused features at half resolution -> inverse depth.

conv 3x3 (F -> F/2) -> bilinear x2 (align_corners=True) -> conv 3x3 (F/2 -> 32) -> ReLU -> conv 1x1 (32 -> 1) -> ReLU.
The output is relative inverse depth: larger is nearer, non-negative, unknown scale and shift.

Under 16-bit compute the last conv runs in float32 (its 32 -> 1 reduction sets the output's precision and costs
nothing); conv1 and conv2 stay in the compute dtype: they are ~6% of the model's FLOPs at 512 x 512, too many to run
at float32 speed on an accelerator.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.resize import resize_bilinear


class DepthHead(nn.Module):
    """(B, H/2, W/2, F) -> (B, H, W) float32.

    with_activation=True also returns the (B, H, W, head_channels) ReLU activation that feeds the last conv, in the
    compute dtype: the `out_conv` tap of ZoeDepth (`zoedepth/models/base_models/midas.py`, `output_conv[3]`).
    """

    config: DPTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features_bhwc: jnp.ndarray, *, with_activation: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        cfg = self.config
        conv = lambda features, kernel, name, dtype=self.dtype: nn.Conv(
            features, (kernel, kernel), padding=((kernel // 2,) * 2,) * 2, dtype=dtype, name=name
        )
        x = conv(cfg.fusion_channels // 2, 3, "conv1")(features_bhwc)
        _, h, w, _ = x.shape
        x = resize_bilinear(x, (2 * h, 2 * w), align_corners=True)
        x = nn.relu(conv(cfg.head_channels, 3, "conv2")(x))
        depth = nn.relu(conv(1, 1, "conv3", jnp.float32)(x.astype(jnp.float32)))[..., 0]
        return (depth, x) if with_activation else depth
