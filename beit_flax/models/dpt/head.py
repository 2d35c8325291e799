"""The depth head (MiDaS `scratch.output_conv`, Depth Anything's `output_conv1` / `output_conv2`): fused features
-> depth.

conv 3x3 (F -> F/2) -> bilinear to the output size (align_corners=True; MiDaS: x2, Depth Anything: 14 x the patch
grid, the input's size) -> conv 3x3 (F/2 -> 32) -> ReLU -> conv 1x1 (32 -> 1) -> ReLU (relative inverse depth:
larger is nearer, non-negative, unknown scale and shift) or sigmoid (Depth Anything metric, times max_depth).

Under 16-bit compute the last conv runs in float32 (its 32 -> 1 reduction sets the output's precision and costs
nothing); conv1 and conv2 stay in the compute dtype: they are ~6% of the model's FLOPs at 512 x 512, too many to run
at float32 speed on an accelerator.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.resize import resize_bilinear
from beit_flax.models.precision import island_precision

OUTPUT_ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid}


class DepthHead(nn.Module):
    """(B, h, w, F) fused features -> (B, H, W) float32, (H, W) = `size_hw` (default (2h, 2w), MiDaS's x2).

    features: F, the fusion channels; head_channels: conv2's (32 in every released model); output: the last
    activation, "relu" (relative depth) or "sigmoid" (Depth Anything's metric models, scaled by max_depth outside).
    with_activation=True also returns the (B, H, W, head_channels) ReLU activation that feeds the last conv, in the
    compute dtype: the `out_conv` tap of ZoeDepth (`zoedepth/models/base_models/midas.py`, `output_conv[3]`).
    """

    features: int
    head_channels: int = 32
    output: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features_bhwc: jnp.ndarray, size_hw: tuple[int, int] | None = None, *, with_activation: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        conv = lambda features, kernel, name, dtype=self.dtype, precision=None: nn.Conv(
            features, (kernel, kernel), padding=((kernel // 2,) * 2,) * 2, dtype=dtype, precision=precision, name=name
        )
        x = conv(self.features // 2, 3, "conv1")(features_bhwc)
        _, h, w, _ = x.shape
        x = resize_bilinear(x, size_hw or (2 * h, 2 * w), align_corners=True)
        x = nn.relu(conv(self.head_channels, 3, "conv2")(x))
        last = OUTPUT_ACTIVATIONS[self.output]
        # a float32 island (`precision.island_precision`); tests/test_lowering.py checks the lowered programs
        depth = last(conv(1, 1, "conv3", jnp.float32, island_precision())(x.astype(jnp.float32)))[..., 0]
        return (depth, x) if with_activation else depth
