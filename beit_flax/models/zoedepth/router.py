"""The router of ZoeD_M12_NK (`zoedepth/models/layers/patch_transformer.py`, `ZoeDepthNK.mlp_classifier`): a small
transformer over the bottleneck's pixels whose first token classifies the image's domain.

Per-image routing: each image takes the head of its own largest softmax(logits). The original sums the logits over
the batch and routes the whole batch to one head (`ZoeDepthNK.forward`: "Assumes all images are from the same
domain"; transformers' port does the same), so a batch's result depends on its other images; at batch 1 the two
rules are the same.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.models.zoedepth.config import RouterConfig


def positional_encoding_1d(length: int, width: int) -> np.ndarray:
    """(length, width) float32: [sin(s f_i), cos(s f_i)] with f_i = exp(-2i log(10000) / width), the sines in the
    first half, not interleaved (`PatchTransformerEncoder.positional_encoding_1d`), in float32 as the original.

    f_i is rounded correctly from float64; torch's float32 exp can be 1 ulp off that, and the angle s f_i carries it
    to ~6e-5 in the sines at s ~ 800 (the 768 + 1 tokens of a 384 x 512 input): the encodings match torch's to that.
    """
    position = np.arange(length, dtype=np.float32)[:, None]
    exponent = np.arange(0, width, 2, dtype=np.float32) * (-np.log(np.float32(10000.0)) / np.float32(width))
    angle = position * np.exp(exponent.astype(np.float64)).astype(np.float32)[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=jnp.float32, name=name)


class SelfAttention(nn.Module):
    """torch `nn.MultiheadAttention(x, x, x)`: q / k / v / out projections with biases, softmax(q k^T / sqrt(d)) v."""

    num_heads: int

    @nn.compact
    def __call__(self, x_bnc: jnp.ndarray) -> jnp.ndarray:
        b, n, c = x_bnc.shape
        split = lambda name: _dense(c, name)(x_bnc).reshape(b, n, self.num_heads, c // self.num_heads)
        q, k, v = split("query"), split("key"), split("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(c // self.num_heads))
        attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, n, c)
        return _dense(c, "out")(attended)


class EncoderLayer(nn.Module):
    """torch `nn.TransformerEncoderLayer` (post-norm, ReLU, eval mode): x = LN1(x + MHA(x)); x = LN2(x + FFN(x))."""

    config: RouterConfig

    @nn.compact
    def __call__(self, x_bnc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        norm = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False, name=name)
        x_bnc = norm("norm1")(x_bnc + SelfAttention(cfg.num_heads, name="attn")(x_bnc))
        return norm("norm2")(x_bnc + _dense(x_bnc.shape[-1], "fc2")(nn.relu(_dense(cfg.mlp_dim, "fc1")(x_bnc))))


class Router(nn.Module):
    """(B, h, w, C) bottleneck (after the bottleneck conv) -> (B, n_domains) float32 domain logits."""

    config: RouterConfig
    n_domains: int

    @nn.compact
    def __call__(self, bottleneck_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        tokens = nn.Conv(cfg.width, (1, 1), dtype=jnp.float32, name="embed")(bottleneck_bhwc)
        b, h, w, c = tokens.shape
        # A zero token in front gathers the image (torch pads the token axis with one 0), then positions for all.
        tokens = jnp.concatenate([jnp.zeros((b, 1, c), tokens.dtype), tokens.reshape(b, h * w, c)], axis=1)
        tokens = tokens + positional_encoding_1d(h * w + 1, c)
        for i in range(cfg.depth):
            tokens = EncoderLayer(cfg, name=f"layer_{i}")(tokens)
        x = nn.relu(_dense(cfg.width, "classifier_1")(tokens[:, 0]))
        return _dense(self.n_domains, "classifier_2")(x)


def route(logits: jnp.ndarray) -> jnp.ndarray:
    """(B, D) logits -> (B,) int32 index of the chosen head: argmax of the softmax, as the original (first on ties)."""
    return jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1).astype(jnp.int32)
