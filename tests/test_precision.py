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
    asked = wide_dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), dims, preferred_element_type=jnp.float32)
    assert asked.dtype == jnp.float32  # a caller's preferred_element_type is honoured
    ints = wide_dot_general(jnp.ones((2, 3), jnp.int8), jnp.ones((3, 2), jnp.int8), dims)
    assert ints.dtype == jnp.int8 and int(ints[0, 0]) == 3


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
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(init_params(family.tiny), images).jaxpr
    products = [
        (tuple(v.aval.dtype for v in e.invars), e.outvars[0].aval.dtype)
        for e in _equations(jaxpr)
        if e.primitive.name == "dot_general"
    ]
    sixteen = [(ins, out) for ins, out in products if jnp.bfloat16 in ins]
    assert len(sixteen) > 10  # the dense layers and attention products do run in bf16
    assert all(out == jnp.float32 for _, out in sixteen), sixteen


def _equations(jaxpr):
    """Every equation of `jaxpr` and of the programs nested in its equations (jit, remat, scan bodies, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)
