"""The benchmark datasets `beit-depth evaluate` reads, each from the files as the dataset ships them (or the layout
the reference evaluations use), with its protocols: `DATASETS` {name: Dataset}, the one table of them.

Metric ranges and crops are ZoeDepth's (`zoedepth/utils/config.py` `DATASETS_CONFIG`: min_depth_eval,
max_depth_eval, eigen_crop / garg_crop, do_kb_crop); relative depth caps are those of MiDaS' evaluation gist where
it states them (NYU 10 m, with ground truth below 10 m; KITTI 80 m), and this project's choice elsewhere (said in
`RelativeSpec.source`; MiDaS never published its code for the other datasets). Datasets without a ZoeDepth range
(ETH3D, Sintel) have no metric protocol: a metric model is scored on them with the relative one.

NYU and KITTI also have the training split the reference fine-tuning reads (`Dataset.train`, `open_dataset(...,
part="train")`; `examples/finetune.py --dataset`), each with the fixed crop BTS / ZoeDepth apply to it before any
augmentation (`Dataset.train_crop`, see `beit_flax.training.datasets`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from beit_flax.evaluation.datasets import diode, eth3d, ibims, kitti, nyu, sintel
from beit_flax.evaluation.datasets.files import DatasetError, Item, Sample
from beit_flax.evaluation.metrics import BAD_PIXEL
from beit_flax.evaluation.protocols import MetricSpec, RelativeSpec

__all__ = ["DATASETS", "Dataset", "DatasetError", "Item", "Sample", "open_dataset"]

GIST = "MiDaS evaluation gist (BadPixelMetric)"
OURS = "this project's choice (MiDaS published no code for it)"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset: `read(root, split)` -> its test items; its metric protocol (None: none published) and relative one;
    `description` and `source` (where to get it) for the help and the README. `train(root, split)` -> its training
    items (None: no training split is read), and `train_crop` the fixed crop the reference training applies first:
    "nyu_border" (BTS / ZoeDepth's 43:608 x 45:472 of NYU's 640 x 480, which drops the white registration border)
    or "kb" (KITTI's bottom-centred 352 x 1216, as `MetricSpec.kb_crop`)."""

    name: str
    description: str
    source: str
    read: Callable[[Path, Path | None], list[Item]]
    metric: MetricSpec | None
    relative: RelativeSpec
    takes_split: bool = False
    train: Callable[[Path, Path | None], list[Item]] | None = None
    train_crop: str | None = None


def _no_split(read: Callable[[Path], list[Item]]) -> Callable[[Path, Path | None], list[Item]]:
    def with_split(root: Path, split: Path | None) -> list[Item]:
        if split is not None:
            raise DatasetError("--split is for nyu, nyu_labeled and kitti; this dataset has one layout")
        return read(root)

    return with_split


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "nyu",
            "NYU Depth v2, Eigen test split (654), official_splits/test/<scene>/rgb_X.jpg + sync_depth_X.png (mm)",
            "the labelled .mat split by BTS's extract_official_train_test_set_from_mat.py (BTS / ZoeDepth READMEs)",
            nyu.official_splits,
            MetricSpec(1e-3, 10.0, "eigen"),
            RelativeSpec(10.0, 10.0, BAD_PIXEL, GIST),
            takes_split=True,
            train=lambda root, split: nyu.official_splits(root, split, part="train"),
            train_crop="nyu_border",
        ),
        Dataset(
            "nyu_labeled",
            "NYU Depth v2, Eigen test split (654) of nyu_depth_v2_labeled.mat + splits.mat",
            "the NYU Depth v2 page (labelled dataset, and splits.mat of Silberman et al.)",
            nyu.labeled,
            MetricSpec(1e-3, 10.0, "eigen"),
            RelativeSpec(10.0, 10.0, BAD_PIXEL, GIST),
            takes_split=True,
            train=lambda root, split: nyu.labeled(root, split, part="train"),
            train_crop="nyu_border",
        ),
        Dataset(
            "kitti",
            "KITTI Eigen test split (652 annotated), raw images + data_depth_annotated (uint16 / 256)",
            "KITTI raw data and the depth-completion annotations; the split list from BTS / ZoeDepth",
            kitti.eigen,
            MetricSpec(1e-3, 80.0, "garg", kb_crop=True),
            RelativeSpec(80.0, None, BAD_PIXEL, GIST),
            takes_split=True,
            train=lambda root, split: kitti.eigen(root, split, part="train"),
            train_crop="kb",
        ),
        Dataset(
            "diode_indoor",
            "DIODE validation, indoors: <scene>/<scan>/<name>.png + _depth.npy + _depth_mask.npy",
            "the DIODE dataset page (val.tar.gz)",
            _no_split(lambda root: diode.scans(root, "indoors")),
            MetricSpec(1e-3, 10.0, "eigen"),
            RelativeSpec(10.0, None, "abs_rel", OURS),
        ),
        Dataset(
            "diode_outdoor",
            "DIODE validation, outdoor: <scene>/<scan>/<name>.png + _depth.npy + _depth_mask.npy",
            "the DIODE dataset page (val.tar.gz)",
            _no_split(lambda root: diode.scans(root, "outdoor")),
            MetricSpec(1e-3, 80.0, "garg"),
            RelativeSpec(80.0, None, "abs_rel", OURS),
        ),
        Dataset(
            "ibims",
            "iBims-1 core, ibims1_core_raw: rgb/, depth/ (uint16, 50 m full scale), mask_invalid/, mask_transp/",
            "the iBims-1 page (ibims1_core_raw.zip)",
            _no_split(ibims.core),
            MetricSpec(0.0, 10.0, "eigen"),
            RelativeSpec(10.0, None, "abs_rel", OURS),
        ),
        Dataset(
            "eth3d",
            "ETH3D high-res multi-view training, DSLR images + raw float32 ground_truth_depth",
            "the ETH3D page: multi_view_training_dslr_jpg.7z and <scene>_dslr_depth.7z",
            _no_split(eth3d.scenes),
            None,
            RelativeSpec(72.0, None, "abs_rel", OURS + "; 72 m, ETH3D's deepest ground truth"),
        ),
        Dataset(
            "sintel",
            "MPI Sintel training, final pass, .dpt depth",
            "the MPI Sintel page: MPI-Sintel-complete and MPI-Sintel-depth-training",
            _no_split(sintel.frames),
            None,
            RelativeSpec(72.0, 72.0, "abs_rel", OURS + "; ground truth beyond 72 m (sky) left out"),
        ),
    )
}


def open_dataset(name: str, root: Path, split: Path | None = None, *, part: str = "test") -> list[Item]:
    """The items of dataset `name` under `root`, of its test split (`part="test"`) or its training split
    (`part="train"`, where it has one; `split` is then the training list); DatasetError (one line) for a missing
    root, an unknown name, a dataset without that split, or a folder without the dataset's files."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; one of {', '.join(DATASETS)}")
    if part not in ("test", "train"):
        raise ValueError(f"part must be 'test' or 'train', got {part!r}")
    dataset = DATASETS[name]
    read = dataset.read if part == "test" else dataset.train
    if read is None:
        with_train = ", ".join(n for n, d in DATASETS.items() if d.train is not None)
        raise DatasetError(f"{name} has no training split here (these have one: {with_train})")
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    option = "--split" if part == "test" else "--train-split"
    if split is not None and not split.is_file():
        raise DatasetError(f"{option} {split}: no such file")
    items = read(root, split)
    if not items:
        found = f"no {name} samples found ({dataset.description})" if part == "test" else f"no {name} training samples"
        raise DatasetError(f"{root}: {found}")
    return items
