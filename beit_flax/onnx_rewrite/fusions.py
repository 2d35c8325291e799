"""Rewrites of jax2onnx's lowering of common layers into the ONNX ops (or op patterns) that runtimes fuse.

Each rule's `check` verifies the constants the rewrite relies on; a pattern that does not match exactly stays.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from beit_flax.onnx_rewrite.values import (
    attribute,
    constant,
    dims,
    fail,
    last_axis_only,
    new_constant,
    ok,
    per_channel,
    scalar,
)


class EinsumAsMatMul(pattern.RewriteRuleClassBase):
    """`Einsum("<batch>k,kn-><batch>n", x, w)` -> `MatMul(x, w)`: a dense layer over the last axis (onnxruntime's
    Einsum ran BEiT-B's dense layers at a third of its MatMul's speed)."""

    def pattern(self, op, x, w):
        return op.Einsum(x, w, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, w, out, **_):
        equation = str(attribute(out, "equation")).replace(" ", "")
        operands, _, result = equation.partition("->")
        lhs, _, rhs = operands.partition(",")
        if len(rhs) != 2 or not lhs or "." in equation or len(set(lhs + rhs)) != len(lhs) + 1:
            return fail(f"not a dense layer: {equation}")
        if lhs[-1] != rhs[0] or result != lhs[:-1] + rhs[1]:
            return fail(f"not a contraction of the last axis: {equation}")
        return ok()

    def rewrite(self, op, x, w, **_):
        return op.MatMul(x, w)


class FlaxLayerNorm(pattern.RewriteRuleClassBase):
    """flax.linen.LayerNorm over the last axis with scale and bias: mean and mean of squares, variance
    `max(0, E[x^2] - E[x]^2)`, rsqrt -> `LayerNormalization` (opset 17), whose variance is `E[(x - mean)^2]`: the
    same value, rounded differently in float32."""

    def __init__(self) -> None:
        # two norms of one tensor (a tapped block's output: its tap's norm and the next block's) share their
        # statistics once onnxscript has merged the common subexpressions: each becomes a node of its own
        super().__init__(remove_nodes=False)

    def pattern(self, op, x, axes, count, zero, reshape_to, epsilon, one, scale, bias):
        mean = op.Div(op.ReduceSum(x, axes, keepdims=0), count)
        mean_square = op.Div(op.ReduceSumSquare(x, _allow_other_attributes=True, _outputs=["squares"]), count)
        variance = op.Max(zero, op.Sub(mean_square, op.Mul(mean, mean)))
        centred = op.Sub(x, op.Reshape(mean, reshape_to))
        inverse = op.Div(one, op.Sqrt(op.Add(op.Reshape(variance, reshape_to), epsilon)))
        return op.Add(op.Mul(centred, op.Mul(inverse, scale)), bias)

    def check(self, context, x, axes, count, zero, epsilon, one, scale, bias, squares, **_):
        shape = dims(x)
        if shape is None or not isinstance(shape[-1], int) or x.dtype != ir.DataType.FLOAT:
            return fail("input rank, channels or type unknown")
        if not last_axis_only(constant(axes), len(shape)):
            return fail("mean not over the last axis")
        if not last_axis_only(attribute(squares, "axes"), len(shape)) or attribute(squares, "keepdims") != 0:
            return fail("mean of squares not over the last axis")
        if scalar(count) != shape[-1] or scalar(zero) != 0 or scalar(one) != 1 or scalar(epsilon) is None:
            return fail("constants of another computation")
        if any(per_channel(v, shape[-1]) is None or constant(v).ndim > len(shape) for v in (scale, bias)):
            return fail("scale / bias not per-channel constants")
        return ok()

    def rewrite(self, op, x, epsilon, scale, bias, **_):
        flat = lambda v: new_constant(op, per_channel(v), v, "1d")
        return op.LayerNormalization(x, flat(scale), flat(bias), axis=-1, epsilon=scalar(epsilon))


class ErfcGelu(pattern.RewriteRuleClassBase):
    """jax.nn.gelu(approximate=False) as lowered, `(0.5 x) * (1 - erf(-x / sqrt 2))` -> `0.5 * (x * (1 + erf(x /
    sqrt 2)))`, the form `torch.onnx.export` writes, which onnxruntime and OpenVINO fuse into one GELU (ONNX's
    `Gelu` op needs opset 20). erf is odd, so the values are the same."""

    def pattern(self, op, x, half, inv_sqrt2, one):
        return op.Mul(op.Mul(half, x), op.Sub(one, op.Erf(op.Mul(op.Neg(x), inv_sqrt2))))

    def check(self, context, x, half, inv_sqrt2, one, **_):
        if scalar(half) != 0.5 or scalar(one) != 1 or not math.isclose(scalar(inv_sqrt2) or 0, 0.5**0.5, rel_tol=1e-6):
            return fail("not GELU's constants")
        return ok()

    def rewrite(self, op, x, **_):
        erf = op.Erf(op.Div(x, op.Constant(value_float=math.sqrt(2.0))))
        return op.Mul(op.Mul(x, op.Add(erf, op.Constant(value_float=1.0))), op.Constant(value_float=0.5))


class JaxSoftmax(pattern.RewriteRuleClassBase):
    """jax.nn.softmax over the last axis, `exp(x - max(-inf, max x)) / sum` -> `Softmax(axis=-1)`."""

    def pattern(self, op, x, floor, to_max, to_sum, sum_axes):
        peak = op.Max(floor, op.ReduceMax(x, _allow_other_attributes=True, _outputs=["peak"]))
        exps = op.Exp(op.Sub(x, op.Reshape(peak, to_max)))
        return op.Div(exps, op.Reshape(op.ReduceSum(exps, sum_axes, keepdims=0), to_sum))

    def check(self, context, x, floor, sum_axes, peak, **_):
        shape = dims(x)
        if shape is None:
            return fail("input rank unknown")
        if not last_axis_only(attribute(peak, "axes"), len(shape)) or attribute(peak, "keepdims") != 0:
            return fail("max not over the last axis")
        if not last_axis_only(constant(sum_axes), len(shape)):
            return fail("sum not over the last axis")
        return ok() if scalar(floor) == -math.inf else fail("max with a finite floor")

    def rewrite(self, op, x, **_):
        return op.Softmax(x, axis=-1)


class MaxZeroRelu(pattern.RewriteRuleClassBase):
    """`max(x, 0)` -> `Relu(x)`, which runtimes fuse into the convolution before it."""

    def pattern(self, op, x, zero):
        return op.Max(x, zero)

    def check(self, context, x, zero, **_):
        return ok() if scalar(zero) == 0 and constant(zero).ndim == 0 else fail("not max(x, 0)")

    def rewrite(self, op, x, **_):
        return op.Relu(x)


class ZeroTie(pattern.RewriteRuleClassBase):
    """`t + 0 * s`, a constant zero times a scalar -> `t`. The model adds such a zero, computed from a block's
    input, to the block's relative-position table so that XLA builds each bias when its block runs; without it the
    bias depends on constants only, and runtimes compute it once when they load the model."""

    def pattern(self, op, t, zero, s):
        return op.Add(t, op.Mul(zero, s))

    def check(self, context, t, zero, s, **_):
        return ok() if scalar(zero) == 0 and dims(s) == () else fail("not a scalar times a constant zero")

    def rewrite(self, op, t, **_):
        return op.Identity(t)


class ConvChannelsLastBias(pattern.RewriteRuleClassBase):
    """`Transpose(Conv(x, w), NCHW -> NHWC) + b`, b a constant per output channel -> the Conv's own bias."""

    def pattern(self, op, x, w, b):
        conv = op.Conv(x, w, _allow_other_attributes=True, _outputs=["conv"])
        return op.Add(op.Transpose(conv, perm=[0, 2, 3, 1]), b)

    def check(self, context, x, w, b, conv, **_):
        kernel, shape = constant(w), dims(conv)
        if kernel is None or shape is None or per_channel(b, kernel.shape[0]) is None or constant(b).ndim > 4:
            return fail("not a constant per-channel bias")
        return ok()

    def rewrite(self, op, x, w, b, conv, **_):
        bias = new_constant(op, per_channel(b), b, "1d")
        return op.Transpose(op.Conv(x, w, bias, **conv.producer().attributes), perm=[0, 2, 3, 1])


