"""The model from `flax.nnx`, with no second implementation: the linen module (`DPT`, `ZoeDepth`, any family's)
inside `flax.nnx.bridge.ToNNX`.

`to_nnx(model, params)` gives an `nnx.Module` whose call `nnx_model(images)` is `model.apply({"params": params},
images)` (same shapes and dtypes: (B, H, W, 3) float normalised as (x - 0.5) / 0.5 -> (B, H, W) float32), and whose
`nnx.state(nnx_model, nnx.Param)` is the linen params tree (same paths, e.g. `encoder/block_0/attn/query/kernel`,
shapes and values), so `nnx.jit`, `nnx.grad` and `nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)` work on it as on
any NNX module. `from_nnx` gives `(model, params)` back, for `beit_flax.save` or linen code.

Not imported by `import beit_flax` (it imports `flax.nnx`); use `import beit_flax.nnx`. Never imports torch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from beit_flax.models import registry
from beit_flax.params import check_params
from beit_flax.weights import load as _load_linen
from beit_flax.weights import save as _save_linen

__all__ = ["from_nnx", "load", "save", "to_nnx"]


def to_nnx(model: Any, params: Any) -> nnx.bridge.ToNNX:
    """`nnx.bridge.ToNNX(model)` holding `params` (a linen params dict, numpy or jax leaves; checked against
    `model.config`) as `nnx.Param`s, which hold them as jax arrays of the same dtype (float32 from `load`).

    The bridge's `lazy_init` runs abstractly (`nnx.eval_shape`: nothing is computed or allocated), then the
    parameters are put in; the module holds no RNG state (no family has dropout). The execution knobs (dtype, scan,
    remat, attention) are the linen model's: `to_nnx(model.clone(scan=True), params)` for another, same params.
    """
    family = registry.of_model(model)  # TypeError for anything else
    check_params(model.config, params)
    # shapes do not depend on the input size; two input multiples a side is cheap and legal for every family
    side = 2 * family.input_multiple(model.config)
    images = jnp.zeros((1, side, side, 3), jnp.float32)
    abstract = nnx.eval_shape(lambda: nnx.bridge.ToNNX(model).lazy_init(images, rngs=jax.random.key(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def from_nnx(nnx_model: nnx.Module) -> tuple[Any, dict[str, Any]]:
    """`(model, params)` of a module made by `to_nnx` (after any training): the linen module and its params dict
    (jax arrays, the paths and shapes `beit_flax.save` checks), as `beit_flax.load` returns them."""
    model = getattr(nnx_model, "to_nnx__module", None)
    try:
        registry.of_model(model)
    except TypeError:
        raise TypeError(f"expected a module made by beit_flax.nnx.to_nnx, got {type(nnx_model).__name__}") from None
    params = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    check_params(model.config, params, source="nnx model")
    return model, params


def load(path: str | os.PathLike, dtype: str = "float32") -> nnx.bridge.ToNNX:
    """The NNX module of a weights file: `to_nnx(*beit_flax.load(path, dtype))`."""
    return to_nnx(*_load_linen(path, dtype))


def save(path: str | os.PathLike, nnx_model: nnx.Module) -> None:
    """Write a module made by `to_nnx` as a weights file `beit_flax.load` (or `load`) reads."""
    model, params = from_nnx(nnx_model)
    _save_linen(path, model.config, params)
