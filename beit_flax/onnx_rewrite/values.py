"""What the rewrite rules ask of a graph's values: constants, shapes (symbolic dimensions allowed), attributes."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

Dims = tuple[int | ir.SymbolicDim, ...]
_numbers = itertools.count()


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant (an initializer or a folded Constant), else None."""
    const = None if value is None else value.const_value
    return None if const is None else const.numpy()


def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    array = constant(value)
    return float(array.reshape(())) if array is not None and array.size == 1 else None


def dims(value: ir.Value) -> Dims | None:
    """The shape with symbolic dimensions (the dynamic batch "B") as they are; None when the rank or a dimension
    is unknown."""
    if value.shape is None:
        return None
    found = tuple(value.shape)
    return found if all(isinstance(d, int) or (d.value is not None) for d in found) else None


def static(value: ir.Value) -> tuple[int, ...] | None:
    """The shape when every dimension is a number, else None."""
    found = dims(value)
    return found if found is not None and all(isinstance(d, int) for d in found) else None


def attribute(value: ir.Value, name: str) -> object | None:
    """An attribute of the node producing `value` (ints as a tuple, strings as str), or None."""
    attr = value.producer().attributes.get(name)
    return None if attr is None else (tuple(attr.value) if isinstance(attr.value, list) else attr.value)


def per_channel(value: ir.Value, channels: int | None = None) -> np.ndarray | None:
    """A constant that holds one vector of `channels` (default: its last dimension) along its last axis, repeated
    over the others ((C,), (1, 1, C), or jax2onnx's batch-expanded (B, 1, C)) -> that (C,) vector; else None."""
    array = constant(value)
    if array is None or array.ndim == 0 or (channels is not None and array.shape[-1] != channels):
        return None
    rows = array.reshape(-1, array.shape[-1])
    return rows[0] if (rows == rows[0]).all() else None


def last_axis_only(axes: object, rank: int) -> bool:
    """Whether `axes` (a list or a 1-D array) names exactly the last axis of a tensor of `rank`."""
    return axes is not None and [int(a) % rank for a in np.ravel(np.asarray(axes))] == [rank - 1]


def new_constant(op, array: np.ndarray, like: ir.Value, suffix: str) -> ir.Value:
    """An initializer holding `array`, named after the value it derives from (and numbered: one constant may feed
    several rewritten nodes, and a name is one initializer)."""
    return op.initializer(ir.tensor(np.ascontiguousarray(array), name=f"{like.name}_{suffix}_{next(_numbers)}"))


def ok() -> pattern.MatchResult:
    return pattern.MatchResult()


def fail(reason: str) -> pattern.MatchResult:
    return pattern.MatchResult().fail(reason)
