"""8 devices (forced CPU devices, see conftest.py): the data-parallel and the FSDP train step equal the one-device
step (metrics, params and optimizer state after two steps), the FSDP layout really splits the large arrays and the
step keeps it, and a batch that does not split over the devices is refused.

The optimizer is SGD with momentum: its update is linear in the gradient, so a param difference measures the
gradient difference, which is what the sharding changes (the reduction order). Adam's first updates are about
lr * sign(g), which turns rounding noise in near-zero gradient elements into lr-sized differences. The head's last
bias is frozen: the loss is blind to it (see `params.init_params`), so its gradient is rounding noise.

Compiles four train / eval programs of the tiny model (one device, 8 devices x data parallel, x FSDP): about a
minute on two cores."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from finetune_helpers import FAST_COMPILE, TINY, fast_jit, tiny_batch
from flax import traverse_util
from jax.sharding import PartitionSpec

from beit_flax import DPT, training
from beit_flax.params import init_params
from beit_flax.sharding import fsdp_spec, place, shard_batch, state_shardings, train_mesh

DEVICES = 8
if jax.local_device_count() < DEVICES:
    pytest.skip(f"needs {DEVICES} local devices, found {jax.local_device_count()}", allow_module_level=True)

# per leaf: max|sharded - one device| / max|one device - initial| (error relative to how far the leaf moved); seen
# 6e-4 data parallel, 1.1e-3 FSDP, both in encoder/block_3 (the last block: small gradients). A state one step
# behind scores ~0.4.
TOLERANCE = 5e-3
METRIC_TOLERANCE = 2e-5  # relative, loss terms and grad norm; seen 7e-6
MIN_SIZE = 1024  # TINY's arrays are small: with the default 2**14 FSDP would split just one (patch_embed's kernel)
FREEZE = ("head/conv3/bias",)


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.fixture(scope="module")
def state0():
    params = init_params(TINY, seed=0)
    return training.create_train_state(DPT(TINY), params, optax.sgd(0.1, momentum=0.9), freeze=FREEZE)


@pytest.fixture(scope="module")
def batches():
    return [tiny_batch(seed, batch=DEVICES) for seed in (1, 2)]  # one 32 x 32 image per device


@pytest.fixture(scope="module")
def reference(state0, batches):
    """Two steps on one device (the whole batch): [state after 1, after 2], [metrics of step 1, of step 2]."""
    step = fast_jit(training.train_step)
    states, metrics = [], []
    state = state0
    for batch in batches:
        state, m = step(state, batch)
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


def worst_leaf_error(ours, theirs, start) -> tuple[float, str]:
    """max over leaves of max|ours - theirs| / max|theirs - start|, and that leaf's path."""
    ours, theirs, start = flat(ours), flat(theirs), flat(start)
    errors = {
        path: float(np.abs(ours[path] - theirs[path]).max() / np.abs(theirs[path] - start[path]).max())
        for path in theirs
        if path not in FREEZE
    }
    path = max(errors, key=errors.get)
    return errors[path], path


