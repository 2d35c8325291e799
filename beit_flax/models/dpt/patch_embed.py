"""Patch embedding (DPT figure 1, "Embed"): non-overlapping 16x16 patches -> tokens, with the cls token prepended.

BEiT has no absolute position embedding: position enters only through the per-block relative bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class PatchEmbed(nn.Module):
    """(B, H, W, 3) image -> ((B, 1 + h*w, C) float32 tokens, (h, w) grid), patches flattened row-major (y, x)."""

    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images_bhwc: jnp.ndarray) -> tuple[jnp.ndarray, tuple[int, int]]:
        p = self.patch_size
        patches = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(
            images_bhwc
        )
        b, h, w, c = patches.shape
        cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width), jnp.float32)
        cls_token = jnp.broadcast_to(cls_token, (b, 1, c))
        # The residual stream stays float32 whatever the compute dtype: 24 blocks of bf16 additions drift.
        tokens = jnp.concatenate([cls_token, patches.reshape(b, h * w, c).astype(jnp.float32)], axis=1)
        return tokens, (h, w)
