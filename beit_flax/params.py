"""The parameter tree of a model of any family: its paths and shapes, the check every tree passes, the one random
init.

Paths are flax's, joined with "/" ("encoder/block_0/attn/query/kernel"); parameters are float32 whatever the compute
dtype. `param_shapes` traces the model abstractly (`jax.eval_shape`), so it costs no compile and no memory. Each
function takes a config of any registered family (`models.registry`) and asks the family for what differs.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from beit_flax.files import join_problems
from beit_flax.models import registry

__all__ = ["check_params", "init_params", "join_problems", "param_shapes"]


def param_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """{"patch_embed/proj/kernel": (16, 16, 3, C), ...}: every parameter the model with `config` has (a ZoeDepth's:
    "core/patch_embed/proj/kernel", ..., "metric/..."). TypeError for a config of no registered family."""
    return registry.of_config(config).param_shapes(config)


def _blocks(flat: dict[str, Any], prefix: str) -> set[int]:
    return {int(m[1]) for path in flat if (m := re.match(re.escape(prefix) + r"encoder/block_(\d+)/", path))}


def _is_float(leaf: Any) -> bool:
    try:
        return bool(jnp.issubdtype(leaf.dtype, jnp.floating))
    except TypeError:  # not a dtype numpy knows
        return False


def check_params(config: Any, params: Any, source: str = "params") -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped parameter path, or a non-float leaf.

    The tree's encoder blocks (under the family's `backbone_path`) are counted against the config's depth first, so
    that a config that disagrees with its tree fails before the shapes are traced.
    """
    family = registry.of_config(config)
    # keys joined with str(): a hostile file's tree may have non-string keys
    flat = (
        {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(params).items()}
        if isinstance(params, dict)
        else {}
    )
    depth = family.encoder_depth(config)
    blocks = _blocks(flat, family.backbone_path)
    if blocks != set(range(depth)):
        have = f"blocks {min(blocks)}..{max(blocks)} ({len(blocks)})" if blocks else "no encoder blocks"
        raise ValueError(
            f"{source}: parameters do not match the config: the tree has {have}, the config's depth is {depth}"
        )
    expected = family.param_shapes(config)
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


def init_params(config: Any, seed: int = 0, *, spread: float = 0.0) -> dict[str, Any]:
    """Random float32 numpy parameters for `config` (no tracing or compiling, unlike `module.init`): the one random
    init of training, tests and benchmarks.

    Flax's default rules (lecun-normal kernels N(0, 1/fan_in), zero biases, unit norms, cls token N(0, 0.02), zero
    relative-position tables, layer scale 0.1), except where the family's `init_constants` say otherwise: the
    depth head's last bias is 1.0, since with 0 the final ReLU starts out zeroing most pixels, and a constant (e.g.
    all-zero) prediction has no gradient under the scale-and-shift-invariant loss. The loss is blind to that offset,
    so Adam lets it wander; 1.0 keeps it well away from the ReLU's dead zone.

    spread > 0 adds N(0, spread^2) to every leaf the rules set to a constant (biases, norms, layer scales, tables),
    so that every parameter takes part in a comparison or an accuracy measurement.
    """
    family = registry.of_config(config)
    rng = np.random.default_rng(seed)

    def leaf(path: str, shape: tuple[int, ...]) -> np.ndarray:
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            return rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape).astype(np.float32)
        if name == "cls_token":
            return rng.normal(0.0, 0.02, shape).astype(np.float32)
        value = {"scale": 1.0, "gamma_1": 0.1, "gamma_2": 0.1}.get(name, 0.0)
        constant = np.full(shape, family.init_constants.get(path, value), np.float32)
        return constant + rng.normal(0.0, spread, shape).astype(np.float32) if spread else constant

    flat = {tuple(p.split("/")): leaf(p, s) for p, s in family.param_shapes(config).items()}
    return traverse_util.unflatten_dict(flat)
