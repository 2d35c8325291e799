"""beit-flax ZoeDepth parameters -> a PyTorch state dict in the release layout or transformers' names.

The core goes through the DPT exporter (`dpt.convert.to_torch`, which also fills in what the original never uses:
relative_position_index buffers, classifier, fc_norm, refinenet4's first unit) and is renamed as `zoedepth_keys`
renames the DPT rules; the metric head reads `keys.head_rules` the other way. The release layout also gets
the log-binomials' persistent buffers, so that the original's strict `load_state_dict` accepts the result (as
`{"model": state_dict}` or bare: `zoedepth/models/model_io.py` takes either).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beit_flax.convert.rules import torch_state
from beit_flax.models.dpt.convert.to_torch import to_torch as dpt_to_torch
from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.convert.keys import CORE_LAYOUT, LAYOUTS, core_torch_name, head_rules
from beit_flax.models.zoedepth.params import param_shapes


def _log_binomial_buffers(config: ZoeDepthConfig) -> dict[str, np.ndarray]:
    """`LogBinomial`'s k_idx (int64 arange(n_bins), (1, n, 1, 1)) and K_minus_1 (float32 n - 1, (1, 1, 1, 1))."""
    out = {}
    for b in config.bins:
        prefix = "conditional_log_binomial" + (f".{b.name}" if config.router is not None else "")
        out[f"{prefix}.log_binomial_transform.k_idx"] = np.arange(b.n_bins, dtype=np.int64).reshape(1, -1, 1, 1)
        out[f"{prefix}.log_binomial_transform.K_minus_1"] = np.full((1, 1, 1, 1), b.n_bins - 1, np.float32)
    return out


def to_torch(params: dict[str, Any], config: ZoeDepthConfig, layout: str) -> dict[str, np.ndarray]:
    """State dict (name -> contiguous numpy array) of `ZoeDepth(config)` in `layout` ("release", "hf-v4", "hf-v5")."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ZoeDepth layout {layout!r}; one of {LAYOUTS}")
    if "core" not in params:
        raise ValueError("params lack the core ('core/...')")
    core = dpt_to_torch(params["core"], config.core, CORE_LAYOUT[layout])
    state = {core_torch_name(layout, name): value for name, value in core.items()}
    depth = config.router.depth if config.router is not None else 1
    state.update(torch_state(params, head_rules(layout, config), depth, param_shapes(config)))
    if layout == "release":
        state.update(_log_binomial_buffers(config))
    return {name: np.require(value, requirements=["C", "W"]) for name, value in state.items()}
