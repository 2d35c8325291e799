"""Pre- and post-processing exactly like Depth Anything's `infer_image(raw_image, input_size=518)`, on the host.

preprocess:  RGB in [0, 1] -> `Resize(input_size, input_size, keep_aspect_ratio=True, ensure_multiple_of=14,
             resize_method="lower_bound", INTER_CUBIC)`: one scale, the larger of the two, so that both sides reach
             input_size; each side rounded to a multiple of 14 (np.round, half to even) and rounded up where that
             fell below input_size -> ImageNet mean / std -> (H', W', 3) float32.
postprocess: (H', W') depth -> bilinear with align_corners=True to the image's (H, W) (the original's
             `F.interpolate`), values as they are.

cv2's INTER_CUBIC is torch's bicubic rule without antialias (`transforms.resize_bicubic`). The original resizes the
float64 image (/ 255.0); we resize in float32: the same up to rounding (~1e-7). transformers' image processor
resizes with PIL instead: not the original's pipeline.
"""

from __future__ import annotations

import math

import numpy as np

from beit_flax.models.depth_anything.config import PATCH_SIZE
from beit_flax.models.family import OneViewProcessing, refuse_options
from beit_flax.transforms import check_net_size, resize_bicubic, resize_bilinear_align_corners, to_unit

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def target_size(height: int, width: int, net_size: int, *, square: bool = False) -> tuple[int, int]:
    """The (H', W') `infer_image` feeds the network for an image of (height, width) ("lower_bound")."""
    scale_h, scale_w = net_size / height, net_size / width
    if not square:
        scale_h = scale_w = max(scale_h, scale_w)

    def side(x: float) -> int:
        y = int(np.round(x / PATCH_SIZE) * PATCH_SIZE)
        return y if y >= net_size else int(math.ceil(x / PATCH_SIZE) * PATCH_SIZE)

    return side(scale_h * height), side(scale_w * width)


def preprocess(image: np.ndarray, net_size: int, *, square: bool = False) -> np.ndarray:
    """(H, W, 3) RGB (uint8, uint16 or float in [0, 1]) -> (H', W', 3) float32 normalised network input."""
    unit = to_unit(image)
    resized = resize_bicubic(unit, target_size(*unit.shape[:2], net_size, square=square))
    return (resized - IMAGENET_MEAN) / IMAGENET_STD


def postprocess(depth_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Network output (H', W') -> (H, W) float32 at the image's own size."""
    return resize_bilinear_align_corners(np.asarray(depth_hw, np.float32), size_hw)


def processing(
    config, size: int | None = None, square: bool = False, pad: bool | None = None, flip: bool | None = None
) -> OneViewProcessing:
    """The family's `processing`: `size` is `infer_image`'s input_size (default the config's, 518)."""
    refuse_options("Depth Anything", pad=pad, flip=flip)
    net = check_net_size(config.net_size if size is None else size)
    return OneViewProcessing(net, square, target_size, preprocess, postprocess)
