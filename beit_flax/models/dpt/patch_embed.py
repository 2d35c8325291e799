"""Patch embedding (DPT figure 1, "Embed"): non-overlapping patches -> tokens, with the cls token prepended.

BEiT has no absolute position embedding: position enters only through the per-block relative bias. DINOv2 (Depth
Anything) adds a learned one trained for a `pos_grid` x `pos_grid` patch grid, resized to the input's grid
(`position_embedding.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.position_embedding import resize_position_embedding


class PatchEmbed(nn.Module):
    """(B, H, W, 3) image -> ((B, 1 + h*w, C) float32 tokens, (h, w) grid), patches flattened row-major (y, x)."""

    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32
    pos_grid: int | None = None  # None: no absolute position embedding (BEiT)

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
        if self.pos_grid is not None:
            shape = (1, 1 + self.pos_grid**2, self.width)
            table = self.param("pos_embed", nn.initializers.normal(0.02), shape, jnp.float32)
            tokens = tokens + resize_position_embedding(table, (h, w))
        return tokens, (h, w)
