"""Compute precision, an execution choice shared by every model: the dtype list, the matmul precision policy and the
dense layer every model's 16-bit products go through.

Weights files hold float32; the compute dtype is a module attribute (`DPT(config, dtype="bfloat16")`), not part of
the architecture, so one weights file serves every precision. Inference stores what a 16-bit program only ever casts
in that dtype once (`precast.py`) instead of casting it on every call.
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    """`dtype` (a name in COMPUTE_DTYPES, or that numpy / jnp dtype) as a jnp dtype; ValueError for anything else."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    return resolved


def matmul_precision(dtype: jnp.dtype) -> contextlib.AbstractContextManager:
    """The matmul precision a model is traced under: full float32 ("highest") for float32 compute, so GPUs and
    TPUs match the original to 1e-5 instead of rounding matmul inputs to TF32 / bf16 passes; the backend's default
    for 16-bit compute. Setting jax's own `jax_default_matmul_precision` (e.g. to "tensorfloat32", or the env var
    JAX_DEFAULT_MATMUL_PRECISION) overrides this. No effect on CPU, which computes float32 matmuls in float32."""
    if dtype != jnp.float32 or jax.config.jax_default_matmul_precision is not None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")


def island_precision() -> str | None:
    """The precision of a float32 island in a model of any compute dtype (the head's last conv, the relative-position
    table resize): "highest", as `matmul_precision` gives float32 models (under 16-bit compute no context is set,
    and a TPU's DEFAULT would round the float32 operands to bfloat16, a GPU's to TF32), unless the user set jax's
    `jax_default_matmul_precision`, which then governs these too (None)."""
    return None if jax.config.jax_default_matmul_precision is not None else "highest"


def wide_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None) -> jax.Array:
    """`lax.dot_general` accumulating in float32 and rounded once to the operands' dtype: for 16-bit operands the
    same value as a 16-bit product (XLA computes that in float32 and rounds too), but XLA:CPU then runs it on the
    CPU's bf16 kernels instead of converting both operands to float32 around a float32 kernel (a (2308, 768) x
    (768, 3072) bf16 product: 12 ms instead of 34, float32 22 ms; AMD EPYC, AVX-512 BF16). float32 operands: the
    plain product. A `preferred_element_type` (flax passes none) or integer operands: the plain product asked for."""
    dtype = jnp.result_type(lhs, rhs)
    if preferred_element_type is not None or not jnp.issubdtype(dtype, jnp.floating):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    out = lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32)
    return out.astype(dtype)


Dense = functools.partial(nn.Dense, dot_general=wide_dot_general)
"""`nn.Dense` whose product is `wide_dot_general`: the dense layer of every model (same parameters as nn.Dense)."""
