"""Parameters stored in the dtype a 16-bit program casts them to, once, instead of on every call.

Weights files hold float32 and a bfloat16 model casts each dense and conv kernel to bfloat16 inside the program: on
every call, and on XLA:CPU as float32 -> bf16 -> float32 round trips (BEiT-B 384, batch 1: 483 ms of 376 elementwise
fusions in XLA's profile, against 26 ms for the float32 program). `precast` finds, in the traced program itself, the
parameters that every use casts to one 16-bit dtype (the kernels; not LayerNorm scales, layer scales or the
relative-position tables, which float32 islands read) and casts exactly those ahead of time. The program's casts
then cast nothing: the outputs are bit for bit those of the float32-stored parameters. Inference only: training
keeps float32 parameters (its optimiser updates them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from beit_flax.models import registry

SIXTEEN_BIT = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
OTHER = "other"  # a use that is not a cast to a 16-bit dtype

# call-like primitives whose operands are, one for one, their body's inputs
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat2": "jaxpr",  # jax.checkpoint / nn.remat (remat=True)
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
}


def precast(module: nn.Module, params: Any, shapes_hw: Sequence[tuple[int, int]] | None = None) -> Any:
    """`params` (a tree of float32 arrays) with each leaf that `module.apply` casts to one 16-bit dtype at every
    use stored in that dtype; the rest untouched. Traced (abstractly: no compile) on a (1, H, W, 3) float32 input of
    each of `shapes_hw` (default: the module's family's `probe_shapes`); a leaf is cast only if it is cast-only at all
    of them (a family's native size and one other take every path that depends on the input size: position tables
    used directly or resized). Cast on the host
    (numpy: the same bits as the program's convert), whatever devices the params go to next. A float32 module comes
    back unchanged without tracing. A scanned encoder (`scan=True`) stacks its block parameters inside the program:
    a stack is not a cast, so those stay float32 (correct, not faster)."""
    if jnp.dtype(getattr(module, "dtype", jnp.float32)) not in SIXTEEN_BIT:
        return params
    if shapes_hw is None:
        shapes_hw = registry.of_model(module).probe_shapes(module.config)
    leaves, treedef = jax.tree.flatten(params)
    specs = tuple(jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves)
    targets = _targets(module, treedef, specs, tuple(tuple(s) for s in shapes_hw))
    cast = [x if t is None else np.asarray(x).astype(t) for x, t in zip(leaves, targets, strict=True)]
    return treedef.unflatten(cast)


@functools.lru_cache(maxsize=8)
def _targets(module: nn.Module, treedef: Any, specs: tuple, shapes_hw: tuple) -> tuple[Any, ...]:
    """Per leaf of the flattened params: the 16-bit dtype every use casts it to at every shape, or None."""
    found: list[Any] | None = None
    for h, w in shapes_hw:
        images = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        closed = jax.make_jaxpr(lambda p, x: module.apply({"params": treedef.unflatten(p)}, x))(list(specs), images)
        uses = cast_targets(closed.jaxpr)[: len(specs)]
        found = uses if found is None else [a if a == b else None for a, b in zip(found, uses, strict=True)]
    return tuple(None if t in (None, OTHER) else t for t in found or [])


def cast_targets(jaxpr: core.Jaxpr) -> list[Any]:
    """Per input of `jaxpr`: the one 16-bit dtype that every use converts it to, OTHER when any use is anything
    else (or it is an output), None when unused. Uses inside call-like sub-programs (pjit, remat, custom_jvp/vjp)
    and as a scan's constants or scanned inputs are followed; any other use counts as OTHER."""
    uses: dict[core.Var, Any] = {v: None for v in jaxpr.invars}

    def record(var: Any, use: Any) -> None:
        if isinstance(var, core.Var) and var in uses and use is not None:
            uses[var] = use if uses[var] in (None, use) else OTHER

    for eqn in jaxpr.eqns:
        if not any(isinstance(v, core.Var) and v in uses for v in eqn.invars):
            continue
        inner = _inner_targets(eqn)
        for i, var in enumerate(eqn.invars):
            record(var, inner[i] if inner is not None else OTHER)
    for var in jaxpr.outvars:
        record(var, OTHER)
    return [uses[v] for v in jaxpr.invars]


def _inner_targets(eqn: Any) -> list[Any] | None:
    """What each operand of `eqn` is used as (a 16-bit dtype, OTHER, None), or None: every operand OTHER."""
    name = eqn.primitive.name
    if name == "convert_element_type":
        new = jnp.dtype(eqn.params["new_dtype"])
        return [new if new in SIXTEEN_BIT else OTHER]
    if name in _CALLS and _CALLS[name] in eqn.params:
        inner = cast_targets(_open(eqn.params[_CALLS[name]]))
    elif name == "scan":  # operands: constants, carries, scanned inputs; only a carry is not its body's input as is
        consts, carries = eqn.params["num_consts"], eqn.params["num_carry"]
        body = cast_targets(_open(eqn.params["jaxpr"]))
        inner = [OTHER if consts <= i < consts + carries else t for i, t in enumerate(body)]
    else:
        return None
    return inner if len(inner) == len(eqn.invars) else None


def _open(jaxpr: Any) -> core.Jaxpr:
    return jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
