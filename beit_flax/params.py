"""The parameter tree of a model: its paths and shapes, the check every tree passes, and the one random init.

Paths are flax's, joined with "/" ("encoder/block_0/attn/query/kernel"); parameters are float32 whatever the compute
dtype. `param_shapes` traces the model abstractly (`jax.eval_shape`), so it costs no compile and no memory.
`param_shapes` and `check_params` take a `DPTConfig` or a `ZoeDepthConfig` (whose core's tree is under "core/").
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.models.zoedepth.config import ZoeDepthConfig

ModelConfig = DPTConfig | ZoeDepthConfig


@functools.lru_cache(maxsize=8)
def _param_shapes(config: DPTConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Tracing BEiT-L takes seconds (converting and saving both need the shapes, hence the cache). Shapes do not
    # depend on the input size; a 2x2 patch grid traces the smallest attention and relative-position gathers.
    side = 2 * config.patch_size
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    variables = jax.eval_shape(DPT(config).init, jax.random.key(0), images)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    return tuple((path, tuple(leaf.shape)) for path, leaf in flat.items())


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{"patch_embed/proj/kernel": (16, 16, 3, C), ...}: every parameter the model with `config` has (a ZoeDepth's:
    "core/patch_embed/proj/kernel", ..., "metric/...")."""
    if isinstance(config, ZoeDepthConfig):
        from beit_flax.models.zoedepth.params import param_shapes as zoedepth_param_shapes

        return zoedepth_param_shapes(config)
    if not isinstance(config, DPTConfig):
        raise TypeError(f"config must be a DPTConfig or a ZoeDepthConfig, got {type(config).__name__}")
    return dict(_param_shapes(config))


def _blocks(flat: dict[str, Any], prefix: str = "") -> set[int]:
    return {int(m[1]) for path in flat if (m := re.match(re.escape(prefix) + r"encoder/block_(\d+)/", path))}


def _is_float(leaf: Any) -> bool:
    try:
        return bool(jnp.issubdtype(leaf.dtype, jnp.floating))
    except TypeError:  # not a dtype numpy knows
        return False


def join_problems(problems: list[str], shown: int = 10) -> str:
    """The first `shown` problems joined with "; ", and how many more there are: one readable error line."""
    more = f"; ... {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


def check_params(config: ModelConfig, params: Any, source: str = "params") -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped parameter path, or a non-float leaf.

    The tree's encoder blocks (a ZoeDepth's under "core/") are counted against the (core's) depth first, so that a
    config that disagrees with its tree fails before the shapes are traced.
    """
    # keys joined with str(): a hostile file's tree may have non-string keys
    flat = (
        {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(params).items()}
        if isinstance(params, dict)
        else {}
    )
    prefix, depth = ("core/", config.core.depth) if isinstance(config, ZoeDepthConfig) else ("", config.depth)
    blocks = _blocks(flat, prefix)
    if blocks != set(range(depth)):
        have = f"blocks {min(blocks)}..{max(blocks)} ({len(blocks)})" if blocks else "no encoder blocks"
        raise ValueError(
            f"{source}: parameters do not match the config: the tree has {have}, the config's depth is {depth}"
        )
    expected = param_shapes(config)
    arrays = {p: leaf for p, leaf in flat.items() if hasattr(leaf, "shape") and hasattr(leaf, "dtype")}
    got = {p: tuple(leaf.shape) for p, leaf in arrays.items()}
    problems = [f"{p} is a {type(leaf).__name__}, not a float array" for p, leaf in flat.items() if p not in arrays]
    problems += [f"missing {p} {expected[p]}" for p in sorted(expected.keys() - flat.keys())]
    problems += [f"unexpected {p} {got.get(p, '')}".rstrip() for p in sorted(flat.keys() - expected.keys())]
    problems += [
        f"{p} has shape {got[p]}, config needs {expected[p]}"
        for p in sorted(expected.keys() & got.keys())
        if got[p] != expected[p]
    ]
    problems += [f"{p} has dtype {leaf.dtype}, not a float type" for p, leaf in arrays.items() if not _is_float(leaf)]
    if problems:
        raise ValueError(f"{source}: parameters do not match the config: {join_problems(problems)}")


def init_params(config: ModelConfig, seed: int = 0, *, spread: float = 0.0) -> dict[str, Any]:
    """Random float32 numpy parameters for `config` (no tracing or compiling, unlike `DPT.init`): the one random
    init of training, tests and benchmarks.

    Flax's default rules (lecun-normal kernels N(0, 1/fan_in), zero biases, unit norms, cls token N(0, 0.02), zero
    relative-position tables, layer scale 0.1), except the head's last bias, 1.0: with 0 the final ReLU starts out
    zeroing most pixels, and a constant (e.g. all-zero) prediction has no gradient under the scale-and-shift-invariant
    loss. The loss is blind to that offset, so Adam lets it wander; 1.0 keeps it well away from the ReLU's dead zone.

    spread > 0 adds N(0, spread^2) to every leaf the rules set to a constant (biases, norms, layer scales, tables),
    so that every parameter takes part in a comparison or an accuracy measurement.
    A ZoeDepth's tree gets the same rules (its core's head bias is "core/head/conv3/bias").
    """
    head_bias = "core/head/conv3/bias" if isinstance(config, ZoeDepthConfig) else "head/conv3/bias"
    rng = np.random.default_rng(seed)

    def leaf(path: str, shape: tuple[int, ...]) -> np.ndarray:
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            return rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape).astype(np.float32)
        if name == "cls_token":
            return rng.normal(0.0, 0.02, shape).astype(np.float32)
        value = {"scale": 1.0, "gamma_1": 0.1, "gamma_2": 0.1}.get(name, 0.0)
        constant = np.full(shape, 1.0 if path == head_bias else value, np.float32)
        return constant + rng.normal(0.0, spread, shape).astype(np.float32) if spread else constant

    flat = {tuple(p.split("/")): leaf(p, s) for p, s in param_shapes(config).items()}
    return traverse_util.unflatten_dict(flat)
