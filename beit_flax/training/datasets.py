"""Training batches from a benchmark's training split (`beit_flax.evaluation.datasets`: NYU, KITTI), read with Grain
(`pip install "beit-flax[train]"`).

`train_batches(items, ...)` is a `grain.MapDataset` pipeline, random access, so that every batch is a pure function
of its position:

    the reader's items, in the reader's order
    -> shuffle: Grain's index shuffle seeded with seed + epoch (a new permutation every epoch), repeated forever
    -> per sample, with Grain's per-position random generator (so the augmentation differs every epoch too):
       read it (`Item.load`: RGB uint8, depth in meters, the dataset's validity);
       the dataset's fixed crop (`Dataset.train_crop`, applied first as BTS / ZoeDepth do): "nyu_border", NYU's
       columns 43:608 x rows 45:472 of 640 x 480 (BTS `bts_dataloader.py`: "to avoid blank boundaries due to pixel
       registration"; on another size, the same fractions of it), "kb", KITTI's bottom-centred 352 x 1216 (frames
       smaller than that are used whole);
       resized so that the shorter side is S (`data.resize_to_cover`: bicubic RGB, nearest depth and mask);
       a random S x S crop (uniform offset) and a horizontal flip with probability 1/2
    -> batches of this process's rows (`data.make_batch`: the loss's target, inverse depth or meters)
    -> this process's share: global step s holds the stream's positions [s B, (s + 1) B), process p of P reads rows
       [p B / P, (p + 1) B / P) of them (`jax.process_index()` / `jax.process_count()`, as Grain's
       `ShardByJaxProcess`), so the global batch of a step does not depend on the process count
    -> `workers` threads read ahead, at most `prefetch` batches (Grain's `ReadOptions`), a bound on host memory.

Left out from the reference fine-tuning (BTS / ZoeDepth `data_mono.py`): the random rotation (up to 2.5 degrees on
NYU, 1 on KITTI), the colour augmentation (gamma, brightness, per-channel colour) and ZoeDepth's reflect padding of
NYU's border (it crops instead, as BTS). MiDaS published no training code.

Resumable: the iterator's state is Grain's `{"next_index": batches taken}` (`get_state` / `set_state`), the train
step count; `examples/finetune.py` saves it in each checkpoint's metadata and restores it, so that a resumed run
sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from beit_flax.evaluation.datasets import Item
from beit_flax.evaluation.protocols import KB_CROP_HW, kb_crop
from beit_flax.training.data import make_batch, resize_to_cover

TRAIN_CROPS = ("nyu_border", "kb")
NYU_BORDER = (45 / 480, 472 / 480, 43 / 640, 608 / 640)  # rows, columns: BTS's crop box (43, 45, 608, 472)


def _grain() -> Any:
    try:
        import grain
    except ImportError:
        raise ImportError('reading a dataset for training needs Grain: pip install "beit-flax[train]"') from None
    return grain


def fixed_crop(array: np.ndarray, crop: str | None) -> np.ndarray:
    """(H, W, ...) -> the dataset's fixed training crop (module doc); None: the whole array."""
    height, width = array.shape[:2]
    if crop is None:
        return array
    if crop == "nyu_border":
        top, bottom, left, right = (round(f * n) for f, n in zip(NYU_BORDER, (height, height, width, width)))
        return array[top:bottom, left:right]
    if crop == "kb":
        return kb_crop(array) if height >= KB_CROP_HW[0] and width >= KB_CROP_HW[1] else array
    raise ValueError(f"unknown training crop {crop!r}; one of {TRAIN_CROPS} or None")


def augment(item: Item, size: int, crop: str | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training sample: {"image": (S, S, 3) uint8, "depth": (S, S) float32 meters, "mask": (S, S) bool}, read,
    cropped, resized, randomly cropped and flipped (module doc). Raises the reader's DatasetError for a bad file."""
    sample = item.load()
    image, depth, valid = (fixed_crop(a, crop) for a in (sample.image, sample.depth, sample.valid))
    image, depth, valid = resize_to_cover(image, depth, valid, size)
    top = int(rng.integers(0, depth.shape[0] - size + 1))
    left = int(rng.integers(0, depth.shape[1] - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    image, depth, valid = image[window], depth[window], valid[window]
    if rng.random() < 0.5:
        image, depth, valid = image[:, ::-1], depth[:, ::-1], valid[:, ::-1]
    return {
        "image": np.ascontiguousarray(image),
        "depth": np.ascontiguousarray(depth, np.float32),
        "mask": np.ascontiguousarray(valid),
    }


def train_batches(
    items: Sequence[Item],
    *,
    size: int,
    batch_size: int,
    seed: int = 0,
    crop: str | None = None,
    target: str = "inverse_depth",
    workers: int = 4,
    prefetch: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Any:
    """An endless iterator of this process's training batches (the module doc's pipeline), each a `data.make_batch`
    dict of batch_size / process_count rows; a Grain `DatasetIterator` (`get_state`, `set_state`, `close`).

    batch_size: global (every process together), a multiple of the process count. seed: 0 .. 2**32 - 1.
    process_index / process_count: default `jax.process_index()` / `jax.process_count()`."""
    grain = _grain()
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not items:
        raise ValueError("no training items")
    if size < 1 or batch_size < 1 or batch_size % count or not 0 <= index < count:
        raise ValueError(f"need size >= 1 and a batch size {batch_size} that {count} processes split evenly")
    if not 0 <= seed < 2**32 or workers < 0 or prefetch < 1:
        raise ValueError(f"need 0 <= seed < 2**32, workers >= 0 and prefetch >= 1; got {seed}, {workers}, {prefetch}")
    if crop is not None and crop not in TRAIN_CROPS:
        raise ValueError(f"unknown training crop {crop!r}; one of {TRAIN_CROPS} or None")
    rows = batch_size // count
    stream = grain.MapDataset.source(list(items)).seed(seed).shuffle().repeat()
    samples = stream.random_map(lambda item, rng: augment(item, size, crop, rng))
    stack = lambda parts: make_batch(
        *(np.stack([p[k] for p in parts]) for k in ("image", "depth", "mask")), target=target
    )
    batches = samples.batch(rows, drop_remainder=True, batch_fn=stack)[index::count]
    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch if workers else 0)
    return iter(batches.to_iter_dataset(options))


def items_digest(items: Sequence[Item]) -> str:
    """A short digest of the items' keys in order: a resumed run checks that it reads the same training data."""
    return hashlib.sha256("\n".join(item.key for item in items).encode()).hexdigest()[:16]
