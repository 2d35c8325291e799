"""Pre- and post-processing exactly like MiDaS `run.py` for the BEiT models, on the host in numpy.

preprocess:  RGB in [0, 1] -> resize "minimal" (keep aspect ratio, the scale closer to 1, each side rounded to a
             multiple of 32, half to even) with bicubic -> (x - 0.5) / 0.5 -> (H', W', 3) float32.
postprocess: (H', W') depth -> bicubic back to the image's (H, W), values kept as they are (no clipping).

Bicubic is torch's `F.interpolate(mode="bicubic", align_corners=False)` without antialias, which is also OpenCV's
INTER_CUBIC (Keys' kernel, A = -0.75, border replicated). PIL's bicubic antialiases on downscaling and changes the
depth map by ~2%, so it is not used.
"""

from __future__ import annotations

import functools

import numpy as np

MULTIPLE = 32  # MiDaS `ensure_multiple_of` for these models


def target_size(height: int, width: int, net_size: int, *, square: bool = False) -> tuple[int, int]:
    """The (H', W') MiDaS feeds the network for an image of (height, width) (`midas/transforms.py`, "minimal").

    Deviation: a side that would round to 0 (images under 16 px on a side) becomes 32, where MiDaS would fail.
    """
    if square:
        return net_size, net_size
    scale_h, scale_w = net_size / height, net_size / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h  # change the image as little as possible
    side = lambda x: max(int(np.round(x * scale / MULTIPLE) * MULTIPLE), MULTIPLE)
    return side(height), side(width)


@functools.lru_cache(maxsize=128)
def cubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out, 4) int64 and weights (out, 4) float32 of torch's bicubic rule along one axis.

    src = (dst + 0.5) * in / out - 0.5 (unclamped); taps floor(src) - 1 .. + 2 clamped to the border.
    """
    a = -0.75
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src)
    t = src - base
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)
    index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return index, weights


def resize_bicubic(image_hwc: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) or (H, W) float32 -> (size_h, size_w[, C]) with torch / OpenCV bicubic, no antialias."""
    out = np.asarray(image_hwc, dtype=np.float32)
    for axis, size in enumerate(size_hw):
        index, weights = cubic_taps(out.shape[axis], size)
        gathered = np.take(out, index, axis=axis)  # the 4 taps land at axis + 1
        shape = [1] * gathered.ndim
        shape[axis], shape[axis + 1] = weights.shape
        out = (gathered * weights.reshape(shape)).sum(axis=axis + 1, dtype=np.float32)
    return out


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float (H, W, 3) -> float32 RGB in [0, 1]. Floats are taken to be in [0, 1] already."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image; got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32)


def preprocess(image: np.ndarray, net_size: int, *, square: bool = False) -> np.ndarray:
    """(H, W, 3) RGB image -> (H', W', 3) float32 network input normalised to [-1, 1] (MiDaS run.py)."""
    rgb = to_float_rgb(image)
    resized = resize_bicubic(rgb, target_size(*rgb.shape[:2], net_size, square=square))
    return (resized - 0.5) / 0.5


def postprocess(depth_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Network output (H', W') -> (H, W) float32 relative inverse depth at the image's own size (no clipping)."""
    return resize_bicubic(np.asarray(depth_hw, dtype=np.float32), size_hw)
