"""NYU Depth v2 (Silberman et al., ECCV 2012), the Eigen test split of 654 images, from either release:

- `official_splits`: the layout BTS's `extract_official_train_test_set_from_mat.py` writes and ZoeDepth / Depth
  Anything evaluate on (`official_splits/test/<scene>/rgb_XXXXX.jpg` + `sync_depth_XXXXX.png`, the depth a 16-bit PNG
  in millimetres, 0 = no measurement; ZoeDepth `data_mono.py`: depth / 1000). ROOT is `official_splits/test`, or a
  folder holding it; with `--split FILE` (BTS / ZoeDepth's `nyudepthv2_test_files_with_gt.txt`: `scene/rgb_X.jpg
  scene/sync_depth_X.png focal` per line) only the listed pairs are read.
- `labeled`: the official labelled file `nyu_depth_v2_labeled.mat` (MATLAB v7.3, i.e. HDF5: `images` uint8 stored
  as (N, 3, W, H), `depths` float32 meters as (N, W, H), MATLAB's column-major order) with the official split file
  `splits.mat` (MATLAB v5: `testNdxs`, 1-based) beside it or given with `--split`. Read with h5py and scipy.io
  (`pip install "beit-flax[eval]"`). Keys are `labeled/NNNN`, the 1-based index in the file.

The training split (`part="train"`), in the same file formats: BTS / ZoeDepth's training set `sync/<scene>/rgb_X.jpg
+ sync_depth_X.png` (the raw video frames with projected depth; ZoeDepth's `data_path` and `gt_path`), listed by
`nyudepthv2_train_files_with_gt.txt` (`/scene/rgb_X.jpg /scene/sync_depth_X.png focal`) or all of it without a list;
else `official_splits/train/` (the 795 labelled training images); ROOT holds either (or is `sync` / `train` itself).
The labelled file's training images are `trainNdxs` of `splits.mat`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from beit_flax.evaluation.datasets.files import (
    DatasetError,
    Item,
    existing,
    read_png16,
    read_rgb,
    relative_key,
    sample,
    split_lines,
)

_RGB = re.compile(r"rgb_(\d+)\.jpg$")


def _split_folder(root: Path, part: str = "test") -> Path:
    if part == "train":  # the root itself only by name: a test folder must never be read as training data
        candidates = (root / "sync", root / "official_splits" / "train", root / "train")
        candidates += (root,) if root.name in ("sync", "train") else ()
        expected = "sync/<scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png, or official_splits/train/<scene>/..."
    else:
        candidates = (root / "official_splits" / "test", root / "test", root)
        expected = "official_splits/test/<scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png"
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*/rgb_*.jpg")):
            return candidate
    raise DatasetError(f"{root}: no NYU {part} images (expected {expected})")


def _pair(rgb: Path, depth: Path, folder: Path) -> Item:
    def load():
        image = read_rgb(rgb)
        millimetres = read_png16(depth)
        return sample(image, millimetres.astype(np.float32) / np.float32(1000.0), millimetres > 0, depth)

    return Item(relative_key(rgb, folder), load)


def official_splits(root: Path, split: Path | None = None, part: str = "test") -> list[Item]:
    """The Eigen test split as `official_splits/test` lays it out (module doc), sorted by path; `part="train"`: the
    training split (`sync/` or `official_splits/train`), `split` its list."""
    folder = _split_folder(root, part)
    if split is not None:
        option = "--split" if part == "test" else "--train-split"
        lines = split_lines(split, option)
        bad = [fields for fields in lines if len(fields) < 2]
        if bad:
            raise DatasetError(f"{option} {split}: a line without an image and a depth path: {' '.join(bad[0])!r}")
        return [_pair(folder / f[0].lstrip("/"), folder / f[1].lstrip("/"), folder) for f in lines]
    items = []
    for rgb in sorted(folder.glob("*/rgb_*.jpg")):
        match = _RGB.search(rgb.name)
        depth = rgb.with_name(f"sync_depth_{match[1]}.png") if match else None
        if depth is not None and depth.exists():
            items.append(_pair(rgb, depth, folder))
    return items


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DatasetError('reading nyu_depth_v2_labeled.mat needs h5py: pip install "beit-flax[eval]"') from None
    return h5py


def labeled(root: Path, split: Path | None = None, part: str = "test") -> list[Item]:
    """The test images of `nyu_depth_v2_labeled.mat` (module doc), in `testNdxs` order (`part="train"`: the
    training images, `trainNdxs`)."""
    from scipy.io import loadmat

    mat = root if root.is_file() else existing(root / "nyu_depth_v2_labeled.mat")
    if mat is None:
        raise DatasetError(f"{root}: no nyu_depth_v2_labeled.mat")
    splits = split or mat.parent / "splits.mat"
    try:
        indices = np.asarray(loadmat(splits)[f"{part}Ndxs"], np.int64).ravel() - 1
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"{splits}: not NYU's splits.mat with {part}Ndxs ({type(err).__name__}: {err})") from None
    h5py = _h5py()
    try:
        with h5py.File(mat, "r") as file:
            images, depths = file["images"], file["depths"]
            count = images.shape[0]
            if images.shape[1:2] != (3,) or depths.shape != (count, *images.shape[2:]):
                raise DatasetError(f"{mat}: images {images.shape} and depths {depths.shape} are not NYU's layout")
    except (OSError, KeyError) as err:
        raise DatasetError(f"{mat}: not the NYU labelled file ({type(err).__name__}: {err})") from None
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        raise DatasetError(f"{splits}: {part}Ndxs outside 1..{count}")

    def item(index: int) -> Item:
        def load():
            with h5py.File(mat, "r") as file:  # one open per read: h5py handles are not shared across threads
                image = np.ascontiguousarray(file["images"][index].transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
                depth = np.ascontiguousarray(file["depths"][index].T)  # (W, H) -> (H, W)
            return sample(image.astype(np.uint8), depth, np.ones(depth.shape, bool), f"{mat}[{index + 1}]")

        return Item(f"labeled/{index + 1:04d}", load)

    return [item(int(i)) for i in indices]
