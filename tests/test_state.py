"""beit_flax.training.state: the optimizer wrapping (frozen subtrees, layer-wise lr decay, clipping) and the state.

Checked on the optimizer alone, jitted with `fast_jit`: no model compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from finetune_helpers import FROZEN, TINY, fast_jit, flat, tiny_state

from beit_flax import DPT, training
from beit_flax.params import init_params


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, seed=0)


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
    with pytest.raises(ValueError, match="layer_decay needs the encoder depth"):
        training.build_optimizer(optax.sgd(0.1), params, layer_decay=0.9)
    broken = dict(params, head={})
    with pytest.raises(ValueError, match="missing head/conv1/kernel"):
        training.create_train_state(DPT(TINY), broken, optax.sgd(0.1))


def test_the_state_records_the_frozen_paths_and_the_patch_size(params):
    state = tiny_state()
    assert state.frozen == {p for p in flat(params) if p.startswith(tuple(f + "/" for f in FROZEN))}
    assert state.input_multiple == TINY.patch_size == 16 and int(state.step) == 0 and state.step.dtype == jnp.int32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    # static fields: not leaves, so jit sees them as part of the state's structure
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves((state.step, state.params, state.opt_state)))
