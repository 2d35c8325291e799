"""Multi-head self-attention with BEiT's relative-position bias, and the kernels that compute it.

`Attention` is the module (q / k / v / out projections, the key without bias as in BEiT, the block's own
relative-position table); `attend` computes softmax(q k^T / sqrt(d) + bias) v with the implementation chosen by
the execution knob `attention`: portable XLA ops or cuDNN's fused kernel. Logits, bias and softmax are float32
whatever the compute dtype.
"""

from __future__ import annotations

from typing import Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.relative_position import RelativePositionBias

AttentionImpl = Literal["auto", "xla", "cudnn"]
ATTENTION_IMPLS: tuple[str, ...] = get_args(AttentionImpl)


def attend(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray,
           implementation: AttentionImpl) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d) + bias) v for (B, N, heads, d) inputs and a float32 (heads, N, N) bias.

    "xla": portable (`xla_attention`); logits, bias and softmax in float32. "cudnn": cuDNN's fused kernel (NVIDIA
    GPUs, 16-bit compute; see `cudnn_inputs`). "auto": cuDNN for 16-bit compute on a GPU unless jax's cuDNN checks (head dim,
    GPU generation, cuDNN version; they run at trace time) refuse it, XLA otherwise.
    """
    gpu_16_bit = jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
    if implementation == "cudnn" or (implementation == "auto" and gpu_16_bit):
        try:
            return cudnn_attention(query, key, value, bias_hnn)
        except (NotImplementedError, ValueError, RuntimeError):
            if implementation == "cudnn":
                raise
    return xla_attention(query, key, value, bias_hnn)


def xla_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray) -> jnp.ndarray:
    """`attend` as plain XLA ops, heads first: the math of `jax.nn.dot_product_attention(implementation="xla")`
    (logits accumulated and softmaxed in float32, probabilities cast back to the compute dtype for the second
    product), which contracts in the (B, N, heads, d) layout instead: on XLA CPU one BEiT-L 512 block's attention
    took 150 ms this way against 220-270 ms (BEiT-B 384: 22 vs 34 ms)."""
    q_bhnd, k_bhnd, v_bhnd = (jnp.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_bhnd, k_bhnd, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * query.shape[-1] ** -0.5 + bias_hnn[None], axis=-1)
    out_bhnd = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(value.dtype), v_bhnd, preferred_element_type=jnp.float32)
    return jnp.transpose(out_bhnd, (0, 2, 1, 3)).astype(value.dtype)


def cudnn_inputs(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray
                 ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Inputs as cuDNN's fused attention takes them: the bias in the compute dtype, and an even token count (with a
    bias, cuDNN's backward pass needs one, and BEiT's N = h*w + 1 is odd for every even grid). An odd N gets one
    zero token that no query sees (its bias column is the dtype's minimum) and whose own output row is dropped by
    the caller; its bias row is 0, so that row stays finite and adds no NaN to the gradients."""
    bias = bias_hnn.astype(query.dtype)
    n = query.shape[1]
    if n % 2 == 0:
        return query, key, value, bias
    pad = lambda t: jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0)))
    bias = jnp.pad(bias, ((0, 0), (0, 1), (0, 1))).at[:, :, n].set(jnp.finfo(bias.dtype).min)
    return pad(query), pad(key), pad(value), bias


def cudnn_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray) -> jnp.ndarray:
    """`attend` through cuDNN: (B, N, heads, d) -> (B, N, heads, d)."""
    n = query.shape[1]
    query, key, value, bias = cudnn_inputs(query, key, value, bias_hnn)
    out = jax.nn.dot_product_attention(
        query, key, value, bias=bias[None], scale=query.shape[-1] ** -0.5, implementation="cudnn"
    )
    return out[:, :n]


class Attention(nn.Module):
    """Multi-head self-attention with a relative-position bias. (B, N, C) -> (B, N, C)."""

    config: DPTConfig
    implementation: AttentionImpl = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config
        b, n, c = tokens_bnc.shape

        def project(name: str, use_bias: bool = True) -> jnp.ndarray:
            out = nn.Dense(c, use_bias=use_bias, dtype=self.dtype, name=name)(tokens_bnc)
            return out.reshape(b, n, cfg.num_heads, c // cfg.num_heads)

        query, key, value = project("query"), project("key", use_bias=False), project("value")
        bias_hnn = RelativePositionBias(cfg.num_heads, cfg.train_grid, name="relative_position")(grid_hw)
        out_bnhd = attend(query, key, value, bias_hnn, self.implementation)
        return nn.Dense(c, dtype=self.dtype, name="proj")(out_bnhd.reshape(b, n, c))