class TrailingConstant(pattern.RewriteRuleClassBase):
    """`x + b`, b a constant holding one (C,) vector along its last axis and x of the same rank -> b of shape (C,):
    the same sum, in the form onnxruntime fuses with a MatMul before it into one Gemm."""

    def pattern(self, op, x, b):
        return op.Add(x, b, _outputs=["out"])

    def check(self, context, x, b, out, **_):
        bias, shape = constant(b), dims(x)
        if bias is None or shape is None or not 2 <= bias.ndim <= len(shape) or dims(out) != shape:
            return fail("not a constant of x's rank at most")
        return ok() if per_channel(b, shape[-1]) is not None else fail("not one vector along the last axis")

    def rewrite(self, op, x, b, **_):
        return op.Add(x, new_constant(op, per_channel(b), b, "1d"))


FUSIONS = [
    ZeroTie.rule(),
    EinsumAsMatMul.rule(),
    FlaxLayerNorm.rule(),
    ErfcGelu.rule(),
    JaxSoftmax.rule(),
]
"""Before `MaxZeroRelu`, which would otherwise take LayerNorm's `max(0, variance)`."""
AFTER_FUSIONS = [MaxZeroRelu.rule(), ConvChannelsLastBias.rule()]
BIASES = [TrailingConstant.rule()]
