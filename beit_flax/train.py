"""Fine-tuning: train state, jitted train / eval steps, freezing, layer-wise lr decay, orbax checkpoints.

    model = DPT(config.replace(dtype="bfloat16"), remat=True)     # optional: bf16 compute, per-block remat
    state = create_train_state(model, params, optax.adamw(1e-5), layer_decay=0.9, clip_norm=1.0)
    # or freeze=BACKBONE (decoder only), freeze=("encoder/block_0", ...): no updates, no optimizer state
    state, metrics = jit_train_step(state, batch)                  # batch: see `check_batch`
    save_checkpoint("ckpt", state); state, _ = restore_checkpoint("ckpt", state)

bfloat16 is the reduced precision to train in: float16 would need loss scaling, which this module does not do.

`train_step` / `eval_step` are pure functions of (state, batch): `jit_train_step` is just `jax.jit` of them, and
`sharded_steps` jits them with in / out shardings for several devices and hosts (data parallel or FSDP):

    mesh = sharding.train_mesh()                                   # every device of every process
    shardings = sharding.state_shardings(state, mesh, fsdp=False)  # fsdp=True: split the large arrays too
    state = sharding.place(state, shardings)
    step, evaluate = sharded_steps(shardings, mesh)
    state, metrics = step(state, sharding.shard_batch(batch, mesh))  # batch: this process's rows

The model has no dropout, so the state carries no rng.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import serialization, struct, traverse_util
from flax.training import train_state

from beit_flax.config import DPTConfig
from beit_flax.losses import depth_metrics, ssi_loss
from beit_flax.sharding import batch_sharded, replicated
from beit_flax.weights import check_params, param_shapes

Batch = Mapping[str, jnp.ndarray]
BACKBONE = ("patch_embed", "encoder")  # the BEiT backbone: `freeze=BACKBONE` trains the DPT decoder only


class TrainState(train_state.TrainState):
    """flax TrainState (step, apply_fn, params, tx, opt_state) + the frozen parameter paths (static)."""

    frozen: frozenset[str] = struct.field(pytree_node=False, default=frozenset())


# --- parameters --------------------------------------------------------------------------------------------------


def init_params(config: DPTConfig, seed: int = 0) -> dict[str, Any]:
    """Random float32 parameters for `config`, made in numpy (no tracing or compiling, unlike `DPT.init`).

    Flax's default rules (lecun-normal kernels, zero biases, unit norms, cls token N(0, 0.02), zero relative-position
    tables, layer scale 0.1), except the head's last bias, 1.0: with 0 the final ReLU starts out zeroing most pixels,
    and a constant (e.g. all-zero) prediction has no gradient under the scale-and-shift-invariant loss. The loss is
    blind to that offset, so Adam lets it wander; 1.0 keeps it well away from the ReLU's dead zone.
    """
    rng = np.random.default_rng(seed)

    def leaf(path: str, shape: tuple[int, ...]) -> np.ndarray:
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            return rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape).astype(np.float32)
        if name == "cls_token":
            return rng.normal(0.0, 0.02, shape).astype(np.float32)
        value = {"scale": 1.0, "gamma_1": 0.1, "gamma_2": 0.1}.get(name, 0.0)
        return np.full(shape, 1.0 if path == "head/conv3/bias" else value, np.float32)

    flat = {tuple(p.split("/")): jnp.asarray(leaf(p, s)) for p, s in param_shapes(config).items()}
    return traverse_util.unflatten_dict(flat)


def _paths(params: Any) -> list[str]:
    return list(traverse_util.flatten_dict(params, sep="/"))


def _matches(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def frozen_paths(params: Any, freeze: Iterable[str]) -> frozenset[str]:
    """The parameter paths under any of the `freeze` prefixes ("encoder", "encoder/block_0", "head/conv3/bias").

    Raises ValueError for a prefix that matches nothing (a typo would otherwise silently train everything).
    """
    paths = _paths(params)
    freeze = [freeze] if isinstance(freeze, str) else list(freeze)
    unknown = [p for p in freeze if not any(_matches(path, p) for path in paths)]
    if unknown:
        tops = sorted({path.split("/")[0] for path in paths})
        raise ValueError(f"freeze: {unknown} match no parameter; top-level names are {tops}")
    return frozenset(path for path in paths if any(_matches(path, p) for p in freeze))


def layer_decay_scales(params: Any, depth: int, decay: float) -> Any:
    """Learning-rate multipliers, a tree like `params` (BEiT's layer-wise decay).

    encoder/block_i: decay^(depth - i); patch_embed (incl. cls token): decay^(depth + 1); decoder: 1.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")

    def scale(path: tuple[str, ...]) -> float:
        if path[0] == "patch_embed":
            return decay ** (depth + 1)
        if path[0] == "encoder":
            index = int(path[1].removeprefix("block_"))
            return decay ** (depth - index)
        return 1.0

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: scale(path) for path in flat})