@pytest.mark.parametrize("fsdp", [False, True], ids=["data_parallel", "fsdp"])
def test_sharded_step_equals_one_device(state0, batches, reference, fsdp):
    (ref1, ref2), ref_metrics = reference
    mesh = train_mesh()
    assert mesh.size == DEVICES and mesh.axis_names == ("batch",)
    shardings = state_shardings(state0, mesh, fsdp=fsdp, min_size=MIN_SIZE)
    step, evaluate = training.sharded_steps(shardings, mesh, compiler_options=FAST_COMPILE)
    state = place(state0, shardings)
    metrics = []
    for batch in batches:
        state, m = step(state, shard_batch(batch, mesh))
        metrics.append(jax.device_get(m))

    worst_metric = max(abs(float(m[k]) / float(r[k]) - 1) for m, r in zip(metrics, ref_metrics) for k in r)
    worst, path = worst_leaf_error(state.params, ref2.params, state0.params)
    print(
        f"[{'fsdp' if fsdp else 'data parallel'}, {DEVICES} devices vs 1] metrics {worst_metric:.1e}, "
        f"params {worst:.1e} ({path})"
    )
    assert worst_metric <= METRIC_TOLERANCE and worst <= TOLERANCE
    trace = lambda s: jax.tree.leaves(s.opt_state)
    for ours, theirs in zip(trace(state), trace(ref2)):  # momentum traces: gradient-sized
        assert np.abs(np.asarray(ours) - theirs).max() <= TOLERANCE * np.abs(theirs).max()
    assert int(state.step) == 2
    # the measure can fail: a state one step behind is far outside the tolerance
    assert worst_leaf_error(state.params, ref1.params, state0.params)[0] > 100 * TOLERANCE

    # the new state keeps the layout it came in with (no silent re-replication), metrics replicated everywhere
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert leaf.sharding.spec == sharding.spec and len(leaf.sharding.device_set) == DEVICES
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(step(state, shard_batch(batches[0], mesh))[1]))
    assert step._cache_size() == 1  # so the steps after the first ran the same program (no recompilation)

    if fsdp:  # the harder layout: eval_step too (forward only, cheap to compile)
        ours = jax.device_get(evaluate(state, shard_batch(batches[0], mesh)))
        theirs = jax.device_get(fast_jit(training.eval_step)(ref2, batches[0]))
        assert max(abs(float(ours[k]) / float(theirs[k]) - 1) for k in theirs) <= METRIC_TOLERANCE


def test_fsdp_splits_large_params_and_adam_moments():
    mesh = train_mesh()
    state = training.create_train_state(DPT(TINY), init_params(TINY), optax.adam(1e-3), freeze=FREEZE)
    placed = place(state, state_shardings(state, mesh, fsdp=True, min_size=MIN_SIZE))
    params = traverse_util.flatten_dict(placed.params, sep="/")
    split = 0
    for path, leaf in params.items():
        spec = fsdp_spec(leaf.shape, DEVICES, MIN_SIZE)
        assert leaf.sharding.spec == spec, path
        shard = list(leaf.shape)
        if spec:
            split += 1
            shard[len(spec) - 1] //= DEVICES
        assert leaf.addressable_shards[0].data.shape == tuple(shard), path
        assert len(leaf.addressable_shards) == DEVICES
    assert split >= 50  # of 143: every array of >= MIN_SIZE elements with an axis that 8 divides
    assert params["encoder/block_0/mlp/fc1/kernel"].addressable_shards[0].data.shape == (32, 16)  # (32, 128)
    assert params["patch_embed/proj/kernel"].sharding.spec == PartitionSpec(None, None, None, "batch")
    assert params["encoder/block_0/mlp/fc1/bias"].sharding.is_fully_replicated  # 128 elements

    adam = [s for s in jax.tree.leaves(placed.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    assert len(adam) == 1
    for moments in (adam[0].mu, adam[0].nu):  # shaped, and so split, like the trainable params
        for path, leaf in traverse_util.flatten_dict(moments, sep="/").items():
            if not isinstance(leaf, optax.MaskedNode):
                assert leaf.sharding.spec == params[path].sharding.spec, path
                assert leaf.addressable_shards[0].data.shape == params[path].addressable_shards[0].data.shape
    assert adam[0].count.sharding.is_fully_replicated and placed.step.sharding.is_fully_replicated

    # the default threshold splits no vector; data parallel replicates everything
    assert sum(bool(s.spec) for s in jax.tree.leaves(state_shardings(state, mesh, fsdp=True))) == 3  # kernel, mu, nu
    assert not any(s.spec for s in jax.tree.leaves(state_shardings(state, mesh)))


def test_batches_that_do_not_split_are_refused():
    mesh = train_mesh()
    with pytest.raises(ValueError, match=r"batch size 7 is not a multiple of the 8 devices in the mesh.*use 8"):
        shard_batch(tiny_batch(0, batch=7), mesh)
    with pytest.raises(ValueError, match="one common leading"):
        shard_batch({"image": np.zeros((8, 32, 32, 3)), "mask": np.zeros((4, 32, 32))}, mesh)
    sharded = shard_batch(tiny_batch(0, batch=16), mesh)
    assert sharded["image"].sharding.spec == PartitionSpec("batch") and sharded["mask"].dtype == bool
    assert [s.data.shape for s in sharded["inverse_depth"].addressable_shards] == [(2, 32, 32)] * DEVICES
    assert train_mesh(2).size == 2
