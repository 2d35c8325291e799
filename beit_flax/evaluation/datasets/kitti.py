"""KITTI, the Eigen test split with the official annotated depth (Uhrig et al., "Sparsity Invariant CNNs", 3DV 2017;
the depth-completion devkit's readme: a depth map is a 16-bit PNG, depth in meters = value / 256, 0 = no LiDAR
point), as ZoeDepth / BTS evaluate it.

ROOT holds the raw recordings (`raw/<date>/<drive>_sync/image_02/data/NNNNNNNNNN.png`, or the date folders directly)
and the annotations (`gts/<drive>_sync/proj_depth/groundtruth/image_02/NNNNNNNNNN.png` as ZoeDepth keeps them, or
the download's `data_depth_annotated/{train,val}/...`). `--split FILE` is required: BTS / ZoeDepth's
`kitti_eigen_test_files_with_gt.txt` (`image depth focal` per line, 697 lines; a depth of `None` marks the 45 frames
without annotation, skipped as ZoeDepth skips them: 652 remain). Keys are the image paths under the raw root.
The training split (`part="train"`) is read the same way from its list, `kitti_eigen_train_files_with_gt.txt`
(`--train-split`; its annotations are in `data_depth_annotated/train`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beit_flax.evaluation.datasets.files import DatasetError, Item, existing, read_png16, read_rgb, sample, split_lines

GT_FOLDERS = ("gts", "data_depth_annotated/train", "data_depth_annotated/val", "train", "val", ".")
RAW_FOLDERS = ("raw", "raw_data", ".")


def eigen(root: Path, split: Path | None = None, part: str = "test") -> list[Item]:
    """The listed frames that have an annotation (module doc), in the list's order; `part` names the list in
    messages ("test": --split, "train": --train-split)."""
    option = "--split" if part == "test" else "--train-split"
    if split is None:
        raise DatasetError(
            f"kitti needs {option} FILE: the Eigen {part} list (kitti_eigen_{part}_files_with_gt.txt of BTS / ZoeDepth)"
        )
    items = []
    for fields in split_lines(split, option):
        if len(fields) < 2:
            raise DatasetError(f"{option} {split}: a line without an image and a depth path: {' '.join(fields)!r}")
        image_rel, depth_rel = fields[0].lstrip("/"), fields[1].lstrip("/")
        if depth_rel == "None":
            continue
        image = existing(*(root / folder / image_rel for folder in RAW_FOLDERS)) or root / RAW_FOLDERS[0] / image_rel
        depth = existing(*(root / folder / depth_rel for folder in GT_FOLDERS)) or root / GT_FOLDERS[0] / depth_rel
        items.append(_frame(image, depth, Path(image_rel).with_suffix("").as_posix()))
    return items


def _frame(image_path: Path, depth_path: Path, key: str) -> Item:
    def load():
        image = read_rgb(image_path)
        value = read_png16(depth_path)
        return sample(image, value.astype(np.float32) / np.float32(256.0), value > 0, depth_path)

    return Item(key, load)
