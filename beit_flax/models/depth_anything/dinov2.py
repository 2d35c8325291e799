"""The DINOv2 encoder of Depth Anything (`dinov2.py`, `dinov2_layers/` of the original; facebookresearch/dinov2).

Block (pre-norm, LayerScale):  x += ls1 * attn(LN1(x));  x += ls2 * ffn(LN2(x)),  LayerNorm eps 1e-6.
Attention: fused qkv with bias (stored as query / key / value), no position bias, so every fused kernel applies
(`dpt.attention.attend` with no bias: XLA, chunked XLA above `CHUNK_ABOVE_TOKENS` tokens, or cuDNN). FFN: fc1 /
exact GELU / fc2, or SwiGLU for ViT-G (silu(gate) * up -> down). `get_intermediate_layers(..., norm=True)`: the
tapped blocks' outputs each go through the final `norm`.

Precision: the residual stream stays float32 whatever the compute dtype, as in the BEiT encoder.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.dpt.attention import AttentionImpl, QueryChunk, attend
from beit_flax.models.precision import Dense


class SelfAttention(nn.Module):
    """Multi-head self-attention without position bias. (B, N, C) -> (B, N, C)."""

    config: DepthAnythingConfig
    implementation: AttentionImpl = "auto"
    dtype: jnp.dtype = jnp.float32
    query_chunk: QueryChunk = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray) -> jnp.ndarray:
        b, n, c = tokens_bnc.shape
        heads = self.config.num_heads

        def project(name: str) -> jnp.ndarray:
            return Dense(c, dtype=self.dtype, name=name)(tokens_bnc).reshape(b, n, heads, c // heads)

        out_bnhd = attend(
            project("query"), project("key"), project("value"), None, self.implementation, self.query_chunk
        )
        return Dense(c, dtype=self.dtype, name="proj")(out_bnhd.reshape(b, n, c))


class FeedForward(nn.Module):
    """`ffn` "mlp": fc1 (C -> hidden), exact GELU, fc2; "swiglu": silu(gate(x)) * up(x), down (the original's w12
    split in two, and w3)."""

    config: DepthAnythingConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray) -> jnp.ndarray:
        cfg, dense = self.config, lambda width, name: Dense(width, dtype=self.dtype, name=name)
        if cfg.ffn == "swiglu":  # the original's fused w12 is [gate; up] (`chunk(2)`): stored as two layers
            gate, up = (dense(cfg.ffn_channels, name)(tokens_bnc) for name in ("gate", "up"))
            return dense(cfg.width, "down")(nn.silu(gate) * up)
        return dense(cfg.width, "fc2")(nn.gelu(dense(cfg.ffn_channels, "fc1")(tokens_bnc), approximate=False))


class Block(nn.Module):
    """One DINOv2 block. (B, N, C) float32 in and out."""

    config: DepthAnythingConfig
    attention: AttentionImpl = "auto"
    dtype: jnp.dtype = jnp.float32
    query_chunk: QueryChunk = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name)
        scale = lambda name: self.param(name, nn.initializers.constant(1.0), (cfg.width,), jnp.float32)
        x = tokens_bnc
        x = x + scale("ls1") * SelfAttention(cfg, self.attention, self.dtype, self.query_chunk, name="attn")(
            norm("norm1")(x)
        )
        x = x + scale("ls2") * FeedForward(cfg, self.dtype, name="mlp")(norm("norm2")(x))
        return x.astype(tokens_bnc.dtype)


class Encoder(nn.Module):
    """Runs the blocks; returns the four tapped outputs after the final norm, (B, 1 + N, C) float32 each (the
    original's `get_intermediate_layers(x, taps, return_class_token=True)`, cls token first). remat: recompute each
    block's internals in the backward pass."""

    config: DepthAnythingConfig
    remat: bool = False
    attention: AttentionImpl = "auto"
    dtype: jnp.dtype = jnp.float32
    query_chunk: QueryChunk = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray) -> list[jnp.ndarray]:
        cfg = self.config
        block = nn.remat(Block) if self.remat else Block
        norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="norm")
        tapped = []
        for index in range(cfg.depth):
            tokens_bnc = block(cfg, self.attention, self.dtype, self.query_chunk, name=f"block_{index}")(tokens_bnc)
            if index in cfg.taps:
                tapped.append(norm(tokens_bnc).astype(jnp.float32))
        return tapped
