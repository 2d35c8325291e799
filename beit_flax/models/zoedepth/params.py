"""The parameter tree of a ZoeDepth model: paths and shapes, traced abstractly (no compile, no memory)."""

from __future__ import annotations

from beit_flax.models.family import traced_param_shapes
from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.zoedepth import INPUT_MULTIPLE, ZoeDepth


def param_shapes(config: ZoeDepthConfig) -> dict[str, tuple[int, ...]]:
    """{"core/patch_embed/proj/kernel": (16, 16, 3, C), ..., "metric/attractor_0/conv2/kernel": (1, 1, 128, 16)}."""
    return traced_param_shapes(ZoeDepth(config), INPUT_MULTIPLE)
