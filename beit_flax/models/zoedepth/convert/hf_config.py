"""The transformers `config.json` of a ZoeDepth model as a plain dict, and what transformers' port can express.

Built on the DPT mapping (`dpt.convert.hf_config.hf_config_dict`: the BEiT backbone and the DPT neck are the
same), plus the ZoeDepth fields of transformers' `ZoeDepthConfig` (`Intel/zoedepth-*` hub configs). Writing it
needs neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

from beit_flax.models.dpt.convert.hf_config import hf_config_dict
from beit_flax.models.zoedepth.config import ZoeDepthConfig

# Keys of the DPT config.json that transformers' ZoeDepthConfig shares (the rest are DPT's own).
_SHARED_DPT_KEYS = (
    "backbone_config",
    "hidden_act",
    "readout_type",
    "reassemble_factors",
    "neck_hidden_sizes",
    "fusion_hidden_size",
    "head_in_index",
    "use_batch_norm_in_fusion_residual",
    "use_bias_in_fusion_residual",
    "add_projection",
)


def zoedepth_hf_config_dict(config: ZoeDepthConfig) -> dict[str, Any]:
    """`config` -> the dict that `transformers.ZoeDepthConfig.from_dict` (and a hub config.json) reads.

    Raises ValueError for what transformers' `ZoeDepthForDepthEstimation` cannot build (`hf_unsupported`).
    """
    problems = hf_unsupported(config)
    if problems:
        raise ValueError("transformers' ZoeDepth cannot express this config: " + "; ".join(problems))
    dpt = hf_config_dict(config.core)
    router = config.router
    return {
        "model_type": "zoedepth",
        **{key: dpt[key] for key in _SHARED_DPT_KEYS},
        "num_relative_features": config.core.head_channels,
        "bottleneck_features": config.core.fusion_channels,
        "num_attractors": list(config.n_attractors),
        "bin_embedding_dim": config.bin_embedding_dim,
        # transformers stores alpha (an int) and gamma but calls inv_attractor(dx) with its defaults (300, 2), as the
        # original does; `hf_unsupported` has checked that these are those.
        "attractor_alpha": int(config.attractor_alpha),
        "attractor_gamma": config.attractor_gamma,
        "attractor_kind": config.attractor_kind,
        "min_temp": config.min_temp,
        "max_temp": config.max_temp,
        "bin_centers_type": config.bin_centers_type,
        "bin_configurations": [
            {"name": b.name, "n_bins": b.n_bins, "min_depth": b.min_depth, "max_depth": b.max_depth}
            for b in config.bins
        ],
        "num_patch_transformer_layers": router and router.depth,
        "patch_transformer_hidden_size": router and router.width,
        "patch_transformer_intermediate_size": router and router.mlp_dim,
        "patch_transformer_num_attention_heads": router and router.num_heads,
    }


def hf_unsupported(config: ZoeDepthConfig) -> list[str]:
    """What transformers 4.46-5.x `ZoeDepthForDepthEstimation` hard-codes differently from `config` (empty: none).

    One head (`ZoeDepthMetricDepthEstimationHead`): seed MLP 256, projector MLP 128, relative-depth conditioning,
    log-binomial MLP (head + 1 + E) // 2. Several (`ZoeDepthMultipleMetricDepthEstimationHeads`): exactly 2, seed
    and projector MLPs E // 2, no conditioning, MLP (head + E) // 4, 16 attractors per layer, a router 128 wide with
    4 layers and LayerNorm eps 1e-5. Both: attractor MLP E, "inv" attraction with alpha 300 and gamma 2.
    """
    c, e, head = config, config.bin_embedding_dim, config.core.head_channels
    if c.router is None:
        wanted = {
            "seed_mlp_dim": 256,
            "projector_mlp_dim": 128,
            "condition_on_relative_depth": True,
            "log_binomial_mlp_dim": (head + 1 + e) // 2,
        }
    else:
        wanted = {
            "seed_mlp_dim": e // 2,
            "projector_mlp_dim": e // 2,
            "condition_on_relative_depth": False,
            "log_binomial_mlp_dim": (head + e) // 4,
            "n_attractors": (16, 16, 16, 16),
        }
    wanted |= {"attractor_mlp_dim": e, "attractor_type": "inv", "attractor_alpha": 300.0, "attractor_gamma": 2}
    problems = [f"{k} {getattr(c, k)!r} (transformers: {v!r})" for k, v in wanted.items() if getattr(c, k) != v]
    if c.router is not None:
        if len(c.bins) != 2:
            problems.append(f"{len(c.bins)} bin heads (transformers: 2)")
        wanted_router = {"width": 128, "depth": 4, "layer_norm_eps": 1e-5}
        problems += [
            f"router {k} {getattr(c.router, k)!r} (transformers: {v!r})"
            for k, v in wanted_router.items()
            if getattr(c.router, k) != v
        ]
    return problems
