"""ETH3D (Schöps et al., CVPR 2017), the high-resolution multi-view training scenes as ETH3D ships them
(`<scene>/images/dslr_images/DSC_XXXX.JPG` from `multi_view_training_dslr_jpg.7z`, and the ground-truth depth of
`<scene>_dslr_depth.7z`: `<scene>/ground_truth_depth/dslr_images/DSC_XXXX.JPG`, which despite its name is raw
little-endian float32 depth in meters, row-major, the image's size, infinity where there is no measurement; ETH3D
documentation, "Format of multi-view data", image formats). ROOT holds the scene folders. Keys are the image paths
under ROOT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beit_flax.evaluation.datasets.files import DatasetError, Item, read_bytes, read_rgb, relative_key, sample


def scenes(root: Path) -> list[Item]:
    """Every DSLR image that has a ground-truth depth file, sorted by path."""
    items = []
    for image_path in sorted(root.glob("*/images/dslr_images/*")):
        depth_path = image_path.parents[2] / "ground_truth_depth" / "dslr_images" / image_path.name
        if depth_path.is_file():
            items.append(_image(image_path, depth_path, root))
    if not items:
        raise DatasetError(
            f"{root}: no ETH3D images with depth (expected <scene>/images/dslr_images/DSC_XXXX.JPG and "
            "<scene>/ground_truth_depth/dslr_images/DSC_XXXX.JPG)"
        )
    return items


def _image(image_path: Path, depth_path: Path, root: Path) -> Item:
    def load():
        image = read_rgb(image_path)
        height, width = image.shape[:2]
        data = read_bytes(depth_path)
        if len(data) != 4 * height * width:
            raise DatasetError(f"{depth_path}: {len(data)} bytes, not the {height} x {width} float32 map of its image")
        depth = np.frombuffer(data, "<f4").reshape(height, width)
        return sample(image, depth, np.isfinite(depth), depth_path)

    return Item(relative_key(image_path, root), load)
