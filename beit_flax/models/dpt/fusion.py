"""Fusion (DPT figure 1, "Fusion"): four FeatureFusionBlocks from the coarsest map up, no batch norm.

MiDaS (`midas/blocks.py`, `FeatureFusionBlock_custom`; `midas/dpt_depth.py`):
  path_4 = fusion_4(l4)              -> resized to l3's size
  path_3 = fusion_3(path_4, l3)      -> resized to l2's size
  path_2 = fusion_2(path_3, l2)      -> resized to l1's size
  path_1 = fusion_1(path_2, l1)      -> x2
Every resize is bilinear with align_corners=True to the given size. When H or W is a multiple of 16 but not of 32
these sizes are not exact doublings (e.g. 13 -> 25): the path is resized to the skip's size. transformers' DPT instead
doubles the path and resizes the skip with align_corners=False; we follow MiDaS.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.resize import resize_bilinear


class ResidualConvUnit(nn.Module):
    """y = x + conv2(relu(conv1(relu(x)))), both 3x3 convs with padding 1 and bias."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        conv = lambda name: nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)
        return x_bhwc + conv("conv2")(nn.relu(conv("conv1")(nn.relu(x_bhwc))))


class FeatureFusionBlock(nn.Module):
    """Fuse the coarser path with this stage's skip map, refine, resize to `size_hw`, 1x1 out conv; `channels` in
    and out. The coarsest stage has no skip input, so it has no first residual unit (the release checkpoints carry
    one that is never used)."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, path_bhwc: jnp.ndarray, skip_bhwc: jnp.ndarray | None, size_hw: tuple[int, int]) -> jnp.ndarray:
        channels, dtype = self.channels, self.dtype
        if skip_bhwc is not None:
            path_bhwc = path_bhwc + ResidualConvUnit(channels, dtype, name="rcu1")(skip_bhwc)
        path_bhwc = ResidualConvUnit(channels, dtype, name="rcu2")(path_bhwc)
        path_bhwc = resize_bilinear(path_bhwc, size_hw, align_corners=True)
        return nn.Conv(channels, (1, 1), dtype=dtype, name="out_conv")(path_bhwc)


def fuse(
    maps: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], channels: int, dtype: jnp.dtype
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The fusion stage on the four reassembled maps (l1 finest .. l4 coarsest, (B, h_k, w_k, channels)) -> the
    fusion outputs coarsest first (r4, r3, r2, r1), r1 at twice l1's size. Call it inside a compact method: the
    blocks are the caller's submodules `fusion_{4..1}` (MiDaS `refinenet{k}`)."""
    l1, l2, l3, l4 = maps
    size = lambda x: x.shape[1:3]
    r4 = FeatureFusionBlock(channels, dtype, name="fusion_4")(l4, None, size(l3))
    r3 = FeatureFusionBlock(channels, dtype, name="fusion_3")(r4, l3, size(l2))
    r2 = FeatureFusionBlock(channels, dtype, name="fusion_2")(r3, l2, size(l1))
    r1 = FeatureFusionBlock(channels, dtype, name="fusion_1")(r2, l1, (2 * l1.shape[1], 2 * l1.shape[2]))
    return r4, r3, r2, r1
