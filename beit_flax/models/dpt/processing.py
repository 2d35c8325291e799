"""Pre- and post-processing exactly like MiDaS `run.py` for the BEiT models, on the host in numpy.

preprocess:  RGB in [0, 1] -> resize "minimal" (keep aspect ratio, the scale closer to 1, each side rounded to a
             multiple of 32, half to even) with bicubic -> (x - 0.5) / 0.5 -> (H', W', 3) float32.
postprocess: (H', W') depth -> bicubic back to the image's (H, W), values kept as they are (no clipping).

Bicubic is torch's `F.interpolate(mode="bicubic", align_corners=False)` without antialias (`transforms.resize_bicubic`,
also OpenCV's INTER_CUBIC). `processing` gives the family's `Processing`: one network input per image.
"""

from __future__ import annotations

import numpy as np

from beit_flax.models.family import OneViewProcessing, refuse_options
from beit_flax.transforms import check_net_size, fit_size, resize_bicubic

MULTIPLE = 32  # MiDaS `ensure_multiple_of` for these models


def target_size(height: int, width: int, net_size: int, *, square: bool = False) -> tuple[int, int]:
    """The (H', W') MiDaS feeds the network for an image of (height, width) (`midas/transforms.py`, "minimal").

    square: net x net, where MiDaS too rounds net to a multiple of 32 (it computes (net / side) * side, so we do).
    Deviation: a side that would round to 0 (images under 16 px on a side) becomes 32, where MiDaS would fail.
    """
    if net_size < 1:
        raise ValueError(f"image size {(height, width)} and net size {net_size} must be positive")
    return fit_size(height, width, (net_size, net_size), MULTIPLE, keep_aspect=not square)


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


def processing(
    config, size: int | None = None, square: bool = False, pad: bool | None = None, flip: bool | None = None
) -> OneViewProcessing:
    """The family's `processing`: `size` the side to resize towards (default the config's `net_size`)."""
    refuse_options("MiDaS", pad=pad, flip=flip)
    net = check_net_size(config.net_size if size is None else size)
    return OneViewProcessing(net, square, target_size, preprocess, postprocess)
