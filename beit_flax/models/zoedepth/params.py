"""The parameter tree of a ZoeDepth model: paths and shapes, traced abstractly (no compile, no memory)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import traverse_util

from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.zoedepth import INPUT_MULTIPLE, ZoeDepth


@functools.lru_cache(maxsize=8)
def _param_shapes(config: ZoeDepthConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Shapes do not depend on the input size; the smallest legal input traces fastest.
    images = jax.ShapeDtypeStruct((1, INPUT_MULTIPLE, INPUT_MULTIPLE, 3), jnp.float32)
    variables = jax.eval_shape(ZoeDepth(config).init, jax.random.key(0), images)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    return tuple((path, tuple(leaf.shape)) for path, leaf in flat.items())


def param_shapes(config: ZoeDepthConfig) -> dict[str, tuple[int, ...]]:
    """{"core/patch_embed/proj/kernel": (16, 16, 3, C), ..., "metric/attractor_0/conv2/kernel": (1, 1, 128, 16)}."""
    return dict(_param_shapes(config))