def _scale_updates(scales: Any) -> optax.GradientTransformation:
    """Multiply each update by its leaf's scale: for optax optimizers, whose updates are linear in the learning
    rate, the same as giving each leaf the learning rate lr * scale."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, s: u * s, updates, scales))


def build_optimizer(
    optimizer: optax.GradientTransformation,
    params: Any,
    *,
    freeze: Iterable[str] = (),
    layer_decay: float | None = None,
    depth: int | None = None,
    clip_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, frozenset[str]]:
    """Wrap `optimizer`: clip the trainable gradients' global norm, freeze subtrees, decay lr by layer.

    Frozen leaves go to `optax.set_to_zero` through `optax.multi_transform`: no updates and no optimizer state (the
    inner optimizer sees them as `MaskedNode`). Returns (transformation, frozen paths).
    """
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    frozen = frozen_paths(params, freeze)
    inner = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer) if clip_norm else optimizer
    if frozen:
        labels = traverse_util.unflatten_dict(
            {tuple(p.split("/")): "frozen" if p in frozen else "train" for p in _paths(params)}
        )
        # the clip inside the "train" branch sees only trainable gradients, so frozen ones never enter the norm
        inner = optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    if layer_decay is not None:
        if depth is None:
            raise ValueError("layer_decay needs the encoder depth")
        inner = optax.chain(inner, _scale_updates(layer_decay_scales(params, depth, layer_decay)))
    return inner, frozen


def create_train_state(
    model: nn.Module,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    freeze: Iterable[str] = (),
    layer_decay: float | None = None,
    clip_norm: float | None = 1.0,
) -> TrainState:
    """A train state for `model` (a `DPT`) from float32 `params` and an optax optimizer, wrapped by
    `build_optimizer` (freeze, layer_decay, clip_norm; see there)."""
    config: DPTConfig = model.config
    check_params(config, params)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    tx, frozen = build_optimizer(
        optimizer, params, freeze=freeze, layer_decay=layer_decay, depth=config.depth, clip_norm=clip_norm
    )
    # step as an int32 array from the start: a Python 0 would be weakly typed and cost a second compilation
    return TrainState(
        step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx, opt_state=tx.init(params),
        frozen=frozen,
    )


# --- steps -------------------------------------------------------------------------------------------------------


def check_batch(batch: Batch, patch_size: int = 16) -> None:
    """A batch is {"image": (B, H, W, 3) float normalised as (x - 0.5) / 0.5, "inverse_depth": (B, H, W) float,
    "mask": (B, H, W) bool or 0/1}, H and W multiples of the patch size. Checked at trace time (shapes only)."""
    missing = {"image", "inverse_depth", "mask"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing {sorted(missing)}; it has {sorted(batch)}")
    image, target, mask = (jnp.shape(batch[k]) for k in ("image", "inverse_depth", "mask"))
    if len(image) != 4 or image[-1] != 3 or target != image[:3] or mask != image[:3]:
        raise ValueError(
            f"batch shapes: image {image} must be (B, H, W, 3), inverse_depth {target} and mask {mask} (B, H, W)"
        )
    if image[1] % patch_size or image[2] % patch_size:
        raise ValueError(f"image size {image[1:3]} is not a multiple of the patch size {patch_size}")


def loss_fn(params: Any, apply_fn: Any, batch: Batch) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """MiDaS loss of the model's prediction on `batch`: (scalar, {"data", "gradient", "pred" (B, H, W)})."""
    pred = apply_fn({"params": params}, batch["image"])
    loss, parts = ssi_loss(pred, batch["inverse_depth"], batch["mask"])
    return loss, {**parts, "pred": pred}


