"""beit-flax parameters -> a PyTorch state dict in the MiDaS release layout or transformers' names.

The same key tables as the import (`keys.py`), read the other way, so a torch -> flax -> torch round trip gives
back every mapped tensor bit for bit. Tensors the original model has but never uses (listed in `DROPPED`) are filled
in so that the original code's strict `load_state_dict` accepts the result: `relative_position_index` regenerated
for the training grid, the classifier and `fc_norm` as zeros / ones, refinenet4's unused residual unit as zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beit_flax.convert.rules import torch_state
from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.convert.keys import LAYOUTS
from beit_flax.models.dpt.params import param_shapes
from beit_flax.models.dpt.relative_position import relative_position_index


def _unused_tensors(layout: str, config: DPTConfig) -> dict[str, np.ndarray]:
    """What the original model carries but never uses, so that its strict `load_state_dict` accepts the export."""
    c, f = config.width, config.fusion_channels
    zeros_rcu = lambda prefix, conv: (
        {f"{prefix}{conv(n)}.weight": np.zeros((f, f, 3, 3), np.float32) for n in (1, 2)}
        | {f"{prefix}{conv(n)}.bias": np.zeros((f,), np.float32) for n in (1, 2)}
    )
    if layout != "midas":
        return zeros_rcu("neck.fusion_stage.layers.0.residual_layer1.", lambda n: f"convolution{n}")
    index = relative_position_index(config.train_grid).astype(np.int64)
    return {
        **{f"pretrained.model.blocks.{i}.attn.relative_position_index": index for i in range(config.depth)},
        "pretrained.model.fc_norm.weight": np.ones((c,), np.float32),
        "pretrained.model.fc_norm.bias": np.zeros((c,), np.float32),
        "pretrained.model.head.weight": np.zeros((1000, c), np.float32),  # the ImageNet classifier of timm's BEiT
        "pretrained.model.head.bias": np.zeros((1000,), np.float32),
        **zeros_rcu("scratch.refinenet4.resConfUnit1.", lambda n: f"conv{n}"),
    }


def to_torch(params: dict[str, Any], config: DPTConfig, layout: str) -> dict[str, np.ndarray]:
    """State dict (name -> contiguous numpy array) in `layout` ("midas", "hf-v4" or "hf-v5")."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {sorted(LAYOUTS)}")
    # the tensors of the config's layers (the key projection and the layer*_rn convs have no bias)
    state = torch_state(params, LAYOUTS[layout], config.depth, param_shapes(config))
    state.update(_unused_tensors(layout, config))
    # torch wants writable, contiguous memory (arrays restored from msgpack are read-only views)
    return {name: np.require(value, requirements=["C", "W"]) for name, value in state.items()}
