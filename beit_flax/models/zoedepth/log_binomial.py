"""The conditional log-binomial (ZoeDepth section 3.3, `zoedepth/models/layers/dist_layers.py`): per pixel, a
probability p and a temperature t from an MLP, then softmax over the bins k = 0..K-1 of

    log C(K-1, k) + k log p + (K-1-k) log(1-p),   divided by t,

with log C from Stirling's approximation n log n - k log k - (n-k) log(n-k) (`log_binom`, eps 1e-7).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.models.zoedepth.bins import conv1x1
from beit_flax.models.zoedepth.config import ZoeDepthConfig

P_EPS = 1e-4
"""Added to the MLP's softplus outputs before the linear normalisation of p and t (`ConditionalLogBinomial.p_eps`)."""
CLAMP_EPS = 1e-4
"""p and 1 - p are clamped to [1e-4, 1] before the logs (`LogBinomial.forward`)."""


def log_binom(n: jnp.ndarray, k: jnp.ndarray, eps: float = 1e-7) -> jnp.ndarray:
    """log C(n, k) by Stirling, as `log_binom` computes it in float32 (n + eps rounds back to n for n >= 1)."""
    n, k = n + eps, k + eps
    return n * jnp.log(n) - k * jnp.log(k) - (n - k) * jnp.log(n - k + eps)


def log_binomial_softmax(p: jnp.ndarray, t: jnp.ndarray, n_bins: int) -> jnp.ndarray:
    """p, t (B, H, W) float32 -> (B, H, W, n_bins) probabilities (`LogBinomial.forward`)."""
    k = jnp.asarray(np.arange(n_bins, dtype=np.float32))
    n = jnp.float32(n_bins - 1)
    one_minus_p = jnp.clip(1 - p, CLAMP_EPS, 1)[..., None]
    p = jnp.clip(p, CLAMP_EPS, 1)[..., None]
    y = log_binom(n, k) + k * jnp.log(p) + (n - k) * jnp.log(one_minus_p)
    return jax.nn.softmax(y / t[..., None], axis=-1)


class ConditionalLogBinomial(nn.Module):
    """(main (B, H, W, Cm), condition (B, H, W, E)) -> (B, H, W, n_bins) float32 probabilities over the bins.

    MLP on concat[main, condition]: 1x1 conv to `log_binomial_mlp_dim`, exact GELU, 1x1 conv to 4, softplus. Each pair
    (+ 1e-4) is normalised linearly: p = a / (a + b) and t' = c / (c + d), t = min_temp + (max_temp - min_temp) t'.
    """

    config: ZoeDepthConfig
    n_bins: int

    @nn.compact
    def __call__(self, main_bhwc: jnp.ndarray, condition_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        x = jnp.concatenate([main_bhwc, condition_bhwc], axis=-1)
        x = nn.gelu(conv1x1(cfg.log_binomial_mlp_dim, "conv1")(x), approximate=False)
        pt = jax.nn.softplus(conv1x1(4, "conv2")(x)) + P_EPS
        p = pt[..., 0] / (pt[..., 0] + pt[..., 1])
        t = pt[..., 2] / (pt[..., 2] + pt[..., 3])
        t = (cfg.max_temp - cfg.min_temp) * t + cfg.min_temp
        return log_binomial_softmax(p, t, self.n_bins)
