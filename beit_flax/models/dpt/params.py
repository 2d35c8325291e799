"""The parameter tree of a BEiT-DPT: paths and shapes, traced abstractly (no compile, no memory)."""

from __future__ import annotations

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.models.family import traced_param_shapes


def param_shapes(config: DPTConfig) -> dict[str, tuple[int, ...]]:
    """{"patch_embed/proj/kernel": (16, 16, 3, C), ...}: every parameter of `DPT(config)`. A 2 x 2 patch grid traces
    the smallest attention and relative-position gathers."""
    return traced_param_shapes(DPT(config), 2 * config.patch_size)
