"""`DPT` input validation and output contract on a tiny config (random init; numerics are covered per module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_config import TINY as CFG

from beit_flax.models.dpt.dpt import DPT
from beit_flax.params import init_params


@pytest.fixture(scope="module")
def params():
    # spread: every parameter random (the plain init leaves the relative-position tables at zero)
    return init_params(CFG, seed=1, spread=0.2)


@pytest.mark.parametrize(
    "shape,dtype,needle",
    [
        ((64, 64, 3), np.float32, "(64, 64, 3)"),  # rank 3
        ((1, 64, 64, 4), np.float32, "(1, 64, 64, 4)"),  # 4 channels
        ((1, 3, 64, 64), np.float32, "(1, 3, 64, 64)"),  # NCHW
        ((1, 72, 64, 3), np.float32, "(1, 72, 64, 3)"),  # H not a multiple of 16
        ((1, 64, 40, 3), np.float32, "(1, 64, 40, 3)"),  # W not a multiple of 16
        ((1, 8, 64, 3), np.float32, "(1, 8, 64, 3)"),  # smaller than one patch
        ((1, 64, 64, 3), np.uint8, "uint8"),  # int dtype
        ((1, 64, 64, 3), np.int32, "int32"),
    ],
)
def test_rejects_bad_inputs(params, shape, dtype, needle):
    with pytest.raises(ValueError) as info:
        DPT(CFG).apply({"params": params}, np.zeros(shape, dtype))
    assert needle in str(info.value)


def test_output_shape_dtype_non_square_multiple_of_16(params):
    # 48 x 80: multiples of 16 but not of 32 (grid 3 x 5, odd, so the fusion sizes are not exact doublings)
    images = jax.random.uniform(jax.random.key(2), (2, 48, 80, 3), jnp.float32, -1.0, 1.0)
    depth = jax.jit(lambda p, x: DPT(CFG).apply({"params": p}, x))(params, images)
    assert depth.shape == (2, 48, 80)
    assert depth.dtype == jnp.float32
    depth = np.asarray(depth)
    assert np.isfinite(depth).all() and (depth >= 0).all()
    assert depth.std() > 0
    assert not np.allclose(depth[0], depth[1])  # batch elements are independent


def test_execution_switches_keep_params_and_values(params):
    """scan / remat change how the model runs, not what it computes or which params it has. (Which kernel each
    `attention` knob picks is tested in test_attention.py: on this CPU every knob but "cudnn" runs the same ops.)"""
    images = jax.random.uniform(jax.random.key(3), (1, 48, 80, 3), jnp.float32, -1.0, 1.0)
    shapes = lambda model: jax.tree.map(lambda s: s.shape, jax.eval_shape(model.init, jax.random.key(0), images))
    reference = np.asarray(jax.jit(DPT(CFG).apply)({"params": params}, images))
    for switches in ({"scan": True}, {"scan": True, "remat": True}, {"remat": True}):
        model = DPT(CFG, **switches)
        assert shapes(model) == shapes(DPT(CFG)), switches
        ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
        assert np.abs(ours - reference).max() <= 1e-6 * np.abs(reference).max(), switches


def test_unknown_attention_implementation():
    with pytest.raises(ValueError, match="attention must be one of"):
        DPT(CFG, attention="flash")


def _precisions(model, images, params) -> list[str]:
    """The `precision=` of every dot / conv in the traced model."""
    jaxpr = str(jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(params, images))
    return [line.strip() for line in jaxpr.splitlines() if line.strip().startswith("precision=")]


def test_float32_traces_at_highest_matmul_precision(params):
    """GPUs / TPUs would otherwise round fp32 matmul inputs (TF32 / bf16 passes): parity needs HIGHEST, unless the
    user asks jax for less; 16-bit compute keeps the backend default except on its float32 islands (the head's last
    conv, the relative-position table resize: one per block at a grid other than the training one)."""
    images = jnp.zeros((1, 32, 32, 3), jnp.float32)
    precisions = _precisions(DPT(CFG), images, params)
    assert len(precisions) > 6 * CFG.depth  # q, k, v, proj, fc1, fc2 and both attention products per block
    assert set(precisions) == {"precision=(Precision.HIGHEST, Precision.HIGHEST)"}
    with jax.default_matmul_precision("tensorfloat32"):
        assert not any("HIGHEST" in p for p in _precisions(DPT(CFG), images, params))
    half = _precisions(DPT(CFG, dtype="bfloat16"), images, params)
    highest = sum("HIGHEST" in p for p in half)
    assert 1 <= highest <= 1 + 2 * CFG.depth and len(half) - highest >= 6 * CFG.depth, half


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_compute(params, dtype):
    """16-bit compute: float32 output, the head's last conv in float32, near the float32 model. The bound is loose:
    a tiny model with N(0, 0.2) weights everywhere amplifies rounding (bf16 ~3% median here, fp16 ~0.5%), but a
    broken 16-bit path (overflow, a dropped cast) is off by O(1). The full-size figure is in the README."""
    images = jax.random.uniform(jax.random.key(4), (1, 48, 80, 3), jnp.float32, -1.0, 1.0)
    half = jax.jit(DPT(CFG, dtype=dtype).apply)({"params": params}, images)
    full = np.asarray(jax.jit(DPT(CFG).apply)({"params": params}, images))
    assert half.dtype == jnp.float32
    lit = full > 0.1 * full.max()  # the README's measure: pixels above 10% of the max, pointwise
    relative = np.abs(np.asarray(half) - full)[lit] / full[lit]
    assert 0 < np.median(relative) < 0.1, np.median(relative)
    jaxpr = str(jax.make_jaxpr(DPT(CFG, dtype=dtype).apply)({"params": params}, images))
    last_conv = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line][-1]
    assert "bf16" not in last_conv and "f16" not in last_conv  # head/conv3 in float32
