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

from typing import NamedTuple

import numpy as np

from beit_flax.models.zoedepth.zoedepth import INPUT_MULTIPLE as MULTIPLE  # `PrepForMidas`'s multiple
from beit_flax.transforms import fit_size, resize_bicubic, resize_bilinear_align_corners, to_unit

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
    return fit_size(height, width, net_hw, MULTIPLE, keep_aspect=keep_aspect)


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
