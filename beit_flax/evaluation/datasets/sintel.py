"""MPI Sintel (Butler et al., ECCV 2012), the training set's final pass with the depth of "MPI-Sintel-depth":
`training/final/<scene>/frame_XXXX.png` and `training/depth/<scene>/frame_XXXX.dpt`. A `.dpt` file (the Sintel depth
SDK's `sintel_io.py`, `depth_read`) is the float32 tag 202021.25 ("PIEH"), int32 width, int32 height, then width x
height float32 depths, row-major, little-endian. ROOT is the folder holding `training`, or `training` itself. Keys
are the image paths under ROOT/training's parent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beit_flax.evaluation.datasets.files import DatasetError, Item, read_bytes, read_rgb, relative_key, sample

DPT_TAG = 202021.25
MAX_SIDE = 1 << 15


def read_dpt(path: Path) -> np.ndarray:
    """A Sintel `.dpt` file -> (H, W) float32 depth (module doc); DatasetError for another file."""
    data = read_bytes(path)
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(DPT_TAG):
        raise DatasetError(f"{path}: not a Sintel .dpt depth file (no PIEH tag)")
    width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or len(data) != 12 + 4 * width * height:
        raise DatasetError(f"{path}: a .dpt header of {width} x {height} that does not match its {len(data)} bytes")
    return np.frombuffer(data, "<f4", count=width * height, offset=12).reshape(height, width)


def frames(root: Path, render_pass: str = "final") -> list[Item]:
    """Every frame of the pass with a depth file, sorted by path."""
    base = root if (root / "training").is_dir() else root.parent
    images = sorted((base / "training" / render_pass).glob("*/frame_*.png"))
    items = []
    for image_path in images:
        depth_path = base / "training" / "depth" / image_path.parent.name / f"{image_path.stem}.dpt"
        if depth_path.is_file():
            items.append(_frame(image_path, depth_path, base))
    if not items:
        raise DatasetError(
            f"{root}: no Sintel frames with depth (expected training/{render_pass}/<scene>/frame_XXXX.png and "
            "training/depth/<scene>/frame_XXXX.dpt)"
        )
    return items


def _frame(image_path: Path, depth_path: Path, base: Path) -> Item:
    def load():
        depth = read_dpt(depth_path)
        return sample(read_rgb(image_path), depth, np.ones(depth.shape, bool), depth_path)

    return Item(relative_key(image_path, base), load)
