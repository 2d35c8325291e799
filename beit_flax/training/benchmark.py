"""Fine-tuning on a benchmark dataset (`Benchmark`, examples/finetune.py --dataset): its training split through
`datasets.train_batches`, and the model being trained scored on its test split exactly as `beit-depth evaluate`
scores a weights file (`TestSplit`; `beit_flax.evaluation`): the family's processing with one view per image
(`runner.one_view`), the protocol that fits the family's maps (`runner.choose_protocol` "auto": ZoeDepth's metric
one for metric depth where the dataset has a range, MiDaS' relative one for relative inverse depth), ZoeDepth's flip
averaging for the metric one, every image scored and the mean taken (`runner.model_rows`, `runner.summary`).

    scorer = TestSplit(model, shardings.params, mesh, batch_size, dataset, root, items)
    result = scorer.score(state.params)   # evaluate's JSON result: {"protocol", "count", "metrics", ...}

The model runs on the training mesh with the train state's own parameter layout (replicated or FSDP: nothing is
gathered to one device), one compiled program per network input shape; every process scores the whole split (each
feeds the same batches, split over every device, and gets the whole output back).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from beit_flax.evaluation.datasets import DATASETS, Dataset, DatasetError, Item, open_dataset
from beit_flax.evaluation.runner import DEPTH, INVERSE_DEPTH, choose_protocol, model_rows, one_view, summary
from beit_flax.models import registry
from beit_flax.sharding import batch_sharded, pad_batch, replicated
from beit_flax.training.data import Batch
from beit_flax.training.datasets import items_digest, train_batches
from beit_flax.training.runs import LOADER_KEY
from beit_flax.training.state import TrainState
from beit_flax.transforms import DEFAULT_MAX_PIXELS, check_net_input

HEADLINE = ("abs_rel", "rmse", "a1")  # what a log line shows (the result holds every metric)


class _StateBatcher:
    """`Batcher.run`'s contract over parameters laid out for training: (meta, net input (H', W', 3)) ->
    (meta, output (H', W') float32), batches of one shape, the last padded with zeros (their outputs dropped)."""

    def __init__(self, model: nn.Module, param_shardings: Any, mesh: Mesh, batch_size: int) -> None:
        self.config, self.batch_size, self.params = model.config, batch_size, None
        self.sharding = batch_sharded(mesh)
        apply = lambda params, images: model.apply({"params": params}, images)
        self.apply = jax.jit(apply, in_shardings=(param_shardings, self.sharding), out_shardings=replicated(mesh))

    def run(self, items: Iterable[tuple[Any, np.ndarray]], on_error=None) -> Iterator[tuple[Any, np.ndarray]]:
        pending: dict[tuple[int, ...], list[tuple[Any, np.ndarray]]] = {}
        for meta, image in items:
            bucket = pending.setdefault(image.shape, [])
            bucket.append((meta, image))
            if len(bucket) == self.batch_size:
                yield from self._batch(pending.pop(image.shape), on_error)
        for shape in list(pending):
            yield from self._batch(pending.pop(shape), on_error)

    def _batch(self, bucket: list[tuple[Any, np.ndarray]], on_error) -> Iterator[tuple[Any, np.ndarray]]:
        metas, arrays = zip(*bucket)
        batch = pad_batch(arrays, self.batch_size)
        try:  # every process holds the whole batch: each places its devices' rows
            placed = jax.make_array_from_callback(batch.shape, self.sharding, lambda index: batch[index])
            # replicated: this process's first copy is the whole output (np.asarray refuses an array that spans
            # other processes' devices)
            depth = np.asarray(self.apply(self.params, placed).addressable_data(0), np.float32)
        except Exception as err:  # e.g. out of memory: those images fail, the others are scored
            if on_error is None:
                raise
            on_error(list(metas), err)
            return
        yield from zip(metas, depth[: len(metas)])


class _StatePredictor:
    """The part of `predictor.Predictor` that `runner.model_rows` and `runner.one_view` use."""

    def __init__(self, batcher: _StateBatcher) -> None:
        self.batcher, self.family = batcher, registry.of_config(batcher.config)
        self.output = self.family.output(batcher.config)
        self.processing = None  # one_view's

    def check(self, height: int, width: int) -> None:
        check_net_input(self.processing.network_size(height, width), DEFAULT_MAX_PIXELS)

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[Any, np.ndarray]]:
        return self.processing.inputs(image, index)


class TestSplit:
    """Scores parameters laid out as `param_shardings` on `mesh` on `items` (the test split of `dataset` under
    `root`), `batch_size` images per device step (a multiple of the mesh size), `workers` reading threads."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        model: nn.Module,
        param_shardings: Any,
        mesh: Mesh,
        batch_size: int,
        dataset: Dataset,
        root: Path,
        items: Sequence[Item],
        workers: int = 4,
    ) -> None:
        self.predictor = _StatePredictor(_StateBatcher(model, param_shardings, mesh, batch_size))
        one_view(self.predictor)
        units = INVERSE_DEPTH if self.predictor.output.up_to_scale else DEPTH
        self.protocol = choose_protocol(dataset, "auto", units)
        self.dataset, self.root, self.items, self.workers = dataset, root, list(items), max(1, workers)

    def score(self, params: Any) -> dict[str, Any]:
        """evaluate's result for `params` (`runner.summary`), plus "errors": the first few failed images."""
        self.predictor.batcher.params = params
        try:
            rows = model_rows(self.predictor, self.items, self.protocol, self.workers, lambda row: None)
        finally:
            self.predictor.batcher.params = None  # a donating train step invalidates these buffers
        result = summary(rows, self.protocol, self.dataset, self.root, "the model being trained")
        result["errors"] = [f"{row.key}: {row.error}" for row in rows if row.error][:3]
        return result


