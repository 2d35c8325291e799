"""models/precision.py: the compute-dtype choice and the matmul precision each dtype traces under."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beit_flax.models.precision import COMPUTE_DTYPES, check_dtype, matmul_precision, wide_dot_general


@pytest.mark.parametrize("name", COMPUTE_DTYPES)
def test_names_and_dtypes_are_accepted(name):
    assert check_dtype(name) == jnp.dtype(name) == check_dtype(jnp.dtype(name))


@pytest.mark.parametrize("bad", ["float64", "int8", "bf16", None, 3, np.int32])
def test_anything_else_is_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match="dtype must be one of"):
        check_dtype(bad)


def test_float32_traces_at_highest_unless_jax_is_told_otherwise():
    dot = lambda dtype: str(jax.make_jaxpr(lambda a: a @ a)(jnp.ones((2, 2), dtype)))
    with matmul_precision(jnp.dtype("float32")):
        assert "HIGHEST" in dot(jnp.float32)
    with matmul_precision(jnp.dtype("bfloat16")):
        assert "HIGHEST" not in dot(jnp.bfloat16)
    with jax.default_matmul_precision("tensorfloat32"), matmul_precision(jnp.dtype("float32")):
        assert "HIGHEST" not in dot(jnp.float32)


def test_16_bit_products_accumulate_in_float32_and_round_once():
    """`wide_dot_general` gives a 16-bit product's value (XLA computes those in float32 and rounds once) as a float32
    product rounded back, which XLA:CPU runs on its bf16 kernels (benchmarks/cpu_peers.py); float32: plain."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((64, 96), (96, 48)))
    dims = (((1,), (0,)), ((), ()))
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        wide = wide_dot_general(a.astype(dtype), b.astype(dtype), dims)
        plain = jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims)
        assert wide.dtype == dtype
        np.testing.assert_array_equal(np.asarray(wide, np.float32), np.asarray(plain, np.float32))


@pytest.mark.parametrize("name", ["dpt", "depth_anything", "zoedepth"])
def test_every_product_of_a_bfloat16_model_accumulates_in_float32(name):
    """No dense layer or attention product of any family is a bf16 -> bf16 product (XLA:CPU converts both operands
    to float32 around those: BEiT-B 384 bf16 was slower than float32)."""
    from beit_flax.models import registry
    from beit_flax.params import init_params

    family = registry.FAMILIES[name]
    model = family.build(family.tiny, dtype="bfloat16")
    side = family.probe_shapes(family.tiny)[1]
    images = jnp.zeros((1, *side, 3), jnp.float32)
    text = str(jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(init_params(family.tiny), images))
    products = [line.strip() for line in text.splitlines() if "= dot_general[" in line]  # "x:f32[...] = dot_..."
    assert len(products) > 10 and all(":f32[" in line.split("=")[0] for line in products), products
