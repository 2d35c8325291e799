"""models/precision.py: the compute-dtype choice and the matmul precision each dtype traces under."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beit_flax.models.precision import COMPUTE_DTYPES, check_dtype, matmul_precision


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
