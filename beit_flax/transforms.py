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
MIN_NET_SIZE = MULTIPLE  # the smallest net size: one multiple on each side
# The one pixel limit, for the images read and for the network input made from them (`--max-pixels`). 67 MP: every
# camera's full resolution, with memory to spare for a few in flight; a net size up to its side, 8192.
DEFAULT_MAX_PIXELS = 64 * 2**20


def megapixels(pixels: int) -> str:
    """How limits are stated: "67.1 MP", "6 MP", "0.004 MP"."""
    return f"{pixels / 1e6:.3g} MP"


def check_net_size(net_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """A net size to resize towards (`predict(net_size=)`, `--size`): an int of at least MIN_NET_SIZE whose square
    (the network input of a square image) is within `max_pixels`."""
    if isinstance(net_size, bool) or not isinstance(net_size, (int, np.integer)) or net_size < MIN_NET_SIZE:
        raise ValueError(f"net size must be an int >= {MIN_NET_SIZE}, got {net_size!r}")
    if int(net_size) ** 2 > max_pixels:
        raise ValueError(
            f"net size {net_size}: a {net_size}x{net_size} network input is over the limit of "
            f"{megapixels(max_pixels)} (raise it with --max-pixels)"
        )
    return int(net_size)


def check_net_input(size_hw: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """`size_hw` (a `target_size`) if its pixels are within `max_pixels`: a panorama's network input can be several
    times the net size squared. ValueError otherwise."""
    height, width = size_hw
    if height * width > max_pixels:
        raise ValueError(
            f"network input {size_text(height, width)} = {megapixels(height * width)} is over the "
            f"limit of {megapixels(max_pixels)} (raise it with --max-pixels)"
        )
    return size_hw


def size_text(height: int, width: int) -> str:
    """How every message states an image or network size: width x height, as image tools do ("640x480")."""
    return f"{width}x{height}"


def target_size(height: int, width: int, net_size: int, *, square: bool = False) -> tuple[int, int]:
    """The (H', W') MiDaS feeds the network for an image of (height, width) (`midas/transforms.py`, "minimal").

    square: net x net, where MiDaS too rounds net to a multiple of 32 (it computes (net / side) * side, so we do).
    Deviation: a side that would round to 0 (images under 16 px on a side) becomes 32, where MiDaS would fail.
    """
    if height < 1 or width < 1 or net_size < 1:
        raise ValueError(f"image size {(height, width)} and net size {net_size} must be positive")
    scale_h, scale_w = net_size / height, net_size / width
    if not square:  # "minimal": one scale for both sides, the one that changes the image least
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    side = lambda x, scale: max(int(np.round(scale * x / MULTIPLE) * MULTIPLE), MULTIPLE)
    return side(height, scale_h), side(width, scale_w)


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
    """(H, W, C) or (H, W) -> (size_h, size_w[, C]) float32 with torch / OpenCV bicubic, no antialias.

    Integer images are resized as they are (values unscaled), so a large uint8 photo is never copied whole to
    float32. Each axis is 4 gathers and multiply-adds; the axis that shrinks the work most goes first (separable:
    the order changes only float rounding). An axis kept at its size is the identity and is skipped.
    """
    out = np.asarray(image_hwc)
    if not (np.issubdtype(out.dtype, np.integer) or out.dtype == np.float32):
        out = out.astype(np.float32)
    (height, width), (new_h, new_w) = out.shape[:2], size_hw
    for axis in (0, 1) if new_h * width <= height * new_w else (1, 0):
        if out.shape[axis] == size_hw[axis]:
            continue  # t = 0: weights (0, 1, 0, 0) exactly
        index, weights = cubic_taps(out.shape[axis], size_hw[axis])
        shape = [1] * out.ndim
        shape[axis] = -1
        acc = np.take(out, index[:, 0], axis=axis) * weights[:, 0].reshape(shape)
        for k in range(1, 4):
            acc += np.take(out, index[:, k], axis=axis) * weights[:, k].reshape(shape)
        out = acc
    return out.astype(np.float32, copy=False)


def preprocess(image: np.ndarray, net_size: int, *, square: bool = False) -> np.ndarray:
    """(H, W, 3) RGB image -> (H', W', 3) float32 network input normalised to [-1, 1] (MiDaS run.py)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image; got shape {image.shape}")
    size = target_size(*image.shape[:2], net_size, square=square)
    resized = resize_bicubic(image, size)  # float32; floats are taken to be in [0, 1] already
    if np.issubdtype(image.dtype, np.integer):  # resized, then scaled to [0, 1]: linear, the same up to rounding
        resized = resized / np.float32(np.iinfo(image.dtype).max)
    return (resized - 0.5) / 0.5


def postprocess(depth_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Network output (H', W') -> (H, W) float32 relative inverse depth at the image's own size (no clipping)."""
    return resize_bicubic(np.asarray(depth_hw, dtype=np.float32), size_hw)
