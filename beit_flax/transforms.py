"""Host-side image operations the families' pre- and post-processing share, in numpy, and the one pixel limit.

- `fit_size`: the "minimal" resize rule of MiDaS and ZoeDepth (keep the aspect ratio with the scale closer to 1,
  each side rounded to a multiple, half to even).
- `resize_bicubic`: torch's `F.interpolate(mode="bicubic", align_corners=False)` without antialias, which is also
  OpenCV's INTER_CUBIC (Keys' kernel, A = -0.75, border replicated). PIL's bicubic antialiases on downscaling and
  changes a depth map by ~2%, so it is not used.
- `resize_bilinear_align_corners`: torch's `interpolate(mode="bilinear", align_corners=True)`, in float32 as its CPU
  kernel computes it.
- `to_unit`: uint8 / uint16 / float images -> float32 in [0, 1] (torchvision's `ToTensor`).

Each family's own pipeline (MiDaS run.py, ZoeDepth's infer_pil, ...) lives in its folder (`models/<family>/`).
"""

from __future__ import annotations

import functools

import numpy as np

MIN_NET_SIZE = 32  # the smallest net size (`--size`): one multiple of MiDaS and ZoeDepth on each side
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


def fit_size(
    height: int, width: int, net_hw: tuple[int, int], multiple: int, *, keep_aspect: bool = True
) -> tuple[int, int]:
    """The network input (H', W') of a (height, width) image resized towards `net_hw` (MiDaS' and ZoeDepth's
    `Resize(..., resize_method="minimal")`).

    keep_aspect: one scale for both sides, the one that changes the image least; False: each side on its own. Each
    side is rounded to a multiple of `multiple` (np.round: half to even). Deviation: a side that would round to 0
    (images under half a multiple) becomes one multiple, where the originals would fail.
    """
    net_h, net_w = net_hw
    if height < 1 or width < 1 or net_h < 1 or net_w < 1:
        raise ValueError(f"image size {(height, width)} and net size {net_hw} must be positive")
    scale_h, scale_w = net_h / height, net_w / width
    if keep_aspect:
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    side = lambda x, scale: max(int(np.round(scale * x / multiple) * multiple), multiple)
    return side(height, scale_h), side(width, scale_w)


@functools.lru_cache(maxsize=128)
def cubic_taps(in_size: int, out_size: int, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out, 4) int64 and weights (out, 4) float32 of torch's bicubic rule along one axis.

    src = (dst + 0.5) * step - 0.5 (unclamped), step = in / out, or torch's 1 / scale_factor when one was given
    (`models.dpt.position_embedding`); taps floor(src) - 1 .. + 2 clamped to the border.
    """
    a = -0.75
    step = in_size / out_size if step is None else step
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * step - 0.5
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


@functools.lru_cache(maxsize=128)
def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(low index, high index, weight of low, weight of high), each (out,), of torch's bilinear rule with
    align_corners=True along one axis: src = dst * (in - 1) / (out - 1) (0 for out == 1), in float32 as torch's CPU
    kernel computes it (`area_pixel_compute_scale`, `area_pixel_compute_source_index`)."""
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = np.arange(out_size, dtype=np.float32) * scale
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    t = (src - low.astype(np.float32)).astype(np.float32)
    return low, high, (np.float32(1) - t).astype(np.float32), t


def resize_bilinear_align_corners(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) float -> (size_h, size_w[, C]) float32, torch's `interpolate(mode="bilinear",
    align_corners=True)` (no antialias), separable (W first, as torch's h0 (w0 a + w1 b) + h1 (...)); an axis kept
    at its size is the identity."""
    out = np.asarray(image, np.float32)
    for axis in (1, 0):
        if out.shape[axis] == size_hw[axis]:
            continue
        low, high, w_low, w_high = linear_taps(out.shape[axis], size_hw[axis])
        shape = [1] * out.ndim
        shape[axis] = -1
        out = np.take(out, low, axis=axis) * w_low.reshape(shape) + np.take(out, high, axis=axis) * w_high.reshape(
            shape
        )
    return out


def to_unit(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 / uint16 / float in [0, 1] -> float32 in [0, 1] (`ToTensor`)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image; got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32)
