"""Jitted train and eval steps: pure functions of (state, batch), for one device or sharded over many.

    state, metrics = jit_train_step(state, batch)                  # batch: see `data.check_batch`

`jit_train_step` is just `jax.jit` of `train_step`; `sharded_steps` jits it with in / out shardings for several
devices and hosts (data parallel or FSDP):

    mesh = sharding.train_mesh()                                   # every device of every process
    shardings = sharding.state_shardings(state, mesh, fsdp=False)  # fsdp=True: split the large arrays too
    state = sharding.place(state, shardings)
    step, evaluate = sharded_steps(shardings, mesh)
    state, metrics = step(state, sharding.shard_batch(batch, mesh))  # batch: this process's rows
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from beit_flax.sharding import batch_sharded, replicated
from beit_flax.training.data import Batch, check_batch
from beit_flax.training.losses import LOSSES, depth_metrics, metric_depth_metrics
from beit_flax.training.state import LOSS_TARGETS, TrainState


def loss_fn(
    params: Any, apply_fn: Any, batch: Batch, loss: str = "midas"
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The loss of the model's prediction on `batch`: (scalar, {its terms..., "pred" (B, H, W)}).

    loss: "midas" (`ssi_loss` on batch["inverse_depth"]: terms "data", "gradient"), "ssimae" / "ssitrim"
    (`ssimae_loss` / `ssitrim_loss`, the same target, term "data") or "silog" / "silog-da" (`silog_loss`, ZoeDepth's,
    / `silog_da_loss`, Depth Anything's, on batch["depth"] in meters: term "silog").
    """
    pred = apply_fn({"params": params}, batch["image"])
    terms, target = LOSSES[loss]
    value, parts = terms(pred, batch[target], batch["mask"])
    return value, {**parts, "pred": pred}


def _global_norm(grads: Any, frozen: frozenset[str]) -> jnp.ndarray:
    flat = traverse_util.flatten_dict(grads, sep="/")
    # frozen gradients left out, so XLA can drop their computation (the optimizer ignores them too)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for p, g in flat.items() if p not in frozen))


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimizer step with the state's loss. Returns the new state and {"loss", the loss's terms ("data",
    "gradient" for "midas"; "silog"), "grad_norm" (before clipping)}."""
    check_batch(batch, state.input_multiple, LOSS_TARGETS[state.loss])
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.apply_fn, batch, state.loss)
    terms = {k: v for k, v in aux.items() if k != "pred"}
    metrics = {"loss": loss, **terms, "grad_norm": _global_norm(grads, state.frozen)}
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, jnp.ndarray]:
    """Loss terms (batch values) and the depth metrics (means over the images with valid pixels): losses on inverse
    depth, AbsRel / delta1 after alignment; losses on depth in meters ("silog", "silog-da"), AbsRel / RMSE
    (meters) / delta1 of the metric depth as it is."""
    target = LOSS_TARGETS[state.loss]
    check_batch(batch, state.input_multiple, target)
    loss, aux = loss_fn(state.params, state.apply_fn, batch, state.loss)
    metrics = metric_depth_metrics if target == "depth" else depth_metrics
    per_image = metrics(aux["pred"], batch[target], batch["mask"])
    has_pixels = per_image.pop("valid") > 0
    image_mean = lambda x: jnp.sum(jnp.where(has_pixels, x, 0.0)) / jnp.maximum(jnp.sum(has_pixels), 1)
    terms = {k: v for k, v in aux.items() if k != "pred"}
    return {"loss": loss, **terms, **{k: image_mean(v) for k, v in per_image.items()}}


# No buffer donation: the caller may still hold the old state (or the params it was built from). For memory, use
# jax.jit(train_step, donate_argnums=0) and drop the old state.
jit_train_step = jax.jit(train_step)
jit_eval_step = jax.jit(eval_step)


def sharded_steps(
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    donate: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> tuple[Callable[..., tuple[TrainState, dict[str, jnp.ndarray]]], Callable[..., dict[str, jnp.ndarray]]]:
    """(train_step, eval_step) jitted for a state laid out as `shardings` (`sharding.state_shardings`, same mesh)
    and batches split over `mesh` (`sharding.shard_batch`); the new state keeps `shardings`, metrics replicated.

    The loss is one value of the whole global batch (its sums run over every device's pixels), so the gradient
    that XLA's partitioner derives from these shardings is already reduced over all devices: it inserts the
    collectives (all-reduces of the gradients; with FSDP also all-gathers of each split weight where it is used,
    and each device keeps its slice of the reduced gradient), and no psum is written here. `donate=True` reuses the
    old state's buffers for the new one (the old state is then invalid).
    """
    data, metrics = batch_sharded(mesh), replicated(mesh)
    options = dict(compiler_options) if compiler_options else None
    step = jax.jit(
        train_step,
        in_shardings=(shardings, data),
        out_shardings=(shardings, metrics),
        donate_argnums=(0,) if donate else (),
        compiler_options=options,
    )
    evaluate = jax.jit(eval_step, in_shardings=(shardings, data), out_shardings=metrics, compiler_options=options)
    return step, evaluate
