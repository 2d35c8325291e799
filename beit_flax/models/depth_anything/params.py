"""{flax path: shape} of a Depth Anything config's parameters."""

from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.depth_anything.depth_anything import DepthAnything
from beit_flax.models.family import traced_param_shapes


def param_shapes(config: DepthAnythingConfig) -> dict[str, tuple[int, ...]]:
    return traced_param_shapes(DepthAnything(config), config.patch_size)  # one patch: the smallest legal input
