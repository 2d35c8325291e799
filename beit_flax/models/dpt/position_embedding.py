"""A learned absolute position embedding resized to the input's patch grid exactly as DINOv2 does it
(`dinov2.py`, `DinoVisionTransformer.interpolate_pos_encoding`, as Depth Anything V1 / V2 configure it).

The table holds a cls position and a g x g grid (g = 37 for 518 x 518). For any other grid (h, w) the original calls
`F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", antialias=False)`: with a
`scale_factor`, torch maps output pixel i to source (i + 0.5) / scale_factor - 0.5, so the 0.1 offset moves every
sample (not only the output size, which floor(g * scale) makes h). transformers' Dinov2 resizes to `size=(h, w)`
instead (source (i + 0.5) * g / h - 0.5): a different embedding at every grid but g x g. The original is the truth
here; `offset=None` gives transformers' rule, for measuring the difference. At the training grid of a square
image the table is used as it is (the original's early return).

torch's bicubic (A = -0.75, taps clamped at the border) is applied as two small matrices.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from beit_flax.transforms import cubic_taps

DINOV2_OFFSET = 0.1  # `interpolate_offset` of every Depth Anything / DINOv2 release


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    """(out_size, in_size) float32 W with out = W @ in: torch's bicubic (align_corners=False) along one axis
    (`transforms.cubic_taps`), with `scale_factor` as torch takes it (source step 1 / scale_factor) or None (step
    in_size / out_size)."""
    index, weights = cubic_taps(in_size, out_size, None if scale_factor is None else 1.0 / scale_factor)
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size)[:, None].repeat(4, 1), index), weights)
    matrix.flags.writeable = False
    return matrix


def resize_position_embedding(
    table_1tc: jnp.ndarray, grid_hw: tuple[int, int], offset: float | None = DINOV2_OFFSET
) -> jnp.ndarray:
    """(1, 1 + g*g, C) table -> (1, 1 + h*w, C) for the patch grid `grid_hw` (see the module doc), float32."""
    n = table_1tc.shape[1] - 1
    g = math.isqrt(n)
    h, w = grid_hw
    if (h, w) == (g, g):
        return table_1tc
    scale = lambda side: None if offset is None else (side + offset) / g
    rows = jnp.asarray(bicubic_matrix(g, h, scale(h)))
    cols = jnp.asarray(bicubic_matrix(g, w, scale(w)))
    grid_ggc = table_1tc[0, 1:].reshape(g, g, -1).astype(jnp.float32)
    resized = jnp.einsum("hg,gkc,wk->hwc", rows, grid_ggc, cols, precision="highest")
    return jnp.concatenate([table_1tc[:, :1], resized.reshape(1, h * w, -1)], axis=1)
