"""BEiT's learned relative position bias, resized to the input's patch grid as MiDaS v3.1 does.

Each block owns a table of shape (M, heads) with M = (2gh-1)(2gw-1) + 3 for its training grid (gh, gw):
rows [0, M-3) hold one bias per 2-D offset (dy-major), and the last three rows are the cls->token, token->cls and
cls->cls entries. For an input grid (h, w) MiDaS (`midas/backbones/beit.py`, `_get_rel_pos_bias`) resizes the offset
part to (2h-1, 2w-1) with bilinear interpolation (align_corners=False) - always, even when the size is unchanged,
which is then an exact identity - and gathers a (heads, N, N) bias with N = h*w + 1 (`relative_position_index`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.models.dpt.resize import resize_bilinear_dense


def table_rows(grid_hw: tuple[int, int]) -> int:
    """Rows of a table for `grid_hw`: (2h-1)(2w-1) offsets + the 3 cls entries (3972 for 32x32, 2212 for 24x24)."""
    return (2 * grid_hw[0] - 1) * (2 * grid_hw[1] - 1) + 3


@functools.lru_cache(maxsize=64)
def relative_position_index(grid_hw: tuple[int, int]) -> np.ndarray:
    """(N, N) int32 index into a table for `grid_hw`, N = h*w + 1, the cls token at position 0.

    Token i = (y1, x1) and j = (y2, x2) read row (y1-y2+h-1)*(2w-1) + (x1-x2+w-1); with M = (2h-1)(2w-1) + 3 the cls
    query row reads M-3, the cls key column M-2, and [0, 0] reads M-1 (timm's `gen_relative_position_index`).
    """
    h, w = grid_hw
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    offsets = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    rows = table_rows(grid_hw)
    index = np.empty((h * w + 1, h * w + 1), dtype=np.int32)
    index[1:, 1:] = offsets
    index[0, :] = rows - 3
    index[:, 0] = rows - 2
    index[0, 0] = rows - 1
    index.flags.writeable = False  # cached and shared between callers
    return index


def resize_table(table_mh: jnp.ndarray, train_grid: tuple[int, int], grid_hw: tuple[int, int]) -> jnp.ndarray:
    """Resize a (M, heads) table trained for `train_grid` to the table of `grid_hw`, ((2h-1)(2w-1) + 3, heads).

    The original reshapes the offset rows as (2*gw-1, 2*gh-1) before resizing to (2h-1, 2w-1); for the square
    training grids of every released model that is the same as (2gh-1, 2gw-1), which is what we do here.
    """
    old_h, old_w = 2 * train_grid[0] - 1, 2 * train_grid[1] - 1
    new_h, new_w = 2 * grid_hw[0] - 1, 2 * grid_hw[1] - 1
    heads = table_mh.shape[-1]
    offsets = table_mh[: old_h * old_w].reshape(1, old_h, old_w, heads)
    offsets = resize_bilinear_dense(offsets, (new_h, new_w), align_corners=False)
    return jnp.concatenate([offsets.reshape(new_h * new_w, heads), table_mh[old_h * old_w :]], axis=0)


def bias_rows(table: jnp.ndarray, grid_hw: tuple[int, int], first: int | jnp.ndarray, count: int) -> jnp.ndarray:
    """Rows first, ..., first+count-1 of the (heads, N, N) bias, (heads, count, N) float32, from a table already
    resized to `grid_hw` (`resize_table`); rows past N-1 (a last chunk's padding) repeat row N-1.

    Built from the offset grid's Toeplitz structure rather than count*N*heads scalar gathers: the biases of token
    query (y, x) over all token keys are the (h, w) window of the doubly flipped offset grid that starts at
    (h-1-y, w-1-x). XLA copies such windows as contiguous slices (on CPU the gather cost ~85 ms per block at BEiT-L
    512). `first` a Python int: the windows' starts are constants and the cls row is concatenated (the whole bias:
    `relative_position_bias`); traced (a query chunk in a loop): the starts are computed and the cls query's row
    selected where the chunk holds it.
    """
    h, w = grid_hw
    heads = table.shape[-1]
    offsets = (2 * h - 1) * (2 * w - 1)
    flipped_hyx = table[:offsets].T.reshape(heads, 2 * h - 1, 2 * w - 1)[:, ::-1, ::-1]
    cls_to_token, token_to_cls, cls_to_cls = (table[offsets + i][:, None] for i in range(3))
    static = isinstance(first, (int, np.integer))
    xp = np if static else jnp
    queries = first + xp.arange(count)  # token positions, the cls token at 0
    cls_first = static and first == 0
    patches = xp.clip(queries[1:] - 1 if cls_first else queries - 1, 0, h * w - 1)  # row-major patch index
    starts = xp.stack([h - 1 - patches // w, w - 1 - patches % w], 1).astype(xp.int32)
    window = lambda start: jax.lax.dynamic_slice(flipped_hyx, (0, start[0], start[1]), (heads, h, w))
    tokens_hqk = jax.vmap(window, out_axes=1)(jnp.asarray(starts)).reshape(heads, len(starts), h * w)
    token_rows = jnp.concatenate([jnp.broadcast_to(token_to_cls[:, :, None], (heads, len(starts), 1)), tokens_hqk], 2)
    cls_row = jnp.concatenate([cls_to_cls, jnp.broadcast_to(cls_to_token, (heads, h * w))], 1)[:, None]
    if static:
        return jnp.concatenate([cls_row, token_rows], 1) if cls_first else token_rows
    return jnp.where((queries == 0)[None, :, None], cls_row, token_rows)


def relative_position_bias(table_mh: jnp.ndarray, train_grid: tuple[int, int], grid_hw: tuple[int, int]) -> jnp.ndarray:
    """(heads, N, N) attention bias for an input of `grid_hw` patches, N = h*w + 1; shared by the whole batch.

    Equals `table[relative_position_index(grid_hw)]` (heads first) for the table resized to the grid; see
    `bias_rows`, which builds any rows of it.
    """
    return bias_rows(resize_table(table_mh, train_grid, grid_hw), grid_hw, 0, grid_hw[0] * grid_hw[1] + 1)


class RelativePositionBias(nn.Module):
    """Owns one block's table and returns it resized to the current grid, ((2h-1)(2w-1) + 3, heads) float32: the
    (heads, N, N) bias itself (`bias_rows`) is built where it is used, a query chunk at a time if need be."""

    num_heads: int
    train_grid: tuple[int, int]

    @nn.compact
    def __call__(self, grid_hw: tuple[int, int]) -> jnp.ndarray:
        rows = table_rows(self.train_grid)
        # BEiT initialises the table to zeros; pretrained tables carry the learned biases.
        table = self.param("table", nn.initializers.zeros_init(), (rows, self.num_heads), jnp.float32)
        return resize_table(table, self.train_grid, grid_hw)
