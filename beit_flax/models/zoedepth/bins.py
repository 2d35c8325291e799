"""Seed bins and bin embeddings (ZoeDepth `zoedepth/models/layers/localbins_layers.py`), per pixel, as 1x1 convs.

The seed bin regressor turns the bottleneck into the first bin centers; projectors turn the bottleneck and each
decoder map into bin embeddings, which condition the attractor layers and the log-binomial.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.models.zoedepth.config import BinConfig

NORMED_WIDTH_EPS = 1e-3
"""Added to the ReLU'd widths of normed seed bins before normalising (`SeedBinRegressor.forward`)."""


def conv1x1(features: int, name: str) -> nn.Conv:
    """A torch `Conv2d(c, features, 1)` on NHWC maps (float32, like the whole metric head)."""
    return nn.Conv(features, (1, 1), dtype=jnp.float32, name=name)


class Projector(nn.Module):
    """Bin embedding (`Projector`): (B, h, w, C) -> (B, h, w, features); 1x1 conv, ReLU, 1x1 conv."""

    features: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        return conv1x1(self.features, "conv2")(nn.relu(conv1x1(self.mlp_dim, "conv1")(x_bhwc)))


class SeedBinRegressor(nn.Module):
    """Seed bin centers from the bottleneck: (B, h, w, C) -> (B, h, w, n_bins) float32 meters.

    softplus (`SeedBinRegressorUnnormed`): centers = softplus(MLP(x)), unbounded.
    normed (`SeedBinRegressor`): widths = ReLU(MLP(x)) + 1e-3, normalised to sum 1 and scaled to max - min; the
      edges are min_depth followed by the running sums, the centers the midpoints between consecutive edges, so
      they increase and lie inside (min_depth, max_depth).
    """

    bins: BinConfig
    bin_centers_type: str
    mlp_dim: int

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        b = self.bins
        x = conv1x1(b.n_bins, "conv2")(nn.relu(conv1x1(self.mlp_dim, "conv1")(x_bhwc)))
        if self.bin_centers_type == "softplus":
            return jax.nn.softplus(x)
        widths = nn.relu(x) + NORMED_WIDTH_EPS
        widths = (b.max_depth - b.min_depth) * (widths / widths.sum(axis=-1, keepdims=True))
        # torch pads the widths with min_depth in front and takes one cumsum: the same sums, in the same order.
        edges = jnp.cumsum(jnp.concatenate([jnp.full_like(widths[..., :1], b.min_depth), widths], axis=-1), axis=-1)
        return 0.5 * (edges[..., :-1] + edges[..., 1:])
