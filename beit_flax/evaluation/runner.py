"""Scoring a dataset: a model run over it on every local device, or saved predictions, each image scored with the
protocol that fits (`Protocol`, `protocols`), then the mean over images (`summary`) and a per-image table (`csv_text`).

The model run (`model_rows`) gives each image the network's output at the network's resolution, for any family:
the family's processing is asked for one view of the whole image (no test-time padding or flip, where it has them:
ZoeDepth's `infer_pil` steps), its network input made on the host in worker threads, and the model run batched over
the devices (`Predictor.batcher`). The metric protocol adds ZoeDepth's flip averaging (`evaluate.py` `infer`): the
mirrored image is a second input, its output mirrored back and averaged in. The protocol then resizes that map to
the ground truth and scores it (`protocols`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from beit_flax.evaluation.datasets import Dataset, DatasetError, Item, Sample
from beit_flax.evaluation.datasets.files import read_npy, squeeze_2d
from beit_flax.evaluation.metrics import BAD_PIXEL, DEPTH_METRICS, average
from beit_flax.evaluation.protocols import (
    MetricSpec,
    RelativeSpec,
    kb_crop,
    metric_scores,
    relative_scores,
    to_disparity,
)
from beit_flax.pipeline import ordered_map

PROTOCOLS = ("auto", "metric", "relative")
DEPTH, INVERSE_DEPTH = "depth", "inverse depth"  # what a prediction map holds


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The protocol of one evaluation: "metric" (its `MetricSpec`) or "relative" (its `RelativeSpec`)."""

    kind: str
    metric: MetricSpec | None = None
    relative: RelativeSpec | None = None

    @property
    def flip(self) -> bool:
        return self.kind == "metric"  # ZoeDepth's evaluate.py averages the flipped image in; MiDaS' gist does not

    @property
    def names(self) -> tuple[str, ...]:
        return DEPTH_METRICS if self.kind == "metric" else (*DEPTH_METRICS, BAD_PIXEL)

    def describe(self) -> dict:
        return (self.metric if self.kind == "metric" else self.relative).describe()

    def prepare(self, sample: Sample) -> Sample:
        """The sample as this protocol feeds it to the model: KITTI's KB crop for the metric one."""
        if self.kind != "metric" or not self.metric.kb_crop:
            return sample
        try:
            crop = [np.ascontiguousarray(kb_crop(a)) for a in (sample.image, sample.depth, sample.valid)]
        except ValueError as err:
            raise DatasetError(str(err)) from None
        return Sample(*crop)

    def score(self, sample: Sample, prediction: np.ndarray, units: str) -> dict[str, float] | None:
        """One image's scores (the prediction (h, w) at any resolution, in `units`), None when no pixel counts."""
        if self.kind == "metric":
            return metric_scores(sample.depth, sample.valid, prediction, self.metric)
        disparity = to_disparity(prediction) if units == DEPTH else prediction
        return relative_scores(sample.depth, sample.valid, disparity, self.relative)


def choose_protocol(dataset: Dataset, wanted: str, units: str, depth_cap: float | None = None) -> Protocol:
    """The protocol for maps in `units` on `dataset`: "auto" is metric for depth maps where the dataset has a
    metric range, else relative. ValueError for a metric protocol the dataset or the maps cannot have."""
    if wanted not in PROTOCOLS:
        raise ValueError(f"unknown protocol {wanted!r}; one of {', '.join(PROTOCOLS)}")
    relative = dataset.relative
    if depth_cap is not None:
        relative = dataclasses.replace(relative, depth_cap=depth_cap, source="--depth-cap")
    if wanted == "metric" or (wanted == "auto" and units == DEPTH and dataset.metric is not None):
        if dataset.metric is None:
            raise ValueError(f"{dataset.name} has no metric protocol (no published depth range): use relative")
        if units != DEPTH:
            raise ValueError("a relative model's maps have no scale: the metric protocol needs metric depth")
        if depth_cap is not None:
            raise ValueError("--depth-cap is the relative protocol's; the metric one clips to the dataset's range")
        return Protocol("metric", metric=dataset.metric)
    return Protocol("relative", relative=relative)


@dataclasses.dataclass(frozen=True)
class Row:
    """One image's result: its scores (None: failed, or no pixel to score), or the error that stopped it."""

    key: str
    scores: dict[str, float] | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "ok" if self.scores else "empty"


def one_view(predictor: Any, size: int | None = None, square: bool = False) -> None:
    """Give `predictor` its family's processing with one network input per image that covers the whole image:
    without test-time padding or flip where the family has them, its default where it has neither (its options
    are then refused with ValueError, and the default has one view)."""
    family, config = predictor.family, predictor.batcher.config
    try:
        processing = family.processing(config, size=size, square=square, pad=False, flip=False)
    except ValueError:
        processing = family.processing(config, size=size, square=square)
    if processing.views != 1:
        raise ValueError(f"{family.name}'s processing gives {processing.views} views of an image, not one")
    predictor.processing = processing


def model_rows(
    predictor: Any, items: list[Item], protocol: Protocol, workers: int, on_row: Callable[[Row], None]
) -> list[Row]:
    """Run `predictor` (a `Predictor` whose processing is `one_view`'s) over `items`; each row is handed to
    `on_row` as it is scored (for the progress bar) and returned in `items` order."""
    units = INVERSE_DEPTH if predictor.output.up_to_scale else DEPTH
    views = 2 if protocol.flip else 1

    def decode(entry: tuple[int, Item]) -> tuple[int, Item, Sample | None, list[np.ndarray], str | None]:
        index, item = entry
        try:
            sample = protocol.prepare(item.load())
            predictor.check(*sample.image.shape[:2])
            images = [sample.image, np.ascontiguousarray(sample.image[:, ::-1])][:views]
            return index, item, sample, [predictor.inputs(image, index)[0][1] for image in images], None
        except (DatasetError, ValueError) as err:
            return index, item, None, [], str(err)
        except MemoryError:
            return index, item, None, [], f"{item.key}: out of memory"

    rows: dict[int, Row] = {}
    waiting: dict[int, tuple[Item, Sample, list]] = {}
    done: collections.deque[tuple[int, Row]] = collections.deque()

    def finish(index: int, row: Row) -> None:
        rows[index] = row
        on_row(row)

    def network_inputs(pool: ThreadPoolExecutor) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        limit = 2 * workers + predictor.batcher.batch_size
        for index, item, sample, inputs, error in ordered_map(decode, enumerate(items), pool, limit=limit):
            if error is not None:
                done.append((index, Row(item.key, error=error)))
                continue
            waiting[index] = (item, sample, [None] * views)
            for view, net_input in enumerate(inputs):
                yield (index, view), net_input

    def device_failed(keys: list[tuple[int, int]], err: Exception) -> None:
        for index in dict.fromkeys(index for index, _ in keys):
            if index in waiting:
                item = waiting.pop(index)[0]
                done.append((index, Row(item.key, error=f"inference failed ({type(err).__name__}: {str(err)[:200]})")))

    with ThreadPoolExecutor(workers, "beit-eval") as pool:
        for (index, view), output in predictor.batcher.run(network_inputs(pool), on_error=device_failed):
            while done:
                finish(*done.popleft())
            if index not in waiting:
                continue
            item, sample, outputs = waiting[index]
            outputs[view] = np.asarray(output, np.float32)
            if any(out is None for out in outputs):
                continue
            del waiting[index]
            # ZoeDepth's infer: 0.5 * (pred + flip(pred of the flipped image)), at the network's resolution
            prediction = outputs[0] if views == 1 else np.float32(0.5) * (outputs[0] + outputs[1][:, ::-1])
            finish(index, Row(item.key, protocol.score(sample, prediction, units)))
        while done:
            finish(*done.popleft())
    return [rows[i] for i in sorted(rows)]


def missing_predictions(folder: Path, items: Iterable[Item]) -> list[str]:
    """The `<key>.npy` paths under `folder` that are not there (or not regular files)."""
    return [f"{item.key}.npy" for item in items if not (folder / f"{item.key}.npy").is_file()]


def prediction_rows(
    folder: Path, items: list[Item], protocol: Protocol, units: str, workers: int, on_row: Callable[[Row], None]
) -> list[Row]:
    """Score saved maps: `folder/<key>.npy`, (h, w) (or (1, h, w), (h, w, 1)) at any resolution, in `units`."""

    def score(item: Item) -> Row:
        path = folder / f"{item.key}.npy"
        try:
            sample = protocol.prepare(item.load())
            prediction = squeeze_2d(read_npy(path), path).astype(np.float32)
            return Row(item.key, protocol.score(sample, prediction, units))
        except DatasetError as err:
            return Row(item.key, error=str(err))
        except MemoryError:
            return Row(item.key, error=f"{path}: out of memory")

    rows = []
    with ThreadPoolExecutor(workers, "beit-eval") as pool:
        for row in ordered_map(score, items, pool, limit=2 * workers):
            rows.append(row)
            on_row(row)
    return rows


def summary(rows: list[Row], protocol: Protocol, dataset: Dataset, root: Path, model: str) -> dict:
    """The result: dataset, protocol, counts, the mean of each metric over the scored images, and for the relative
    protocol the figure the MiDaS table reports ("headline")."""
    scored = [row.scores for row in rows if row.scores]
    metrics = average(scored, protocol.names)
    result = {
        "dataset": dataset.name,
        "root": str(root),
        "protocol": protocol.describe(),
        "count": len(scored),
        "failed": sum(row.status == "failed" for row in rows),
        "empty": sum(row.status == "empty" for row in rows),
        "model": model,
        "metrics": metrics,
    }
    if protocol.kind == "relative":
        result["headline"] = {protocol.relative.headline: metrics[protocol.relative.headline]}
    return result


def csv_text(rows: list[Row], protocol: Protocol) -> str:
    """One line per image: key, status, pixels scored, (relative: scale, shift), each metric, error."""
    extra = ("scale", "shift") if protocol.kind == "relative" else ()
    columns = ("key", "status", "pixels", *extra, *protocol.names, "error")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        scores = row.scores or {}
        values = {"key": row.key, "status": row.status, "error": row.error or "", **scores}
        writer.writerow([_cell(values.get(name, "")) for name in columns])
    return out.getvalue()


def _cell(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
