"""Attractor layers (ZoeDepth section 3.2, `zoedepth/models/layers/attractor.py`): move the bin centers towards
attractor points predicted from a bin embedding, one layer per decoder stage, coarse to fine.

Every pixel has A attractor points a_i and n bin centers c_j (from the previous layer, resized to this stage);
c_j += agg_i f(a_i - c_j) with agg the mean or sum over i and f the attraction ("inv": dx / (1 + alpha dx^gamma),
"exp": exp(-alpha |dx|^gamma) dx).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.models.dpt.resize import resize_bilinear
from beit_flax.models.zoedepth.bins import conv1x1
from beit_flax.models.zoedepth.config import BinConfig, ZoeDepthConfig

NORMED_POINT_EPS = 1e-3
"""Added to the ReLU'd attractor points of normed layers (`AttractorLayer.forward`)."""


def inv_attractor(dx: jnp.ndarray, alpha: float, gamma: int) -> jnp.ndarray:
    """dx / (1 + alpha dx^gamma): the attraction of every released model (`inv_attractor`)."""
    return dx / (1 + alpha * dx**gamma)


def exp_attractor(dx: jnp.ndarray, alpha: float, gamma: int) -> jnp.ndarray:
    """exp(-alpha |dx|^gamma) dx (`exp_attractor`)."""
    return jnp.exp(-alpha * jnp.abs(dx) ** gamma) * dx


ATTRACTIONS = {"inv": inv_attractor, "exp": exp_attractor}


def resize_to(x_bhwc: jnp.ndarray, size_hw: tuple[int, int]) -> jnp.ndarray:
    """torch `F.interpolate(x, size, mode="bilinear", align_corners=True)`, ZoeDepth's one resize rule."""
    return x_bhwc if x_bhwc.shape[1:3] == tuple(size_hw) else resize_bilinear(x_bhwc, size_hw, align_corners=True)


class AttractorLayer(nn.Module):
    """One attractor layer: (embedding (B, h, w, E), previous bins (B, h', w', n), previous embedding (B, h', w', E))
    -> (bins for the next layer, centers in meters), both (B, h, w, n) float32.

    The previous embedding and bins are resized to (h, w) (bilinear, align_corners=True); the MLP (1x1 conv, ReLU,
    1x1 conv) sees embedding + previous embedding.
    softplus (`AttractorLayerUnnormed`): points = softplus(MLP), bins and centers are the moved bins.
    normed (`AttractorLayer`): the MLP gives 2A channels, ReLU + 1e-3; the points are the first of each pair, *not*
      the pair's normalised share: the original computes A / A.sum(dim=2) and overwrites it with A[:, :, 0] (kept by
      transformers "to maintain compatibility with the weights"). The bins live on [0, 1]; the centers are
      min + (max - min) * bins, sorted, clipped to [min_depth, max_depth].
    """

    config: ZoeDepthConfig
    bins: BinConfig
    n_attractors: int

    @nn.compact
    def __call__(
        self, embedding_bhwc: jnp.ndarray, prev_bins: jnp.ndarray, prev_embedding: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        cfg, b, normed = self.config, self.bins, self.config.bin_centers_type == "normed"
        size = embedding_bhwc.shape[1:3]
        x = embedding_bhwc + resize_to(prev_embedding, size)
        x = nn.relu(conv1x1(cfg.attractor_mlp_dim, "conv1")(x))
        x = conv1x1(self.n_attractors * (2 if normed else 1), "conv2")(x)
        if normed:  # channels are (attractor, pair) row-major, as torch's view(n, A, 2, h, w)
            points = (nn.relu(x) + NORMED_POINT_EPS).reshape(*x.shape[:-1], self.n_attractors, 2)[..., 0]
        else:
            points = jax.nn.softplus(x)
        bins = resize_to(prev_bins, size)
        pull = ATTRACTIONS[cfg.attractor_type](
            points[..., :, None] - bins[..., None, :], cfg.attractor_alpha, cfg.attractor_gamma
        )  # (B, h, w, A, n)
        bins = bins + (pull.mean(axis=-2) if cfg.attractor_kind == "mean" else pull.sum(axis=-2))
        if not normed:
            return bins, bins
        centers = jnp.sort((b.max_depth - b.min_depth) * bins + b.min_depth, axis=-1)
        return bins, jnp.clip(centers, b.min_depth, b.max_depth)
