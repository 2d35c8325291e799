"""Host pre- and post-processing of ZoeDepth exactly as its `infer_pil` does by default, in numpy.

ZoeDepth (`zoedepth/models/depth_model.py`, `DepthModel.infer_pil(img, pad_input=True, with_flip_aug=True)`):

    RGB -> [0, 1] (`ToTensor`)
    pad:    reflect, pad_h = int(sqrt(H / 2) * 3) rows above and below, pad_w = int(sqrt(W / 2) * 3) columns left
            and right (`_infer_with_pad_aug`, fh = fw = 3)
    resize: keep aspect, "minimal" (the scale closer to 1 of net_h / H_p and net_w / W_p, each side rounded to a
            multiple of 32, half to even), bilinear with align_corners=True on the [0, 1] image (`PrepForMidas`,
            `zoedepth/models/base_models/midas.py` `Resize`); the net size is the config's (384 x 512; K: 384 x 768)
    normalise (x - 0.5) / 0.5, the model -> (H', W') meters
    back:   bicubic (torch's, align_corners=False: `transforms.resize_bicubic`) to (H_p, W_p), the padding cropped
    flip:   the same for the horizontally flipped image, its output flipped back; the two averaged. No clipping.

Each image becomes one or two views (plain, flipped; `ViewMeta`), run as separate network inputs; `merge` averages
them.
Deviation: numpy's reflect padding also works where the pad reaches past the image (sides under 5 px), where
torch's refuses; and a side that would round to 0 (images under 16 px after padding) becomes 32.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from beit_flax.transforms import MULTIPLE, resize_bicubic

PAD_FACTOR = 3.0  # `_infer_with_pad_aug`'s fh and fw


class ViewMeta(NamedTuple):
    """What travels with one network input of an image: which image, flipped or not, the padded size, the pad.

    index: the image's position in its stream. flip: the image was flipped horizontally before padding.
    padded_hw: (H + 2 pad_h, W + 2 pad_w). pad_hw: (pad_h, pad_w), zeros without padding.
    """

    index: int
    flip: bool
    padded_hw: tuple[int, int]
    pad_hw: tuple[int, int]


def pad_sizes(height: int, width: int, pad: bool = True) -> tuple[int, int]:
    """(pad_h, pad_w) = (int(sqrt(H / 2) * 3), int(sqrt(W / 2) * 3)), or (0, 0) without padding."""
    if not pad:
        return 0, 0
    return int(np.sqrt(height / 2) * PAD_FACTOR), int(np.sqrt(width / 2) * PAD_FACTOR)


def target_size(height: int, width: int, net_hw: tuple[int, int], *, keep_aspect: bool = True) -> tuple[int, int]:
    """The (H', W') ZoeDepth feeds the network for a (padded) image of (height, width), `net_hw` its net size.

    keep_aspect: one scale for both sides, the one that changes the image least ("minimal"); False: each side on its
    own (`PrepForMidas(keep_aspect_ratio=False)`). Each side rounded to a multiple of 32 (np.round: half to even).
    """
    net_h, net_w = net_hw
    if height < 1 or width < 1 or net_h < 1 or net_w < 1:
        raise ValueError(f"image size {(height, width)} and net size {net_hw} must be positive")
    scale_h, scale_w = net_h / height, net_w / width
    if keep_aspect:
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    side = lambda x, scale: max(int(np.round(scale * x / MULTIPLE) * MULTIPLE), MULTIPLE)
    return side(height, scale_h), side(width, scale_w)


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


def preprocess_views(
    image: np.ndarray,
    net_hw: tuple[int, int],
    *,
    index: int = 0,
    pad: bool = True,
    flip: bool = True,
    keep_aspect: bool = True,
) -> list[tuple[ViewMeta, np.ndarray]]:
    """(H, W, 3) RGB image -> [(ViewMeta, network input (H', W', 3) float32 in [-1, 1])]: the plain view, and with
    `flip` the flipped one."""
    unit = to_unit(image)
    height, width = unit.shape[:2]
    pad_h, pad_w = pad_sizes(height, width, pad)
    padded_hw = (height + 2 * pad_h, width + 2 * pad_w)
    size = target_size(*padded_hw, net_hw, keep_aspect=keep_aspect)
    views = []
    for flipped in (False, True) if flip else (False,):
        source = unit[:, ::-1] if flipped else unit
        if pad_h or pad_w:
            source = np.pad(source, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect")
        net_input = (resize_bilinear_align_corners(source, size) - 0.5) / 0.5
        views.append((ViewMeta(index, flipped, padded_hw, (pad_h, pad_w)), net_input))
    return views


def postprocess_view(depth_hw: np.ndarray, meta: ViewMeta) -> np.ndarray:
    """One view's network output (H', W') meters -> (H, W) float32 at the image's own size, unflipped."""
    out = resize_bicubic(np.asarray(depth_hw, np.float32), meta.padded_hw)
    (pad_h, pad_w), (height, width) = meta.pad_hw, meta.padded_hw
    out = out[pad_h : height - pad_h, pad_w : width - pad_w]
    return np.ascontiguousarray(out[:, ::-1] if meta.flip else out)


def merge(views: list[tuple[ViewMeta, np.ndarray]]) -> np.ndarray:
    """An image's views' network outputs -> (H, W) float32 meters: each postprocessed, then averaged (as the
    original: (out + flip(out_flip)) / 2)."""
    maps = [postprocess_view(depth, meta) for meta, depth in views]
    return maps[0] if len(maps) == 1 else ((maps[0] + maps[1]) / 2).astype(np.float32)
