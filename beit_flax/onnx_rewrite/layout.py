"""Rewrites of the data movement jax2onnx writes: bilinear resizes lowered as gathers, and the NHWC <-> NCHW
transposes around every convolution (JAX's images are channels-last, ONNX's `Conv` channels-first).

Transposes are moved towards the graph's output, through `Relu`, `Add` and `Resize`, until they meet their
inverses, which onnxscript's clean-up cancels; the decoder then runs channels-first from convolution to convolution,
as `torch.onnx.export`'s graph does. A transpose that moves only axes of size 1 becomes a `Reshape`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from beit_flax.onnx_rewrite.values import Dims, attribute, constant, dims, fail, new_constant, ok

LINEAR_ALIGN_CORNERS = {"mode": "linear", "coordinate_transformation_mode": "align_corners"}


def align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Resize's linear taps for coordinate_transformation_mode="align_corners", x_original = x_resized *
    (in - 1) / (out - 1): (lower index, upper index, weight of the upper one), each (out_size,)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = np.arange(out_size, dtype=np.float64) * scale
    lower = np.minimum(np.floor(src), in_size - 1).astype(np.int64)
    return lower, np.minimum(lower + 1, in_size - 1), src - lower


def sizes_input(op, x, out: Dims):
    """Resize's `sizes` for an output of shape `out` from `x`: a constant, or with each symbolic dimension (the
    dynamic batch) read from x's shape at the same position (Resize never changes it here)."""
    if all(isinstance(d, int) for d in out):
        return new_constant(op, np.asarray(out, np.int64), x, "sizes")
    given = lambda d: new_constant(op, np.asarray([d], np.int64), x, "size")
    parts = [given(d) if isinstance(d, int) else op.Shape(x, start=i, end=i + 1) for i, d in enumerate(out)]
    sizes = op.Concat(*parts, axis=0)
    for value, length in [(p, 1) for p in parts] + [(sizes, len(out))]:
        value.shape, value.dtype = ir.Shape([length]), ir.DataType.INT64
    return sizes


def resize(op, x, out: Dims):
    """A linear align_corners `Resize` of x to `out`, its shape stated (shape inference cannot read it from sizes
    computed from the dynamic batch)."""
    none = new_constant(op, np.zeros(0, np.float32), x, "none")
    resized = op.Resize(x, none, none, sizes_input(op, x, out), **LINEAR_ALIGN_CORNERS)
    resized.shape, resized.dtype = ir.Shape(out), x.dtype
    return resized


def changed_axes(before: Dims, after: Dims) -> set[int]:
    return {i for i, (a, b) in enumerate(zip(before, after)) if a != b}


class GatherBlendResize(pattern.RewriteRuleClassBase):
    """Linear interpolation along one axis as jax2onnx lowers `jnp.take` + blend: the axis moved to the front, two
    gathers with constant indices, moved back, weighted by constants -> `Resize` of that axis, when the indices and
    weights are exactly ONNX's align_corners taps."""

    def pattern(self, op, x, move, back, lower, upper, w_lower, w_upper):
        moved = op.Transpose(x, perm=move)
        below = op.Transpose(op.Gather(moved, lower, axis=0), perm=back)
        above = op.Transpose(op.Gather(moved, upper, axis=0), perm=back)
        return op.Add(op.Mul(below, w_lower), op.Mul(above, w_upper), _outputs=["out"])

    def check(self, context, x, move, back, lower, upper, w_lower, w_upper, out, **_):
        shape, out_shape = dims(x), dims(out)
        move, back = tuple(move.value), tuple(back.value)
        if shape is None or out_shape is None or len(shape) != len(out_shape):
            return fail("shapes unknown")
        axis = move[0]
        if move != (axis, *(a for a in range(len(shape)) if a != axis)) or back != tuple(np.argsort(move)):
            return fail("not one axis moved to the front and back")
        if changed_axes(shape, out_shape) - {axis} or not isinstance(shape[axis], int):
            return fail("other axes change")
        arrays = [constant(v) for v in (lower, upper, w_lower, w_upper)]
        if any(a is None for a in arrays):
            return fail("indices or weights not constant")
        along = lambda a: a.ndim == len(shape) and all(s == 1 for i, s in enumerate(a.shape) if i != axis)
        if not (along(arrays[2]) and along(arrays[3])) or arrays[3].size != out_shape[axis]:
            return fail("weights not along the axis")
        want_lower, want_upper, want_weight = align_corners_taps(shape[axis], out_shape[axis])
        lo, hi, wl, wu = (np.ravel(a) for a in arrays)
        if not (np.array_equal(lo, want_lower) and np.array_equal(hi, want_upper)):
            return fail("indices of another interpolation")
        if not (np.allclose(wu, want_weight, atol=1e-6) and np.allclose(wl, 1 - want_weight, atol=1e-6)):
            return fail("weights of another interpolation")
        return ok()

    def rewrite(self, op, x, out, **_):
        return resize(op, x, dims(out))


