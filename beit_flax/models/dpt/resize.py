"""Bilinear resizing with exactly the sampling rule of torch's `F.interpolate(mode="bilinear")`.

MiDaS resizes in two flavours and both matter to 1e-5:
  * `align_corners=True` in the fusion blocks and the head (DPT's upsampling path);
  * `align_corners=False`, no antialias, for the relative-position tables (torch's default).
`jax.image.resize` uses half-pixel centres with antialiasing on downsampling and has no align-corners mode, so the
taps are computed in numpy (shapes are static under jit). Two ways to apply them, same values:
  * `resize_bilinear`: per axis, gather the two neighbours and blend (2 multiply-adds per output element) - for the
    decoder's feature maps, where dense matrices would cost a matmul of the input's side per output element;
  * `resize_bilinear_dense`: two small matmuls with the interpolation matrices - for the small relative-position
    tables, where gathers would otherwise be fused into every element of the (heads, N, N) bias.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from beit_flax.models.precision import island_precision


@functools.lru_cache(maxsize=256)
def interpolation_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, frac), each (out_size,): out[i] = (1 - frac[i]) * in[lower[i]] + frac[i] * in[upper[i]].

    align_corners=True:  src = dst * (in - 1) / (out - 1)   (0 when out == 1)
    align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0 (torch's `area_pixel_compute_source_index`)
    lower = floor(src), the upper neighbour clamped to in - 1; frac = src - lower, in float64.
    """
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(dst)
    else:
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    taps = (lower.astype(np.int32), upper.astype(np.int32), src - lower)
    for array in taps:
        array.flags.writeable = False  # cached and shared between callers
    return taps


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """(out_size, in_size) float32 matrix W with out = W @ in along one axis (the taps of `interpolation_taps`)."""
    lower, upper, frac = interpolation_taps(in_size, out_size, align_corners)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1.0 - frac)
    np.add.at(weights, (rows, upper), frac)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def _blend_axis(x: jnp.ndarray, axis: int, out_size: int, align_corners: bool) -> jnp.ndarray:
    lower, upper, frac = interpolation_taps(x.shape[axis], out_size, align_corners)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = jnp.asarray(frac.astype(np.float32), x.dtype).reshape(shape)
    below = jnp.take(x, jnp.asarray(lower), axis=axis, mode="clip")
    above = jnp.take(x, jnp.asarray(upper), axis=axis, mode="clip")
    return below * (1 - frac) + above * frac


def resize_bilinear(x_bhwc: jnp.ndarray, size_hw: tuple[int, int], *, align_corners: bool) -> jnp.ndarray:
    """Resize (B, H, W, C) to (B, size_h, size_w, C) like torch bilinear interpolation; keeps the dtype."""
    x_bhwc = _blend_axis(x_bhwc, 1, size_hw[0], align_corners)
    return _blend_axis(x_bhwc, 2, size_hw[1], align_corners)


def resize_bilinear_dense(x_bhwc: jnp.ndarray, size_hw: tuple[int, int], *, align_corners: bool) -> jnp.ndarray:
    """`resize_bilinear` as two matmuls with the interpolation matrices (for small inputs; see the module doc). A
    float32 island whatever the model's compute dtype (`precision.island_precision`): the relative-position tables
    stay float32 on a TPU (whose DEFAULT rounds float32 operands to bfloat16) and a GPU (TF32)."""
    _, h, w, _ = x_bhwc.shape
    rows = jnp.asarray(interpolation_matrix(h, size_hw[0], align_corners), x_bhwc.dtype)
    cols = jnp.asarray(interpolation_matrix(w, size_hw[1], align_corners), x_bhwc.dtype)
    precision = island_precision()
    x_bhwc = jnp.einsum("oh,bhwc->bowc", rows, x_bhwc, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, x_bhwc, precision=precision)
