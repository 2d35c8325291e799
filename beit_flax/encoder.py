"""The BEiT encoder (DPT figure 1, "Transformer"), with timm 0.6 / MiDaS v3.1 semantics.

Block (pre-norm, layer scale):  x += gamma_1 * attn(LN1(x));  x += gamma_2 * mlp(LN2(x)),  LayerNorm eps 1e-6.
Attention adds each block's own relative-position bias to the logits; the key projection has no bias (BEiT).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.config import DPTConfig
from beit_flax.relative_position import RelativePositionBias


class Attention(nn.Module):
    """Multi-head self-attention with a relative-position bias. (B, N, C) -> (B, N, C)."""

    config: DPTConfig

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config
        dtype = cfg.compute_dtype
        b, n, c = tokens_bnc.shape
        head_dim = c // cfg.num_heads

        def project(name: str, use_bias: bool = True) -> jnp.ndarray:
            out = nn.Dense(c, use_bias=use_bias, dtype=dtype, name=name)(tokens_bnc)
            return out.reshape(b, n, cfg.num_heads, head_dim)

        query, key, value = project("query"), project("key", use_bias=False), project("value")
        bias_hnn = RelativePositionBias(cfg.num_heads, cfg.train_grid, name="relative_position")(grid_hw)
        out_bnhd = jax.nn.dot_product_attention(
            query, key, value, bias=bias_hnn[None].astype(dtype), scale=head_dim**-0.5
        )
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
    """One pre-norm transformer block with per-channel layer scale gamma_1 / gamma_2."""

    config: DPTConfig

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config

        def layer_norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name)

        def layer_scale(name: str) -> jnp.ndarray:
            # timm initialises layer scale to 0.1 for BEiT-L; the released weights carry learned vectors.
            return self.param(name, nn.initializers.constant(0.1), (cfg.width,), jnp.float32)

        x = tokens_bnc
        x = x + layer_scale("gamma_1") * Attention(cfg, name="attn")(layer_norm("norm1")(x), grid_hw)
        x = x + layer_scale("gamma_2") * Mlp(cfg, name="mlp")(layer_norm("norm2")(x))
        return x.astype(tokens_bnc.dtype)


class Encoder(nn.Module):
    """Runs `depth` blocks and returns the outputs of the four hooked blocks, each (B, N, C).

    remat: gradient checkpointing per block: only each block's input is kept for the backward pass and its
    internals (attention logits, MLP hidden) are recomputed, for about one more forward pass of compute. Same
    parameters and paths (`block_{i}/...`), same values.
    """

    config: DPTConfig
    remat: bool = False

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> list[jnp.ndarray]:
        cfg = self.config
        # grid_hw (argument 2, counting self) sets shapes, so it must stay a static Python tuple under remat.
        block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        hooked = []
        for index in range(cfg.depth):
            tokens_bnc = block(cfg, name=f"block_{index}")(tokens_bnc, grid_hw)
            if index in cfg.hooks:
                hooked.append(tokens_bnc)
        return hooked
