"""models/precast.py: a 16-bit model's parameters stored in the dtype its program casts them to, changing no bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from beit_flax.batcher import Batcher
from beit_flax.models import registry
from beit_flax.models.precast import OTHER, cast_targets, precast
from beit_flax.params import init_params

FAMILIES = ("dpt", "depth_anything", "zoedepth")
# read by float32 islands or float32 arithmetic in a 16-bit model: never cast
KEPT = ("norm1/", "norm2/", "/norm/", "gamma_", "/ls1", "/ls2", "relative_position/table", "cls_token", "pos_embed")


def _images(shape_hw: tuple[int, int], batch: int = 1) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (batch, *shape_hw, 3)), jnp.float32)


@pytest.mark.parametrize("name", FAMILIES)
def test_precast_changes_no_bit_and_casts_only_what_every_use_casts(name):
    family = registry.FAMILIES[name]
    config = family.tiny
    model = family.build(config, dtype="bfloat16")
    params = init_params(config, seed=0, spread=0.05)  # every leaf non-constant: a wrongly cast one would show
    shapes = family.probe_shapes(config)
    cast = precast(model, params, shapes)
    flat = traverse_util.flatten_dict(cast, sep="/")
    stored = {path: leaf.dtype for path, leaf in flat.items()}
    kernels = [p for p in stored if p.endswith("/kernel")]
    assert sum(stored[p] == jnp.bfloat16 for p in kernels) >= len(kernels) // 2  # the bulk of the weights
    for path, dtype in stored.items():
        if any(k in path for k in KEPT) or path.startswith(("metric/", "projector_", "seed_projector", "conv2")):
            assert dtype == jnp.float32, path  # LayerNorm, layer scale, tables, ZoeDepth's float32 metric head
        assert dtype in (jnp.float32, jnp.bfloat16), path
    assert stored[next(p for p in stored if p.endswith("head/conv3/kernel"))] == jnp.float32  # the float32 island
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    m = family.input_multiple(config)
    for shape_hw in (*shapes, (3 * m, 2 * m)):  # the probes and a size neither traced
        images = _images(shape_hw)
        before, after = apply(params, images), apply(cast, images)
        assert float(jnp.max(jnp.abs(before))) > 1e-2  # not a degenerate map: a changed bit would show
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))


def test_a_float32_model_is_returned_untouched_without_tracing():
    family = registry.FAMILIES["dpt"]
    params = init_params(family.tiny)
    assert precast(family.build(family.tiny), params, [(0, 0)]) is params  # (0, 0) would fail to trace


def test_a_parameter_with_any_other_use_is_kept():
    """cast_targets follows pjit and scan bodies; a use that is not a 16-bit cast, or an output, keeps the leaf."""

    def program(only_cast, cast_and_added, scanned, carried, unused):
        a = jax.jit(jax.checkpoint(lambda w: w.astype(jnp.bfloat16)))(only_cast)  # jit and remat bodies followed
        b = cast_and_added.astype(jnp.bfloat16).astype(jnp.float32) + cast_and_added
        (c, _), ys = jax.lax.scan(
            lambda carry, x: ((carry[0] + 1, carry[1] * 2), x.astype(jnp.float16)), (0, carried), scanned
        )
        return a, b, ys, c

    jaxpr = jax.make_jaxpr(program)(*(jnp.ones((3, 2)),) * 5).jaxpr
    assert cast_targets(jaxpr) == [jnp.bfloat16, OTHER, jnp.float16, OTHER, None]


def test_the_batcher_places_a_16_bit_model_precast_with_the_same_maps():
    family = registry.FAMILIES["depth_anything"]
    config = family.tiny
    model = family.build(config, dtype="bfloat16")
    params = init_params(config, seed=3, spread=0.05)
    batcher = Batcher(model, params, batch_size=2)
    placed = traverse_util.flatten_dict(batcher.params, sep="/")
    assert placed["encoder/block_0/mlp/fc1/kernel"].dtype == jnp.bfloat16
    assert placed["encoder/block_0/norm1/scale"].dtype == jnp.float32
    side = family.probe_shapes(config)[1]
    images = np.asarray(_images(side, 2))
    got = dict(batcher.run(enumerate(images)))
    want = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images))
    for i in range(2):
        np.testing.assert_array_equal(got[i], want[i])


def test_remat_casts_what_the_plain_model_casts():
    """`remat=True` (training's knob, also usable at inference) wraps each block in a remat body: followed, so the
    same leaves are cast; `scan=True` stacks the blocks' parameters in the program, so those stay float32 (a stack
    is not a cast), with the same maps either way."""
    family = registry.FAMILIES["dpt"]
    config, shapes = family.tiny, family.probe_shapes(family.tiny)
    params = init_params(config, seed=1, spread=0.05)
    cast = {}
    for knobs in ({}, {"remat": True}, {"scan": True}):
        model = family.build(config, dtype="bfloat16", **knobs)
        flat = traverse_util.flatten_dict(precast(model, params, shapes), sep="/")
        cast[tuple(knobs)] = {path for path, leaf in flat.items() if leaf.dtype == jnp.bfloat16}
        images = _images(shapes[1])
        apply = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
        np.testing.assert_array_equal(
            np.asarray(apply(traverse_util.unflatten_dict(flat, sep="/"), images)), np.asarray(apply(params, images))
        )
    assert cast[("remat",)] == cast[()] and any("encoder/" in path for path in cast[()])
    assert not any("encoder/" in path for path in cast[("scan",)]) and cast[("scan",)] < cast[()]
