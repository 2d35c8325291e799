"""Shared pieces of the fine-tuning tests: the tiny config, batches, a quick-compiling jit, the jitted model-loss
gradient and the train state and jitted steps of tests/test_steps.py and tests/test_checkpoints.py (shared, so the
train step compiles once per test session).

`fast_jit` compiles with XLA's backend (LLVM) optimisation off: the same HLO and float semantics, about half the
compile time of a tiny-model backward pass (tens of seconds on two CPU cores), which dominates these tests.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
from flax import traverse_util
from tiny_config import TINY

from beit_flax import DPT, training
from beit_flax.params import init_params

SIZE = 32  # grid 2x2 against the 4x4 training grid: the relative-position tables are resized too


def tiny_batch(seed: int, batch: int = 2, size: int = SIZE) -> dict[str, np.ndarray]:
    """Random normalised images, a smooth random inverse-depth target and ~15% invalid pixels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    target = np.stack([0.5 + ys * rng.uniform(0.5, 2) + 0.3 * np.sin(6 * xs + rng.uniform(0, 6)) for _ in range(batch)])
    return {
        "image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
        "inverse_depth": target.astype(np.float32),
        "mask": rng.random((batch, size, size)) > 0.15,
    }


FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fun, **kwargs):
    return jax.jit(fun, compiler_options=FAST_COMPILE, **kwargs)


@functools.cache
def loss_and_grad():
    """jit(value_and_grad) of the MiDaS loss of DPT(TINY): (params, batch) -> (loss, grads)."""
    model = DPT(TINY)
    return fast_jit(jax.value_and_grad(lambda params, batch: training.loss_fn(params, model.apply, batch)[0]))


def flat(tree) -> dict[str, np.ndarray]:
    """{"encoder/block_0/attn/query/kernel": numpy array, ...}"""
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


FROZEN = ("encoder/block_0", "reassemble_1")


@functools.cache
def tiny_state() -> training.TrainState:
    """DPT(TINY) from init_params(seed=0), AdamW, FROZEN subtrees, layer decay 0.8, clipping at norm 1: one state for
    every model-level step and checkpoint test."""
    return training.create_train_state(
        DPT(TINY),
        init_params(TINY, seed=0),
        optax.adamw(1e-3, weight_decay=1e-4),
        freeze=FROZEN,
        layer_decay=0.8,
        clip_norm=1.0,
    )


train_step, eval_step = fast_jit(training.train_step), fast_jit(training.eval_step)


def run(state: training.TrainState, batches) -> tuple[training.TrainState, list[float]]:
    """`train_step` over `batches`: (the final state, the loss of every step)."""
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses
