"""beit-flax parameters -> a Depth Anything state dict: the release layout (`torch.save(model.state_dict())`, which
the original `DepthAnythingV2(...).load_state_dict` accepts strictly) or transformers' names.

The same key tables as the import, read the other way: a torch -> flax -> torch round trip gives back every mapped
tensor bit for bit. What the original carries but never uses is filled in so that strict loading accepts the file:
DINOv2's `mask_token` (zeros) and refinenet4's residual unit 1 (zeros: it has no skip input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beit_flax.convert.rules import torch_state
from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.depth_anything.convert.keys import LAYOUTS
from beit_flax.models.depth_anything.params import param_shapes


def _unused_tensors(layout: str, config: DepthAnythingConfig) -> dict[str, np.ndarray]:
    f = config.features
    rcu = {1: "conv1", 2: "conv2"} if layout == "release" else {1: "convolution1", 2: "convolution2"}
    prefix = (
        "depth_head.scratch.refinenet4.resConfUnit1."
        if layout == "release"
        else ("neck.fusion_stage.layers.0.residual_layer1.")
    )
    mask = "pretrained.mask_token" if layout == "release" else "backbone.embeddings.mask_token"
    return {
        mask: np.zeros((1, config.width), np.float32),
        **{f"{prefix}{rcu[n]}.weight": np.zeros((f, f, 3, 3), np.float32) for n in (1, 2)},
        **{f"{prefix}{rcu[n]}.bias": np.zeros((f,), np.float32) for n in (1, 2)},
    }


def to_torch(params: dict[str, Any], config: DepthAnythingConfig, layout: str) -> dict[str, np.ndarray]:
    """State dict (name -> contiguous numpy array) in `layout` ("release", "hf-v4" or "hf-v5")."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {sorted(LAYOUTS)}")
    state = torch_state(params, LAYOUTS[layout], config.depth, param_shapes(config))
    state.update(_unused_tensors(layout, config))
    return {name: np.require(value, requirements=["C", "W"]) for name, value in state.items()}
