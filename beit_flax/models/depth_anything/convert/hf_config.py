"""A Depth Anything config -> the config.json of transformers' `DepthAnythingForDepthEstimation` (export_weights
--format hf writes it beside the weights, so that `from_pretrained(folder)` builds the same model)."""

from __future__ import annotations

from typing import Any

from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.dpt.reassemble import STAGE_SCALES


def _ratio(config: DepthAnythingConfig) -> int:
    """Dinov2Config's mlp_ratio (an int in transformers 5): the FFN width must be a multiple of the width."""
    if config.ffn_channels % config.width:
        raise ValueError(f"transformers' Dinov2 cannot hold an FFN of {config.ffn_channels} for width {config.width}")
    return config.ffn_channels // config.width


def hf_config_dict(config: DepthAnythingConfig) -> dict[str, Any]:
    if config.use_clstoken:
        raise ValueError(
            "transformers' Depth Anything has no cls-token readout (use_clstoken); export --format release"
        )
    return {
        "model_type": "depth_anything",
        "architectures": ["DepthAnythingForDepthEstimation"],
        "backbone_config": {
            "model_type": "dinov2",
            "hidden_size": config.width,
            "num_hidden_layers": config.depth,
            "num_attention_heads": config.num_heads,
            "mlp_ratio": 4 if config.ffn == "swiglu" else _ratio(config),
            "use_swiglu_ffn": config.ffn == "swiglu",
            "image_size": config.pos_grid * config.patch_size,
            "patch_size": config.patch_size,
            "layerscale_value": 1.0,
            "layer_norm_eps": config.layer_norm_eps,
            "out_indices": [t + 1 for t in config.taps],  # index 0 is the embedding output
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        "patch_size": config.patch_size,
        "reassemble_hidden_size": config.width,
        "reassemble_factors": list(STAGE_SCALES),
        "neck_hidden_sizes": list(config.out_channels),
        "fusion_hidden_size": config.features,
        "head_in_index": -1,
        "head_hidden_size": 32,
        "depth_estimation_type": "metric" if config.metric else "relative",
        # transformers 5 types it as an int (the hub's configs say 20 and 80)
        "max_depth": (int(m) if float(m).is_integer() else m) if (m := config.max_depth) is not None else 1,
    }
