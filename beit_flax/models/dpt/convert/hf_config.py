"""The transformers `config.json` of a beit-flax model as a plain dict: writing it needs neither torch nor transformers.

This is the one statement of how a MiDaS v3.1 BEiT-DPT maps onto transformers' `DPTConfig` with a `BeitConfig`
backbone (`DPTForDepthEstimation`); `beit_flax.demo.torch_model.hf_config` builds the transformers object from it.
"""

from __future__ import annotations

from typing import Any

from beit_flax.models.dpt.config import DPTConfig


def hf_config_dict(config: DPTConfig) -> dict[str, Any]:
    """`config` -> the dict that `transformers.DPTConfig.from_dict` (and `from_pretrained`'s config.json) reads.

    Mirrors the `Intel/dpt-beit-*` hub configs: per-block relative position bias sized for the training grid
    (`image_size = train_grid * patch_size`), no absolute position embedding, no shared bias, layer scale, no mask
    token, exact GELU, a backbone returning *unreshaped* token sequences (`reshape_hidden_states=False`, so the cls
    token reaches the "project" readout) of the blocks `hooks` (`out_features` "stage{b+1}": "stem" is the embedding
    output), reassemble factors 4, 2, 1, 0.5 (MiDaS `midas/backbones/utils.py`), fusion without batch norm and with
    conv biases (MiDaS `FeatureFusionBlock_custom(bn=False)`).

    `head_channels` is an extra key only: transformers' `DPTDepthEstimationHead` hard-codes 32 channels for the
    head's middle conv and ignores it.
    """
    c = config
    image_size = [c.train_grid[0] * c.patch_size, c.train_grid[1] * c.patch_size]
    shared = {
        "hidden_size": c.width,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "intermediate_size": 4 * c.width,
        "hidden_act": "gelu",  # transformers' ACT2FN["gelu"] is torch's exact (erf) GELU, as in timm's BEiT
        "layer_norm_eps": c.layer_norm_eps,
        "image_size": image_size,
        "patch_size": c.patch_size,
    }
    backbone = {
        "model_type": "beit",
        **shared,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "num_channels": 3,
        "use_mask_token": False,
        "use_absolute_position_embeddings": False,
        "use_relative_position_bias": True,
        "use_shared_relative_position_bias": False,
        "layer_scale_init_value": 0.1,
        "use_mean_pooling": True,  # BeitModel's final norm becomes an identity, as in MiDaS
        "out_features": [f"stage{b + 1}" for b in c.hooks],
        "reshape_hidden_states": False,
        "add_fpn": False,
    }
    return {
        "model_type": "dpt",
        "backbone_config": backbone,
        "is_hybrid": False,
        **shared,
        "backbone_out_indices": None,  # only read without a backbone_config
        "readout_type": "project",
        "reassemble_factors": [4, 2, 1, 0.5],
        "neck_hidden_sizes": list(c.reassemble_channels),
        "fusion_hidden_size": c.fusion_channels,
        "head_in_index": -1,
        "use_batch_norm_in_fusion_residual": False,
        "use_bias_in_fusion_residual": True,
        "add_projection": False,
        "use_auxiliary_head": False,
        "head_channels": c.head_channels,
    }
