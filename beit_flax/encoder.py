"""The BEiT encoder (DPT figure 1, "Transformer"), with timm 0.6 / MiDaS v3.1 semantics.

Block (pre-norm, layer scale):  x += gamma_1 * attn(LN1(x));  x += gamma_2 * mlp(LN2(x)),  LayerNorm eps 1e-6.
Attention adds each block's own relative-position bias to the logits; the key projection has no bias (BEiT).

Precision: the residual stream stays float32 whatever the compute dtype; LayerNorm statistics (flax promotes them)
and the attention logits and softmax (`jax.nn.dot_product_attention`) are float32 too.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.config import DPTConfig
from beit_flax.relative_position import RelativePositionBias

AttentionImpl = Literal["auto", "xla", "cudnn"]
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def attend(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray,
           implementation: AttentionImpl) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d) + bias) v for (B, N, heads, d) inputs and a float32 (heads, N, N) bias.

    "xla": portable (`xla_attention`); logits, bias and softmax in float32. "cudnn": cuDNN's fused kernel (NVIDIA GPUs, 16-bit
    compute; see `cudnn_inputs`). "auto": cuDNN for 16-bit compute on a GPU unless jax's cuDNN checks (head dim,
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

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config
        dtype = cfg.compute_dtype
        b, n, c = tokens_bnc.shape

        def project(name: str, use_bias: bool = True) -> jnp.ndarray:
            out = nn.Dense(c, use_bias=use_bias, dtype=dtype, name=name)(tokens_bnc)
            return out.reshape(b, n, cfg.num_heads, c // cfg.num_heads)

        query, key, value = project("query"), project("key", use_bias=False), project("value")
        bias_hnn = RelativePositionBias(cfg.num_heads, cfg.train_grid, name="relative_position")(grid_hw)
        out_bnhd = attend(query, key, value, bias_hnn, self.implementation)
        return nn.Dense(c, dtype=dtype, name="proj")(out_bnhd.reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 (C -> 4C), exact (erf) GELU, fc2 (4C -> C)."""

    config: DPTConfig

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray) -> jnp.ndarray:
        dtype = self.config.compute_dtype
        hidden = nn.Dense(4 * self.config.width, dtype=dtype, name="fc1")(tokens_bnc)
        return nn.Dense(self.config.width, dtype=dtype, name="fc2")(nn.gelu(hidden, approximate=False))


class Block(nn.Module):
    """One pre-norm transformer block with per-channel layer scale gamma_1 / gamma_2. (B, N, C) float32 in and out."""

    config: DPTConfig
    attention: AttentionImpl = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config

        def layer_norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name)

        def layer_scale(name: str) -> jnp.ndarray:
            # timm initialises layer scale to 0.1 for BEiT-L; the released weights carry learned vectors.
            return self.param(name, nn.initializers.constant(0.1), (cfg.width,), jnp.float32)

        x = tokens_bnc
        x = x + layer_scale("gamma_1") * Attention(cfg, self.attention, name="attn")(layer_norm("norm1")(x), grid_hw)
        x = x + layer_scale("gamma_2") * Mlp(cfg, name="mlp")(layer_norm("norm2")(x))
        return x.astype(tokens_bnc.dtype)


class Encoder(nn.Module):
    """Runs `depth` blocks and returns the outputs of the four hooked blocks, each (B, N, C) float32.

    remat: gradient checkpointing per block: only each block's input is kept for the backward pass and its
      internals (attention logits, MLP hidden) are recomputed, for about one more forward pass of compute.
    attention: see `attend`.
    `encoder(...)` builds this or its scanned twin; both have the same parameters and paths (`block_{i}/...`).
    """

    config: DPTConfig
    remat: bool = False
    attention: AttentionImpl = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> list[jnp.ndarray]:
        cfg = self.config
        # grid_hw (argument 2, counting self) sets shapes, so it must stay a static Python tuple under remat.
        block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        hooked = []
        for index in range(cfg.depth):
            tokens_bnc = block(cfg, self.attention, name=f"block_{index}")(tokens_bnc, grid_hw)
            if index in cfg.hooks:
                hooked.append(tokens_bnc)
        return hooked


