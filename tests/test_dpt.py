"""`DPT` input validation and output contract on a tiny config (random init; numerics are covered per module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beit_flax.dpt import DPT
from tiny_config import TINY as CFG



@pytest.fixture(scope="module")
def params():
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: DPT(CFG).init(jax.random.key(0), x), images)["params"]
    rng = np.random.default_rng(1)
    # small random values everywhere (init would leave the relative-position tables at zero); numpy, because an
    # eager jax.random call per leaf compiles once per shape
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


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