def _global_norm(grads: Any, frozen: frozenset[str]) -> jnp.ndarray:
    flat = traverse_util.flatten_dict(grads, sep="/")
    # frozen gradients left out, so XLA can drop their computation (the optimizer ignores them too)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for p, g in flat.items() if p not in frozen))


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimizer step. Returns the new state and {"loss", "data", "gradient", "grad_norm" (before clipping)}."""
    check_batch(batch)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.apply_fn, batch)
    metrics = {"loss": loss, "data": aux["data"], "gradient": aux["gradient"],
               "grad_norm": _global_norm(grads, state.frozen)}
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: Batch) -> dict[str, jnp.ndarray]:
    """Loss terms (batch values) and AbsRel / delta1 after alignment (means over the images with valid pixels)."""
    check_batch(batch)
    loss, aux = loss_fn(state.params, state.apply_fn, batch)
    per_image = depth_metrics(aux["pred"], batch["inverse_depth"], batch["mask"])
    has_pixels = per_image["valid"] > 0
    image_mean = lambda x: jnp.sum(jnp.where(has_pixels, x, 0.0)) / jnp.maximum(jnp.sum(has_pixels), 1)
    return {"loss": loss, "data": aux["data"], "gradient": aux["gradient"],
            "abs_rel": image_mean(per_image["abs_rel"]), "delta1": image_mean(per_image["delta1"])}


# No buffer donation: the caller may still hold the old state (or the params it was built from). For memory, use
# jax.jit(train_step, donate_argnums=0) and drop the old state.
jit_train_step = jax.jit(train_step)
jit_eval_step = jax.jit(eval_step)


def sharded_steps(
    shardings: TrainState, mesh: jax.sharding.Mesh, *, donate: bool = False,
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
    step = jax.jit(train_step, in_shardings=(shardings, data), out_shardings=(shardings, metrics),
                   donate_argnums=(0,) if donate else (), compiler_options=options)
    evaluate = jax.jit(eval_step, in_shardings=(shardings, data), out_shardings=metrics, compiler_options=options)
    return step, evaluate


# --- checkpoints -------------------------------------------------------------------------------------------------


def _manager(directory: str | os.PathLike, keep: int | None = None, *, create: bool = False) -> ocp.CheckpointManager:
    if not create and not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoint folder")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_checkpoint(
    directory: str | os.PathLike, state: TrainState, metadata: Mapping[str, Any] | None = None, *, keep: int = 3
) -> int:
    """Save params, optimizer state and step under `directory/<step>/` (orbax; the newest `keep` are kept), plus
    JSON `metadata` (e.g. the config). Blocks until written. Returns the step."""
    step = int(state.step)
    payload = serialization.to_state_dict({"step": state.step, "params": state.params, "opt_state": state.opt_state})
    with _manager(directory, keep, create=True) as manager:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(payload), metadata=ocp.args.JsonSave(dict(metadata or {}))
        ), force=True)
        manager.wait_until_finished()
    return step


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest saved step in `directory`, or None if there is none (or no directory)."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def checkpoint_metadata(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata saved with a checkpoint (default: the newest), read without restoring any array, e.g. to
    check that a run is resumed with the settings it was started with."""
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        return dict(manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"] or {})


def restore_checkpoint(
    directory: str | os.PathLike, state: TrainState, step: int | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """Restore a `save_checkpoint` into `state` (a fresh state built the same way: its model, optimizer and frozen
    set define the structure). Default: the newest step. Returns (state, metadata)."""
    template = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    target = serialization.to_state_dict(template)
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint to restore")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, target)),
                metadata=ocp.args.JsonRestore(),
            ))
        except (ValueError, KeyError, TypeError) as err:  # orbax reports a tree or shape mismatch in many ways
            raise ValueError(
                f"{directory} step {step}: does not fit this train state (another model, optimizer or frozen set?): "
                f"{str(err)[:500]}"
            ) from err
    # orbax returns arrays committed to the template's device; where the template's were not (a state fresh from
    # create_train_state), match that, since jit caches by committedness and would otherwise compile the step again
    like = lambda t, x: x if getattr(t, "committed", True) else jnp.asarray(np.asarray(x))
    values = jax.tree.map(like, target, restored["state"])
    return state.replace(**serialization.from_state_dict(template, values)), dict(restored["metadata"] or {})
