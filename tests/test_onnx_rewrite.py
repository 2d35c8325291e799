"""`beit_flax.onnx_rewrite`: the exported ONNX graph rewritten into standard, fusable ops gives the jitted Flax
model's outputs in onnxruntime and OpenVINO, on perturbed weights (`init_params(spread=0.1)`), tiny BEiT-DPT and
Depth Anything, fixed and dynamic batch; each rewrite leaves alone what it does not recognise exactly.

Difference: max |runtime - flax| / max |flax|, at most 1e-5 (measured 0.5e-6 - 1.0e-6 on CPU).
"""

from __future__ import annotations

import collections

import jax
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_config import TINY

import beit_flax
from beit_flax import export as ex
from beit_flax.models.depth_anything import TINY as DA_TINY
from beit_flax.models.depth_anything import DepthAnything
from beit_flax.onnx_rewrite import optimize
from beit_flax.params import init_params
from beit_flax.runtimes import import_openvino

TOLERANCE = 1e-5
SLOW_OPS = {"Einsum", "GatherND", "Gather", "ReduceSumSquare", "ReduceMax", "Neg", "Max", "Exp"}
"""What jax2onnx writes for dense layers, bilinear resizes, LayerNorm, softmax, GELU and ReLU; none of it may run
on the input's path once rewritten (the relative-position bias's gathers may stay: they read constants only)."""


def relative(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape and out.dtype == np.float32
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def run_onnxruntime(data: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["depth"], {"images": x})[0]


def run_openvino(data: bytes, x: np.ndarray) -> np.ndarray:
    core = import_openvino().Core()  # telemetry off
    compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[compiled.output(0)])


def on_input_path(proto: onnx.ModelProto) -> collections.Counter:
    """Op types of the nodes that depend on the graph's input, counted; not those computing shapes (a dynamic
    batch's size read with Shape, Gather, Concat)."""
    reached, shapes = {proto.graph.input[0].name}, set()
    counts: collections.Counter = collections.Counter()
    for node in proto.graph.node:  # topologically sorted (the checker's rule)
        if node.op_type == "Shape" or (set(node.input) & shapes and node.op_type in ("Gather", "Concat", "Cast")):
            shapes.update(node.output)
        elif reached & set(node.input):
            reached.update(node.output)
            counts[node.op_type] += 1
    return counts


@pytest.fixture(scope="module")
def dpt_params():
    return init_params(TINY, seed=0, spread=0.1)


@pytest.mark.parametrize("batch,size_hw", [(None, (64, 96)), (2, (64, 64))])
def test_dpt_rewritten_graph_matches_flax_in_both_runtimes(dpt_params, batch, size_hw):
    model = beit_flax.DPT(TINY)
    x = np.random.default_rng(1).standard_normal((2, *size_hw, 3), dtype=np.float32)
    ref = np.asarray(jax.jit(model.apply)({"params": dpt_params}, x))
    raw = ex.export_onnx(model, dpt_params, size_hw, batch=batch, rewrite=False)
    data = ex.export_onnx(model, dpt_params, size_hw, batch=batch)
    raw_ops, ops = on_input_path(onnx.load_from_string(raw)), on_input_path(onnx.load_from_string(data))
    assert raw_ops["Einsum"] and raw_ops["GatherND"] and raw_ops["ReduceSumSquare"]  # what there was to rewrite
    assert not SLOW_OPS & set(ops), ops
    depth = TINY.depth
    assert ops["LayerNormalization"] == 2 * depth and ops["Softmax"] == depth and ops["Resize"] == 5
    assert ops["MatMul"] == raw_ops["MatMul"] + raw_ops["Einsum"]
    # channels-first from convolution to convolution: the one transpose of a feature map is the patch embedding's
    # (into channels-last tokens); jax2onnx wrapped each of the 31 convolutions in two
    proto = onnx.load_from_string(data)
    made_by = {out: node.op_type for node in proto.graph.node for out in node.output}
    transposed = [made_by.get(n.input[0], "input") for n in proto.graph.node if n.op_type == "Transpose"]
    assert sum(t in ("Conv", "ConvTranspose", "Resize", "Relu", "Add") for t in transposed) == 1, transposed
    assert len(data) <= len(raw)  # nothing folded that grows the file
    assert relative(run_onnxruntime(data, x), ref) <= TOLERANCE
    assert relative(run_openvino(data, x), ref) <= TOLERANCE