def segments(config: DPTConfig) -> list[range]:
    """The encoder cut after each hook: block ranges whose last block is hooked, then the unhooked rest (if any)."""
    ends = [*(h + 1 for h in config.hooks), config.depth]
    return [range(start, stop) for start, stop in zip([0, *ends], ends) if stop > start]


class _ScanStep(nn.Module):
    """One block as a scan body, (carry, None) -> (carry, None); the grid is a static attribute."""

    config: DPTConfig
    attention: AttentionImpl
    grid_hw: tuple[int, int]

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, _: None) -> tuple[jnp.ndarray, None]:
        return Block(self.config, self.attention, name="block")(tokens_bnc, self.grid_hw), None


class ScannedEncoder(nn.Module):
    """`Encoder` with each segment (see `segments`) run as one `nn.scan` over its blocks: 4 loop bodies to compile
    instead of `depth` blocks. Its own parameter layout is stacked per segment (`segment_{k}/block/...`, leading
    axis = block); `encoder(scan=True)` stores them as `block_{i}` instead."""

    config: DPTConfig
    remat: bool = False
    attention: AttentionImpl = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> list[jnp.ndarray]:
        step = nn.remat(_ScanStep) if self.remat else _ScanStep
        outputs = []
        for k, blocks in enumerate(segments(self.config)):
            scanned = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True}, length=len(blocks))
            tokens_bnc, _ = scanned(self.config, self.attention, grid_hw, name=f"segment_{k}")(tokens_bnc, None)
            outputs.append(tokens_bnc)
        return outputs[:4]  # the hooked ones; a trailing unhooked segment's output is unused (and compiled away)


def stack_blocks(config: DPTConfig, collections: dict[str, Any]) -> dict[str, Any]:
    """{"params": {"block_{i}": ...}} (the stored layout) -> {"params": {"segment_{k}": {"block": stacked}}}."""
    params = collections.get("params")
    if not params:
        return collections
    stack = lambda blocks: jax.tree.map(lambda *xs: jnp.stack(xs), *(params[f"block_{i}"] for i in blocks))
    return {**collections, "params": {f"segment_{k}": {"block": stack(b)} for k, b in enumerate(segments(config))}}


def unstack_blocks(config: DPTConfig, collections: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `stack_blocks`."""
    params = collections.get("params")
    if not params:  # map_variables maps the (empty) output variables of a plain apply too
        return collections
    unstacked = {
        f"block_{i}": jax.tree.map(lambda x, j=j: x[j], params[f"segment_{k}"]["block"])
        for k, blocks in enumerate(segments(config)) for j, i in enumerate(blocks)
    }
    return {**collections, "params": unstacked}


def encoder(config: DPTConfig, *, remat: bool = False, scan: bool = False, attention: AttentionImpl = "auto",
            name: str = "encoder") -> nn.Module:
    """The encoder module: unrolled (`Encoder`), or with `scan` a `ScannedEncoder` whose parameters are mapped
    (`nn.map_variables`) to the unrolled paths, so one weights file serves both. Scanning compiles faster (BEiT-L
    512 on CPU: the remat gradient in 21.5 s instead of 33 s, the forward pass 4.9 instead of 5.5 s) but stacks the
    encoder's parameters on every call (a copy of them: 1.2 GB at BEiT-L in float32)."""
    if not scan:
        return Encoder(config, remat, attention, name=name)
    mapped = nn.map_variables(
        ScannedEncoder, "params", init=True,
        trans_in_fn=lambda c: stack_blocks(config, c), trans_out_fn=lambda c: unstack_blocks(config, c),
    )
    return mapped(config, remat, attention, name=name)
