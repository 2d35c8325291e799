"""beit_flax.training.steps: the train and eval steps, the batch check against the model's input multiple, and remat.

One train state (finetune_helpers.tiny_state: a frozen block and a frozen reassemble stage, layer decay, clipping)
serves every model-level test, so the train step compiles once (shared with tests/test_checkpoints.py). The steps
are `training.train_step` / `training.eval_step` (what `training.jit_train_step` / `jit_eval_step` wrap) compiled
with `fast_jit`; examples/finetune.py runs them through `training.sharded_steps` (tests/multidevice/
test_sharded_training.py: on 8 devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetune_helpers import FROZEN, TINY, eval_step, fast_jit, flat, run, tiny_batch, tiny_state, train_step

from beit_flax import DPT, training
from beit_flax.models.dpt.encoder import Encoder


def test_a_few_steps_reduce_the_loss():
    _, losses = run(tiny_state(), [tiny_batch(seed=1)] * 6)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_frozen_subtrees_do_not_change():
    state0 = tiny_state()
    state, _ = run(state0, [tiny_batch(seed=s) for s in range(3)])
    before, after = flat(state0.params), flat(state.params)
    assert state0.frozen == {p for p in before if p.startswith(tuple(f + "/" for f in FROZEN))}
    for path in before:
        if path in state0.frozen:
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    changed = [p for p in before if p not in state0.frozen and not np.array_equal(after[p], before[p])]
    assert len(changed) == len(before) - len(state0.frozen)
    assert int(state.step) == 3


def test_eval_step_reports_the_train_loss_and_bounded_metrics():
    state0, batch = tiny_state(), tiny_batch(seed=3)
    metrics = jax.device_get(eval_step(state0, batch))
    _, step_metrics = train_step(state0, batch)
    assert metrics["loss"] == pytest.approx(float(step_metrics["loss"]), rel=1e-6)
    assert metrics["abs_rel"] >= 0 and 0 <= metrics["delta1"] <= 1 and np.isfinite(metrics["abs_rel"])


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="missing"):
        training.train_step(tiny_state(), {"image": np.zeros((1, 32, 32, 3), np.float32)})
    with pytest.raises(ValueError, match="the model's input multiple"):
        training.check_batch(tiny_batch(0, size=40), 16)
    with pytest.raises(ValueError, match=r"image \(1, 32, 32, 3\) must be \(B, H, W, 3\), inverse_depth \(1, 32\)"):
        training.check_batch(
            {"image": np.zeros((1, 32, 32, 3)), "inverse_depth": np.zeros((1, 32)), "mask": np.zeros((1, 32, 32))}, 16
        )


def test_batches_are_checked_against_the_states_input_multiple():
    """The steps check a batch against the state's input multiple (from the model's family), not a default: a
    state that says 32 refuses a 48 x 48 batch that 16 would take. (Every DPTConfig has patch size 16, the only
    one the decoder fits, so the state's field is changed by hand here.)"""
    state = tiny_state().replace(input_multiple=32)
    training.check_batch(tiny_batch(0, size=48), 16)
    for step in (training.train_step, training.eval_step):  # refused before anything is traced
        with pytest.raises(ValueError, match=r"image size \(48, 48\) is not a multiple of 32, the model's input"):
            step(state, tiny_batch(0, size=48))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        training.train_step(tiny_state(), tiny_batch(0, size=24))


def test_remat_gives_the_same_loss_and_gradients():
    """On the encoder, where the switch acts (the whole model's backward pass takes long to compile here)."""
    params = tiny_state().params
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, TINY.width)), jnp.float32)  # cls + 2x2 grid

    def loss_and_grads(remat: bool):
        def loss(encoder_params):
            hooked = Encoder(TINY, remat=remat).apply({"params": encoder_params}, tokens, (2, 2))
            return sum(jnp.mean(jnp.sin(h) * (k + 1)) for k, h in enumerate(hooked))

        return fast_jit(jax.value_and_grad(loss))(params["encoder"])

    (loss, grads), (loss_r, grads_r) = loss_and_grads(False), loss_and_grads(True)
    assert float(loss_r) == pytest.approx(float(loss), rel=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_r)  # same parameter paths
    for path, g in flat(grads).items():
        np.testing.assert_allclose(flat(grads_r)[path], g, rtol=1e-5, atol=1e-6 * np.abs(g).max(), err_msg=path)


def test_dpt_remat_switch_reaches_every_block():
    params = tiny_state().params
    images = jnp.zeros((1, 32, 32, 3), jnp.float32)
    jaxpr = lambda remat: str(jax.make_jaxpr(lambda p: DPT(TINY, remat=remat).apply({"params": p}, images))(params))
    assert jaxpr(True).count(" remat2[") == TINY.depth and " remat2[" not in jaxpr(False)  # jax.checkpoint
    shapes = lambda remat: jax.eval_shape(DPT(TINY, remat=remat).init, jax.random.key(0), images)
    assert jax.tree.structure(shapes(True)) == jax.tree.structure(shapes(False))
