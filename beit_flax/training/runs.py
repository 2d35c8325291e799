"""What a fine-tuning run needs besides its steps (examples/finetune.py): the learning-rate schedule, the check that
a resumed run has the settings it was started with, and its data when that is not a benchmark dataset (`HeldOut`;
`benchmark.Benchmark` is the other kind)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from beit_flax.sharding import shard_batch
from beit_flax.training.data import Batch, DepthFolder, batch_indices, synthetic_scenes
from beit_flax.training.state import TrainState

LOADER_KEY = "loader"  # the training data iterator's state, in the checkpoints' metadata beside the run settings
HELD_OUT_SUMMARY = (("loss", "loss"), ("AbsRel", "abs_rel"), ("delta1", "delta1"))


def lr_schedule(steps: int, lr: float) -> optax.Schedule:
    """Linear warmup over 10% of the steps (at most 50), then cosine decay to 5% of `lr` at `steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=max(1, min(50, steps // 10)), decay_steps=max(steps, 1), end_value=0.05 * lr
    )


def changed_settings(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The settings that differ, as "name saved -> now" ("config" alone: it is long). The loader's state
    (`LOADER_KEY`) is where the run is, not a setting."""
    saved = {k: v for k, v in saved.items() if k != LOADER_KEY}
    names = [*settings, *(k for k in saved if k not in settings)]
    show = lambda d, k: repr(d[k]) if k in d else "(not recorded)"
    return [
        k if k == "config" else f"{k} {show(saved, k)} -> {show(settings, k)}"
        for k in names
        if saved.get(k, ...) != settings.get(k, ...)
    ]


class HeldOut:
    """Training data with held-out samples of the same kind (generated scenes, a `data.DepthFolder`): training rows
    by `data.batch_indices` (a pure function of the step), the eval step's loss and metrics on `eval_idx`.

    What a run's data source gives the training loop (`benchmark.Benchmark` gives the same): `batch(step)`,
    `evaluate(state)` (a dict), `line(result)` and `summary(before, after)` (text), `metadata()` (what a checkpoint
    saves of the source's position, beside the run settings), `close()`."""

    def __init__(self, dataset: Any, train_idx: np.ndarray, eval_idx: np.ndarray, *, batch_size: int, seed: int,
                 target: str, description: str = "") -> None:  # fmt: skip
        self.dataset, self.train_idx, self.eval_idx = dataset, train_idx, eval_idx
        self.batch_size, self.seed, self.target, self.description = batch_size, seed, target, description
        self.eval_step: Callable | None = None  # `start`'s
        self.mesh: Mesh | None = None

    @classmethod
    def open(cls, folder: Path | None, scenes: int, held_out: int, size: int, **kwargs: Any) -> HeldOut:
        """A `data.DepthFolder` (its last 10% of the files held out; OSError / ValueError if it cannot be read), or
        without `folder` `scenes` + `held_out` generated ones."""
        if folder is None:
            dataset = synthetic_scenes(scenes + held_out, size, seed=kwargs["seed"])
            said = f"rendered {scenes} + {held_out} held-out scenes at {size}px"
            return cls(dataset, np.arange(scenes), np.arange(scenes, scenes + held_out), description=said, **kwargs)
        dataset = DepthFolder(folder, size)
        count = len(dataset)
        held_out = max(1, count // 10) if count > 1 else 0
        train_idx = np.arange(count - held_out)
        eval_idx = np.arange(count - held_out, count) if held_out else train_idx
        said = f"{folder}: {len(train_idx)} training / {len(eval_idx)} held-out samples at {size}px"
        return cls(dataset, train_idx, eval_idx, description=said, **kwargs)

    def start(self, model: Any, shardings: TrainState, mesh: Mesh, eval_step: Callable, step: int, saved: dict) -> None:
        """Ready to evaluate with `eval_step` (`steps.sharded_steps`'s) on `mesh` (the arguments every source takes:
        `benchmark.Benchmark.start` needs the others)."""
        self.eval_step, self.mesh = eval_step, mesh

    def batch(self, step: int) -> Batch:
        rows = self.train_idx[batch_indices(len(self.train_idx), self.batch_size, step, self.seed)]
        return self.dataset.batch(rows, target=self.target)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Mean of the eval-step metrics over the held-out samples in full batches only (another shape would compile
        again, and might not split over the devices): the last partial batch is dropped, or repeated to a full one
        if it is all."""
        size, indices, target = self.batch_size, self.eval_idx, self.target
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
        chunks = [c for c in chunks if len(c) == size] or [np.resize(indices, size)]
        batches = (shard_batch(self.dataset.batch(c, target=target), self.mesh) for c in chunks)
        results = [jax.device_get(self.eval_step(state, batch)) for batch in batches]
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]}

    @staticmethod
    def line(m: dict[str, float]) -> str:
        rmse = f"  RMSE {m['rmse']:.4f} m" if "rmse" in m else ""
        return f"loss {m['loss']:.4f}  AbsRel {m['abs_rel']:.4f}{rmse}  delta1 {m['delta1']:.4f}"

    @staticmethod
    def summary(before: dict[str, float], after: dict[str, float]) -> str:
        return ", ".join(f"{n} {before[k]:.4f} -> {after[k]:.4f}" for n, k in HELD_OUT_SUMMARY)

    def metadata(self) -> dict[str, Any]:
        return {}  # the step is the position

    def close(self) -> None:
        pass
