"""beit_flax.training.train: optimizer wrapping (freeze, layer decay, clipping), train / eval steps, remat, orbax resume.

One train state (tiny model; a frozen block and a frozen reassemble stage, layer decay, clipping) serves every
model-level test, so the train step compiles once. The steps are `training.train_step` / `training.eval_step` (what
`training.jit_train_step` / `jit_eval_step` wrap) compiled with `fast_jit`; examples/finetune.py runs them through
`training.sharded_steps` (tests/multidevice/test_sharded_training.py: on 8 devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from beit_flax import DPT, training
from beit_flax.params import init_params
from beit_flax.models.dpt.encoder import Encoder
from finetune_helpers import TINY, fast_jit, tiny_batch

FROZEN = ("encoder/block_0", "reassemble_1")


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, seed=0)


@pytest.fixture(scope="module")
def state0(params):
    return training.create_train_state(
        DPT(TINY), params, optax.adamw(1e-3, weight_decay=1e-4), freeze=FROZEN, layer_decay=0.8, clip_norm=1.0
    )


# --- optimizer wrapping, checked on the optimizer alone (no model compile) ---------------------------------------


def test_layer_decay_values(params):
    scales = flat(training.layer_decay_scales(params, depth=4, decay=0.5))
    for path, scale in scales.items():
        if path.startswith("patch_embed/"):
            assert scale == 0.5**5, path
        elif path.startswith("encoder/block_"):
            assert scale == 0.5 ** (4 - int(path.split("/")[1].removeprefix("block_"))), path
        else:
            assert scale == 1.0, path
    assert scales["encoder/block_3/mlp/fc1/kernel"] == 0.5 and scales["encoder/block_0/gamma_1"] == 0.5**4
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="layer_decay"):
            training.layer_decay_scales(params, 4, bad)


def test_sgd_update_is_lr_times_layer_scale_and_zero_when_frozen(params):
    tx, frozen = training.build_optimizer(
        optax.sgd(0.1), params, freeze=training.BACKBONE, layer_decay=0.5, depth=4, clip_norm=None
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates = flat(fast_jit(tx.update)(grads, tx.init(params), params)[0])
    assert frozen == {p for p in updates if p.startswith(("patch_embed/", "encoder/"))}
    for path, update in updates.items():
        expected = 0.0 if path in frozen else -0.1
        np.testing.assert_array_equal(update, np.full(update.shape, expected, np.float32), err_msg=path)

    tx, _ = training.build_optimizer(optax.sgd(0.1), params, layer_decay=0.5, depth=4, clip_norm=None)
    updates = flat(fast_jit(tx.update)(grads, tx.init(params), params)[0])
    np.testing.assert_allclose(updates["encoder/block_1/attn/proj/kernel"], -0.1 * 0.5**3, rtol=1e-7)
    np.testing.assert_allclose(updates["patch_embed/cls_token"], -0.1 * 0.5**5, rtol=1e-7)
    np.testing.assert_array_equal(updates["head/conv3/bias"], np.float32([-0.1]))


def test_frozen_params_have_no_optimizer_state(params):
    n_params = len(flat(params))
    tx, frozen = training.build_optimizer(optax.adam(1e-3), params, freeze=training.BACKBONE)
    n_frozen = len(frozen)
    assert 0 < n_frozen < n_params
    # adam keeps mu and nu per trainable leaf, plus one step count; nothing for frozen leaves (MaskedNode)
    assert len(jax.tree.leaves(tx.init(params))) == 2 * (n_params - n_frozen) + 1


def test_clipping_sees_only_trainable_gradients(params):
    tx, _ = training.build_optimizer(optax.sgd(1.0), params, freeze=("encoder",), clip_norm=1.0)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-4, jnp.float32), params)
    grads["encoder"] = jax.tree.map(lambda g: g + 1e6, grads["encoder"])  # huge, but frozen
    updates = flat(fast_jit(tx.update)(grads, tx.init(params), params)[0])  # jit: one compile, not one per op
    np.testing.assert_allclose(updates["head/conv1/kernel"], -1e-4, rtol=1e-6)  # under the norm: not clipped


def test_bad_arguments_are_refused(params):
    with pytest.raises(ValueError, match=r"freeze: \['encoder/block_9'\] match no parameter"):
        training.build_optimizer(optax.sgd(0.1), params, freeze=["encoder/block_9"])
    with pytest.raises(ValueError, match="clip_norm"):
        training.build_optimizer(optax.sgd(0.1), params, clip_norm=0.0)
    broken = dict(params, head={})
    with pytest.raises(ValueError, match="missing head/conv1/kernel"):
        training.create_train_state(DPT(TINY), broken, optax.sgd(0.1))
    with pytest.raises(ValueError, match="missing"):
        training.train_step(None, {"image": np.zeros((1, 32, 32, 3), np.float32)})
    with pytest.raises(ValueError, match="multiple of the patch size"):
        training.check_batch(tiny_batch(0, size=40))


# --- the model: train / eval steps -------------------------------------------------------------------------------


train_step, eval_step = fast_jit(training.train_step), fast_jit(training.eval_step)


def run(state, batches):
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def test_a_few_steps_reduce_the_loss(state0):
    batch = tiny_batch(seed=1)
    _, losses = run(state0, [batch] * 6)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_frozen_subtrees_do_not_change(state0):
    state, _ = run(state0, [tiny_batch(seed=s) for s in range(3)])
    before, after = flat(state0.params), flat(state.params)
    assert state0.frozen == {p for p in before if p.startswith(tuple(f + "/" for f in FROZEN))}
    for path in before:
        if path in state0.frozen:
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    changed = [p for p in before if p not in state0.frozen and not np.array_equal(after[p], before[p])]
    assert len(changed) == len(before) - len(state0.frozen)
    assert int(state.step) == 3


def test_resume_from_orbax_is_bit_identical(state0, tmp_path):
    batches = [tiny_batch(seed=10 + s) for s in range(4)]
    straight, _ = run(state0, batches)

    first, _ = run(state0, batches[:2])
    assert training.save_checkpoint(tmp_path, first, {"note": "half way"}) == 2
    assert training.latest_step(tmp_path) == 2
    restored, meta = training.restore_checkpoint(tmp_path, state0)  # a fresh state is the template
    assert meta == {"note": "half way"} and int(restored.step) == 2
    resumed, _ = run(restored, batches[2:])

    assert int(resumed.step) == int(straight.step) == 4
    for name in ("params", "opt_state"):
        a, b = jax.tree.leaves(getattr(straight, name)), jax.tree.leaves(getattr(resumed, name))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), name
    with pytest.raises(FileNotFoundError):
        training.restore_checkpoint(tmp_path / "empty", state0)


def test_checkpoint_metadata_and_a_mismatched_state(state0, params, tmp_path):
    training.save_checkpoint(tmp_path, state0, {"config": TINY.to_dict()})
    assert training.checkpoint_metadata(tmp_path) == {"config": TINY.to_dict()}  # readable before restoring
    other = training.create_train_state(DPT(TINY), params, optax.adamw(1e-3, weight_decay=1e-4), freeze=("encoder",))
    with pytest.raises(ValueError, match="does not fit this train state"):
        training.restore_checkpoint(tmp_path, other)
    assert training.latest_step(tmp_path / "missing") is None


def test_eval_step_reports_the_train_loss_and_bounded_metrics(state0):
    batch = tiny_batch(seed=3)
    metrics = jax.device_get(eval_step(state0, batch))
    _, step_metrics = train_step(state0, batch)
    assert metrics["loss"] == pytest.approx(float(step_metrics["loss"]), rel=1e-6)
    assert metrics["abs_rel"] >= 0 and 0 <= metrics["delta1"] <= 1 and np.isfinite(metrics["abs_rel"])


def test_remat_gives_the_same_loss_and_gradients(params):
    """On the encoder, where the switch acts (the whole model's backward pass takes long to compile here)."""
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


def test_dpt_remat_switch_reaches_every_block(params):
    images = jnp.zeros((1, 32, 32, 3), jnp.float32)
    jaxpr = lambda remat: str(jax.make_jaxpr(lambda p: DPT(TINY, remat=remat).apply({"params": p}, images))(params))
    assert jaxpr(True).count(" remat2[") == TINY.depth and " remat2[" not in jaxpr(False)  # jax.checkpoint
    shapes = lambda remat: jax.eval_shape(DPT(TINY, remat=remat).init, jax.random.key(0), images)
    assert jax.tree.structure(shapes(True)) == jax.tree.structure(shapes(False))