class ResizeResize(pattern.RewriteRuleClassBase):
    """Two linear align_corners `Resize`s of different axes -> one: bilinear interpolation is the two 1-D
    interpolations one after the other, in either order."""

    def __init__(self) -> None:
        super().__init__(remove_nodes=False)  # the inner one goes once unread (its shape may size the outer one)

    def pattern(self, op, x, none, first, sizes):
        inner = op.Resize(x, none, none, first, _allow_other_attributes=True, _outputs=["inner"])
        return op.Resize(inner, none, none, sizes, _allow_other_attributes=True, _outputs=["outer"])

    def check(self, context, x, none, inner, outer, **_):
        shapes = [dims(v) for v in (x, inner, outer)]
        if any(s is None for s in shapes) or constant(none) is None or constant(none).size:
            return fail("shapes unknown, or scales given")
        if any(attribute(v, k) != want for v in (inner, outer) for k, want in LINEAR_ALIGN_CORNERS.items()):
            return fail("not two linear align_corners resizes")
        if changed_axes(shapes[0], shapes[1]) & changed_axes(shapes[1], shapes[2]):
            return fail("the same axis resized twice")
        return ok()

    def rewrite(self, op, x, outer, **_):
        return resize(op, x, dims(outer))


class SinkThroughRelu(pattern.RewriteRuleClassBase):
    """`Relu(Transpose(x))` -> `Transpose(Relu(x))`."""

    def __init__(self) -> None:
        super().__init__(remove_nodes=False)  # a transpose read elsewhere too stays for those readers

    def pattern(self, op, x, perm):
        return op.Relu(op.Transpose(x, perm=perm))

    def rewrite(self, op, x, perm, **_):
        return op.Transpose(op.Relu(x), perm=perm)


class SinkThroughAdd(pattern.RewriteRuleClassBase):
    """`Transpose(a, p) + Transpose(b, p)` -> `Transpose(a + b, p)`."""

    def __init__(self) -> None:
        super().__init__(remove_nodes=False)

    def pattern(self, op, a, b, perm):
        return op.Add(op.Transpose(a, perm=perm), op.Transpose(b, perm=perm))

    def rewrite(self, op, a, b, perm, **_):
        return op.Transpose(op.Add(a, b), perm=perm)


class SinkThroughResize(pattern.RewriteRuleClassBase):
    """`Resize(Transpose(x, p))` -> `Transpose(Resize(x), p)`, the resize's sizes permuted back. A channels-first
    resize is also the layout runtimes interpolate fast (OpenVINO's channels-last one took 25x as long)."""

    def __init__(self) -> None:
        super().__init__(remove_nodes=False)

    def pattern(self, op, x, perm, none, sizes):
        moved = op.Transpose(x, perm=perm)
        return op.Resize(moved, none, none, sizes, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, perm, none, out, **_):
        if constant(none) is None or constant(none).size or dims(out) is None:
            return fail("scales given or shape unknown")
        if any(attribute(out, k) != want for k, want in LINEAR_ALIGN_CORNERS.items()):
            return fail("not a linear align_corners resize")
        return ok()

    def rewrite(self, op, x, perm, out, **_):
        shape = dims(out)
        unmoved = tuple(shape[i] for i in np.argsort(perm.value))
        return op.Transpose(resize(op, x, unmoved), perm=perm)


class TransposeOfOnes(pattern.RewriteRuleClassBase):
    """A `Transpose` that moves only axes of size 1 -> `Reshape` (no data moves)."""

    def pattern(self, op, x, perm):
        return op.Transpose(x, perm=perm, _outputs=["out"])

    def check(self, context, x, perm, out, **_):
        shape, out_shape = dims(x), dims(out)
        if shape is None or out_shape is None or sum(not isinstance(d, int) for d in out_shape) > 1:
            return fail("shapes unknown")
        if [a for a in perm.value if shape[a] != 1] != [a for a in range(len(shape)) if shape[a] != 1]:
            return fail("moves data")
        return ok()

    def rewrite(self, op, x, out, **_):
        target = np.asarray([d if isinstance(d, int) else -1 for d in dims(out)], np.int64)
        return op.Reshape(x, new_constant(op, target, out, "shape"))


class GatherOfOne(pattern.RewriteRuleClassBase):
    """`Gather(x, 0, axis)` along an axis of size 1 (how jax2onnx takes `x[..., 0]`) -> `Squeeze(x, axis)`."""

    def pattern(self, op, x, index):
        return op.Gather(x, index, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, index, out, **_):
        shape, axis = dims(x), attribute(out, "axis") or 0
        if shape is None or constant(index) is None or constant(index).shape != () or shape[axis] != 1:
            return fail("not a scalar index into an axis of size 1")
        return ok()

    def rewrite(self, op, x, out, **_):
        axis = (attribute(out, "axis") or 0) % len(dims(x))
        return op.Squeeze(x, new_constant(op, np.asarray([axis], np.int64), out, "axes"))


RESIZES = [GatherBlendResize.rule()]
MERGES = [ResizeResize.rule()]
SINKS = [SinkThroughRelu.rule(), SinkThroughAdd.rule(), SinkThroughResize.rule()]
RESHAPES = [TransposeOfOnes.rule(), GatherOfOne.rule()]
