"""One metric bins head (ZoeDepth figure 2 for one domain): seed bins -> 4 attractor layers -> log-binomial -> depth.

What is per domain in ZoeD_M12_NK (`seed_bin_regressors`, `attractors`, `conditional_log_binomial` keyed by the
domain's name); the bottleneck conv and the projectors are shared and live in `ZoeDepth`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.zoedepth.attractors import AttractorLayer, resize_to
from beit_flax.models.zoedepth.bins import SeedBinRegressor
from beit_flax.models.zoedepth.config import BinConfig, ZoeDepthConfig
from beit_flax.models.zoedepth.log_binomial import ConditionalLogBinomial


class MetricBins(nn.Module):
    """Metric depth for one `BinConfig` (`ZoeDepth.forward` / the routed branch of `ZoeDepthNK.forward`).

    Inputs (float32; (h, w) = (H/16, W/16), E = bin_embedding_dim):
      bottleneck: (B, h/2, w/2, F), the bottleneck conv's output.
      seed_embedding: (B, h/2, w/2, E), the seed projector's.
      embeddings: the projectors' (B, ., ., E) on r4, r3, r2, r1 (coarsest first).
      head_activation: (B, H, W, head_channels), the `out_conv` tap.
      relative_depth: (B, H, W), the core's output (used if `condition_on_relative_depth`).
    Returns (B, H, W) float32 meters: sum over the bins of probability x center, at the head's resolution.
    """

    config: ZoeDepthConfig
    bins: BinConfig

    @nn.compact
    def __call__(
        self,
        bottleneck: jnp.ndarray,
        seed_embedding: jnp.ndarray,
        embeddings: tuple[jnp.ndarray, ...],
        head_activation: jnp.ndarray,
        relative_depth: jnp.ndarray,
    ) -> jnp.ndarray:
        cfg, b = self.config, self.bins
        centers = SeedBinRegressor(b, cfg.bin_centers_type, cfg.seed_mlp_dim, name="seed_bin_regressor")(bottleneck)
        # Normed attractors work on [0, 1] (`ZoeDepth.forward`'s b_prev); softplus ones on the centers themselves.
        bins = (centers - b.min_depth) / (b.max_depth - b.min_depth) if cfg.bin_centers_type == "normed" else centers
        prev_embedding = seed_embedding
        for i, (embedding, n_attractors) in enumerate(zip(embeddings, cfg.n_attractors)):
            bins, centers = AttractorLayer(cfg, b, n_attractors, name=f"attractor_{i}")(embedding, bins, prev_embedding)
            prev_embedding = embedding

        size = head_activation.shape[1:3]
        main = head_activation
        if cfg.condition_on_relative_depth:
            main = jnp.concatenate([main, resize_to(relative_depth[..., None], size)], axis=-1)
        probabilities = ConditionalLogBinomial(cfg, b.n_bins, name="conditional_log_binomial")(
            main, resize_to(prev_embedding, size)
        )
        return jnp.sum(probabilities * resize_to(centers, size), axis=-1)