def describe(result: dict[str, Any]) -> str:
    """A log line: the protocol, the image count and the headline metrics of a `TestSplit.score` result."""
    metrics = result["metrics"]
    shown = [*HEADLINE, *result.get("headline", {})]
    terms = "  ".join(f"{name} {metrics[name]:.4f}" for name in dict.fromkeys(shown))
    return f"{result['protocol']['name']} protocol, {result['count']} {result['dataset']} test images: {terms}"


class Benchmark:
    """A benchmark dataset as a fine-tuning run's data, with the interface of `runs.HeldOut`: opened (its splits read;
    DatasetError for missing files, or splits that share images), `start`ed (reading and scoring), then `batch`,
    `evaluate` (each result also a JSON line {"step", evaluate's result} in `record`; OSError naming it when it
    cannot be written; DatasetError when a test image fails), `metadata` (the loader's state, for the checkpoint) and
    `close`. `loader` holds `datasets.train_batches`'s arguments but the items."""

    def __init__(
        self, name: str, root: str | Path, train_split: Path | None, split: Path | None, limit: int | None, *,
        record: Path, **loader: Any,
    ) -> None:  # fmt: skip
        self.dataset, self.root, self.record, self.loader_args = DATASETS[name], Path(root), record, loader
        self.train_items = open_dataset(name, self.root, train_split, part="train")
        self.test_items = open_dataset(name, self.root, split)[:limit]
        shared = {item.key for item in self.train_items} & {item.key for item in self.test_items}
        if shared:  # e.g. ROOT is NYU's sync/ folder itself, which the test reader also takes
            raise DatasetError(f"{root}: the training and test splits share {len(shared)} images, e.g. {min(shared)}")
        self.description = f"{name}: {len(self.train_items)} training / {len(self.test_items)} test images"
        self.loader: Any = None
        self.scorer: TestSplit | None = None

    def settings(self) -> dict[str, Any]:
        """What a resumed run must read again: the dataset and its training items."""
        return {"name": self.dataset.name, "train": len(self.train_items), "keys": items_digest(self.train_items)}

    def start(
        self, model: nn.Module, shardings: TrainState, mesh: Mesh, eval_step: Any, step: int, saved: dict
    ) -> None:
        """Score with `model` on `mesh` (params laid out as `shardings.params`); read training batches from `step`
        on, where the checkpoint's metadata `saved` says the loader was. ImportError without Grain."""
        batch_size = self.loader_args["batch_size"]
        self.scorer = TestSplit(model, shardings.params, mesh, batch_size, self.dataset, self.root, self.test_items)
        workers = self.loader_args.get("workers", 4)
        self.loader = train_batches(
            self.train_items, crop=self.dataset.train_crop, prefetch=max(2, workers), **self.loader_args
        )
        position = saved.get(LOADER_KEY, {"next_index": step})
        if position != {"next_index": step}:
            raise ValueError(f"the checkpoint's loader state {position} is not at its step {step}")
        self.loader.set_state(position)

    def batch(self, step: int) -> Batch:
        return next(self.loader)  # the loader is at `step`: `start` put it there, and every step takes one

    def evaluate(self, state: TrainState) -> dict[str, Any]:
        result = self.scorer.score(state.params)
        line = json.dumps({"step": int(state.step), **result}, allow_nan=True) + "\n"
        try:  # a resumed run appends (its first line repeats a step, with the same scores)
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with self.record.open("a", encoding="utf-8") as file:
                file.write(line)
        except OSError as err:
            raise OSError(err.errno, f"cannot write {self.record}: {err.strerror or err}") from None
        if result["failed"]:
            raise DatasetError(f"{result['failed']} test images failed, e.g. {result['errors'][0]}")
        return result

    line = staticmethod(lambda result: describe(result))

    @staticmethod
    def summary(before: dict[str, Any], after: dict[str, Any]) -> str:
        names = dict.fromkeys([*HEADLINE, *after.get("headline", {})])
        b, a = before["metrics"], after["metrics"]
        return f"{after['protocol']['name']} protocol: " + ", ".join(f"{n} {b[n]:.4f} -> {a[n]:.4f}" for n in names)

    def metadata(self) -> dict[str, Any]:
        return {LOADER_KEY: self.loader.get_state()}

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
