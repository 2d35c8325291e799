"""DIODE (Vasiljevic et al., "DIODE: A Dense Indoor and Outdoor DEpth Dataset", 2019), the validation set as
shipped (`val/{indoors,outdoor}/scene_XXXXX/scan_XXXXX/<name>.png` with `<name>_depth.npy`, float32 meters of shape
(H, W, 1), and `<name>_depth_mask.npy`, (H, W), 1 = valid; the DIODE devkit's readme). ROOT is `val` (the subset
folder is picked by the dataset name) or the subset folder itself. Keys are the image paths under the subset folder.

ZoeDepth (`zoedepth/data/diode.py`) resizes the image to 480 rows before its model and never uses the mask; here the
model gets the image as shipped (its own processing resizes it) and the mask is applied.
"""

from __future__ import annotations

from pathlib import Path

from beit_flax.evaluation.datasets.files import DatasetError, Item, read_npy, read_rgb, relative_key, sample, squeeze_2d


def scans(root: Path, subset: str) -> list[Item]:
    """Every `<scene>/<scan>/<name>.png` with its depth and mask under ROOT/`subset` (or ROOT), sorted by path."""
    folder = root / subset if (root / subset).is_dir() else root
    images = sorted(folder.glob("*/*/*.png"))
    if not images:
        raise DatasetError(f"{root}: no DIODE scans (expected [{subset}/]scene_*/scan_*/<name>.png + _depth.npy)")
    return [_scan(path, folder) for path in images]


def _scan(image_path: Path, folder: Path) -> Item:
    depth_path = image_path.with_name(f"{image_path.stem}_depth.npy")
    mask_path = image_path.with_name(f"{image_path.stem}_depth_mask.npy")

    def load():
        image = read_rgb(image_path)
        depth = squeeze_2d(read_npy(depth_path), depth_path)
        mask = squeeze_2d(read_npy(mask_path), mask_path)
        return sample(image, depth, mask > 0, depth_path)

    return Item(relative_key(image_path, folder), load)
