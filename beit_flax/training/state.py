"""The train state: parameters, optimizer (clipping, frozen subtrees, layer-wise learning-rate decay) and step.

    model = DPT(config, dtype="bfloat16", remat=True)               # optional: bf16 compute, per-block remat
    state = create_train_state(model, params, optax.adamw(1e-5), layer_decay=0.9, clip_norm=1.0)
    # or freeze=BACKBONE (decoder only), freeze=("encoder/block_0", ...): no updates, no optimizer state

bfloat16 is the reduced precision to train in: float16 would need loss scaling, which is not done here. The model has
no dropout, so the state carries no rng.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util
from flax.training import train_state

from beit_flax.models import registry
from beit_flax.params import check_params
from beit_flax.training.losses import LOSSES

BACKBONE = registry.named(registry.DEFAULT).backbone  # MiDaS' BEiT: `freeze=BACKBONE` trains the decoder only
LOSS_TARGETS = {name: target for name, (_, target) in LOSSES.items()}  # a loss -> the batch key of its target


class TrainState(train_state.TrainState):
    """flax TrainState (step, apply_fn, params, tx, opt_state) + the frozen parameter paths, what the H and W of
    the model's inputs must be multiples of (its family's `input_multiple`: the patch size for MiDaS, 32 for
    ZoeDepth; static: batches are checked against it) and the loss (`LOSS_TARGETS`)."""

    frozen: frozenset[str] = struct.field(pytree_node=False, default=frozenset())
    input_multiple: int = struct.field(pytree_node=False, default=16)
    loss: str = struct.field(pytree_node=False, default="midas")


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


def backbone(model: nn.Module) -> tuple[str, str]:
    """The parameter paths of `model`'s transformer backbone (its family's `backbone`), for `freeze=`: training
    with them frozen trains the decoder (and any head) only."""
    return registry.of_model(model).backbone


def layer_decay_scales(params: Any, depth: int, decay: float, backbone_path: str = "") -> Any:
    """Learning-rate multipliers, a tree like `params` (BEiT's layer-wise decay).

    Under `backbone_path` (the family's: "" for MiDaS, "core/" for ZoeDepth): encoder/block_i: decay^(depth - i);
    patch_embed (incl. cls token): decay^(depth + 1). Everything else (decoder, heads): 1.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")
    root = tuple(p for p in backbone_path.split("/") if p)

    def scale(path: tuple[str, ...]) -> float:
        if path[: len(root)] != root or len(path) <= len(root):
            return 1.0
        path = path[len(root) :]
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
    backbone_path: str = "",
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
        inner = optax.chain(inner, _scale_updates(layer_decay_scales(params, depth, layer_decay, backbone_path)))
    return inner, frozen


def create_train_state(
    model: nn.Module,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    freeze: Iterable[str] = (),
    layer_decay: float | None = None,
    clip_norm: float | None = 1.0,
    loss: str | None = None,
) -> TrainState:
    """A train state for `model` (any family's module: `DPT`, `ZoeDepth`, ...) from float32 `params` and an optax
    optimizer, wrapped by `build_optimizer` (freeze, layer_decay, clip_norm; see there).

    loss: None for the family's `default_loss` ("midas" for MiDaS, "silog" for ZoeDepth's meters), or "midas"
    (scale-and-shift-invariant, least squares, on batches' "inverse_depth"), "ssimae" / "ssitrim" (MiDaS' median /
    MAD variants, which keep the sign of depth from a random init: see `losses`), "silog" (ZoeDepth's) or "silog-da"
    (Depth Anything's; both on metric "depth" in meters). `backbone(model)` gives the paths for `freeze=` to train
    the decoder only.
    """
    family = registry.of_model(model)
    loss = family.default_loss(model.config) if loss is None else loss
    if loss not in LOSS_TARGETS:
        raise ValueError(f"loss must be one of {sorted(LOSS_TARGETS)}, got {loss!r}")
    config = model.config
    check_params(config, params)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    tx, frozen = build_optimizer(
        optimizer,
        params,
        freeze=freeze,
        layer_decay=layer_decay,
        depth=family.encoder_depth(config),
        backbone_path=family.backbone_path,
        clip_norm=clip_norm,
    )
    # step as an int32 array from the start: a Python 0 would be weakly typed and cost a second compilation
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        frozen=frozen,
        input_multiple=family.input_multiple(config),
        loss=loss,
    )