def test_depth_anything_rewritten_graph_matches_flax():
    """The rules read the graph, not the model: DINOv2 (no relative bias, LayerScale) and its DPT head too."""
    params = init_params(DA_TINY, seed=0, spread=0.1)
    model = DepthAnything(DA_TINY)
    x = np.random.default_rng(2).standard_normal((2, 56, 84, 3), dtype=np.float32)
    ref = np.asarray(jax.jit(model.apply)({"params": params}, x))
    data = ex.export_onnx(model, params, (56, 84))
    ops = on_input_path(onnx.load_from_string(data))
    assert not SLOW_OPS & set(ops), ops
    # the tapped blocks' outputs have two norms each (the tap's and the next block's), sharing their statistics
    assert ops["LayerNormalization"] == 2 * DA_TINY.depth + len(DA_TINY.taps) and ops["Softmax"] == DA_TINY.depth
    assert ops["Resize"] >= 4
    assert relative(run_onnxruntime(data, x), ref) <= TOLERANCE
    assert relative(run_openvino(data, x), ref) <= TOLERANCE


def blend_graph(frac: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> onnx.ModelProto:
    """A (1, 4, 3, 2) input interpolated along axis 1 to len(frac) rows exactly as jax2onnx lowers `take` + blend."""
    n = len(frac)
    shaped = lambda a: a.astype(np.float32).reshape(1, n, 1, 1)
    inits = [
        numpy_helper.from_array(lower.astype(np.int64), "lower"),
        numpy_helper.from_array(upper.astype(np.int64), "upper"),
        numpy_helper.from_array(shaped(1 - frac), "w_lower"),
        numpy_helper.from_array(shaped(frac), "w_upper"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["moved"], perm=[1, 0, 2, 3]),
        helper.make_node("Gather", ["moved", "lower"], ["g0"], axis=0),
        helper.make_node("Gather", ["moved", "upper"], ["g1"], axis=0),
        helper.make_node("Transpose", ["g0"], ["below"], perm=[1, 0, 2, 3]),
        helper.make_node("Transpose", ["g1"], ["above"], perm=[1, 0, 2, 3]),
        helper.make_node("Mul", ["below", "w_lower"], ["a"]),
        helper.make_node("Mul", ["above", "w_upper"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "blend",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, 3, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ex.ONNX_OPSET)])


@pytest.mark.parametrize("align_corners", [True, False])
def test_a_gather_blend_becomes_resize_only_with_align_corners_taps(align_corners):
    """4 -> 7 rows: align_corners taps (src = dst * 3 / 6) become one Resize; torch's half-pixel taps (src =
    (dst + 0.5) * 4 / 7 - 0.5, clamped at 0) are another interpolation, left as gathers. Same values either way."""
    dst = np.arange(7, dtype=np.float64)
    src = dst * 3 / 6 if align_corners else np.maximum((dst + 0.5) * 4 / 7 - 0.5, 0)
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(lower + 1, 3)
    proto = blend_graph(src - lower, lower, upper)
    model = ir.from_proto(proto)
    optimize(model)
    rewritten = ir.to_proto(model)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = {n.op_type for n in rewritten.graph.node}
    # (a transpose that moves only the axis of size 1 is a reshape either way)
    assert ops == ({"Resize"} if align_corners else {"Reshape", "Gather", "Mul", "Add"})
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 2), dtype=np.float32)
    weight = (src - lower)[None, :, None, None]
    want = x[:, lower] * (1 - weight) + x[:, upper] * weight  # the published formula, in float64
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
