"""QDQ placement: the per-target tables and the planner's decisions (analysis only, no insertion)."""

import numpy as np
import pytest

from conftest import parse_model
from onnxopt.errors import OnnxoptError, UnsupportedError
from onnxopt.ir import Model
from onnxopt.passes import create_pass
from onnxopt.quantize.config import QuantizeConfig, Target, parse_target
from onnxopt.quantize.placement import (
    CPU_TABLE,
    MIN_INTEGER_REDUCTION,
    TENSORRT_TABLE,
    name_nodes,
    plan_quantization,
)
from onnxopt.quantize.qdq import prepare_for_quantization
from test_quantize_qdq import residual_cnn

RNG = np.random.default_rng(0)


def prepared(proto):
    """The model as the planner sees it inside quantize(): cleaned (BN folded), opset >= 13, named."""
    model, _ = prepare_for_quantization(create_pass("cleanup")(Model.from_onnx(proto)).model)
    return model


def by_op(plan, op):
    return [n for n in plan.nodes.values() if n.op == op]


def reason(plan, op):
    return next(f.reason for f in plan.float_nodes if f.op == op)


def test_cpu_plan_for_the_residual_cnn():
    model = prepared(residual_cnn())
    plan = plan_quantization(model, QuantizeConfig(activations="asymmetric"))
    assert {n.op for n in plan.nodes.values()} == {"Conv", "Add", "GlobalAveragePool", "Flatten", "Gemm", }
    conv1 = next(n for n in by_op(plan, "Conv") if n.output == "r1")
    assert conv1.absorbed and conv1.weight == 1 and conv1.weight_axis == 0 and conv1.bias == 2
    assert by_op(plan, "Add")[0].absorbed  # Relu after the residual Add folds into the Add's Q too
    assert by_op(plan, "Gemm")[0].output is None  # QGemm returns float: no output Q before the graph output
    # Flatten is a pass-through: its output reuses the GlobalAveragePool output's range
    flat = by_op(plan, "Flatten")[0]
    assert plan.tensors[flat.output] == plan.tensors["gp"] == "gp"
    assert set(plan.calibration_tensors()) == {"x", "r1", "c2", "r2", "gp"}
    assert not plan.float_nodes


def test_symmetric_activations_keep_relu_float_and_say_why():
    plan = plan_quantization(prepared(residual_cnn()), QuantizeConfig(activations="symmetric"))
    assert not any(n.absorbed for n in plan.nodes.values())
    assert "symmetric activations" in reason(plan, "Relu")
    assert plan.q_per_consumer  # int8 Q/DQ pairs need one Q per consumer on x86


def test_per_tensor_weights_have_no_axis():
    plan = plan_quantization(prepared(residual_cnn()), QuantizeConfig(weights="per-tensor"))
    assert all(n.weight_axis is None for n in plan.nodes.values() if n.weight is not None)


def test_exclude_by_name_and_by_op_type():
    model = prepared(residual_cnn())
    conv2 = next(n.name for n in model.graph.nodes if n.op == "Conv" and n.outputs[0].name == "c2")
    plan = plan_quantization(model, QuantizeConfig(exclude=(conv2, "Gemm")))
    assert conv2 not in plan.nodes and not by_op(plan, "Gemm")
    assert {f.reason for f in plan.float_nodes if f.op in ("Conv", "Gemm")} == {"excluded (--exclude)"}
    with pytest.raises(OnnxoptError, match="matches no node"):
        plan_quantization(model, QuantizeConfig(exclude=("NoSuchNode",)))


def test_secondary_ops_join_only_a_quantized_region():
    # an Add of two graph inputs would need two extra Qs: it stays float
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 6, 6] a, float[N, 4, 6, 6] b) => (float[N, 4, 6, 6] y) {
      s = Add (a, b)
      y = Conv <pads = [1, 1, 1, 1]> (s, w)
    }
    """
    plan = plan_quantization(prepared(parse_model(text, {"w": RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)})),
                             QuantizeConfig())
    assert not by_op(plan, "Add") and "inputs are not quantized" in reason(plan, "Add")
    assert plan.tensors == {"s": "s", "y": "y"}  # QLinearConv always has a quantized output


def test_pass_through_with_no_quantized_reader_stays_float():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 4, 4] y) {
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
    }
    """
    plan = plan_quantization(prepared(parse_model(text, {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)})),
                             QuantizeConfig())
    assert not by_op(plan, "MaxPool") and "feeds no quantized op" in reason(plan, "MaxPool")


def test_matmul_with_constant_weight_quantizes_per_output_column():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 6] x, float[N, 5] z) => (float[N, 5] y, float[N, N] p) {
      y = MatMul (x, w)
      p = MatMul (y, zt)
      zt = Transpose (z)
    }
    """
    model = prepared(parse_model(text.replace("p = MatMul (y, zt)\n      zt = Transpose (z)",
                                              "zt = Transpose (z)\n      p = MatMul (y, zt)"),
                                 {"w": RNG.standard_normal((6, 5)).astype(np.float32)}))
    plan = plan_quantization(model, QuantizeConfig())
    weighted, both = sorted(by_op(plan, "MatMul"), key=lambda n: n.weight is None)
    assert weighted.weight == 1 and weighted.weight_axis == 1 and weighted.activations == (0,)
    assert both.weight is None and both.activations == (0, 1)


def test_clip_absorbed_only_from_zero():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      r = Clip (c, lo, hi)
      y = Conv <pads = [1, 1, 1, 1]> (r, w2)
    }
    """
    w = {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w2": RNG.standard_normal((4, 4, 3, 3)).astype(np.float32),
         "hi": np.array(6.0, np.float32)}
    relu6 = plan_quantization(prepared(parse_model(text, {**w, "lo": np.array(0.0, np.float32)})), QuantizeConfig())
    assert next(n for n in by_op(relu6, "Conv") if n.absorbed).output == "r"
    clip = plan_quantization(prepared(parse_model(text, {**w, "lo": np.array(-1.0, np.float32)})), QuantizeConfig())
    assert not any(n.absorbed for n in clip.nodes.values())


STEM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, CIN, 12, 12] x) => (float[N, 8, 12, 12] y) {
  c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
  r = Relu (c)
  NEXT
}
"""
TO_CONV = "y = Conv (r, w2)"
TO_POOL = "p = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r)  y = Conv (p, w2)"


def stem_plan(cin, next_op=TO_CONV, target="cpu"):
    text = STEM.replace("CIN", str(cin)).replace("NEXT", next_op)
    weights = {"w": RNG.standard_normal((16, cin, 3, 3)).astype(np.float32), "b": np.zeros(16, np.float32),
               "w2": RNG.standard_normal((8, 16, 1, 1)).astype(np.float32)}
    model = prepared(parse_model(text, weights))
    stem = next(n.name for n in model.graph.nodes if n.op == "Conv" and n.inputs[0].name == "x")
    return plan_quantization(model, QuantizeConfig(target=target)), stem


def test_a_one_channel_stem_conv_stays_float_and_says_why():
    # 9 products per output (1 channel x 3x3): onnxruntime's integer Conv is slower than its float one
    plan, stem = stem_plan(1)
    assert stem not in plan.nodes and len(plan.compute_nodes()) == 1
    why = next(f.reason for f in plan.float_nodes if f.name == stem)
    assert "slower than float" in why and str(MIN_INTEGER_REDUCTION) in why
    assert "x" not in plan.calibration_tensors() and plan.tensors == {"r": "r", "y": "y"}  # the first Q moves after it


def test_stems_with_enough_products_or_a_pooling_consumer_stay_integer():
    plan, stem = stem_plan(3)  # 27 products per output (an RGB image's 3x3 stem)
    assert stem in plan.nodes
    # in front of a MaxPool (or Concat) onnxruntime would leave an NCHW int8 island: integer is faster overall
    plan, stem = stem_plan(1, TO_POOL)
    assert stem in plan.nodes and len(plan.compute_nodes()) == 2
    plan, stem = stem_plan(1, target="tensorrt")  # the rule is the CPU table's
    assert stem in plan.nodes


def test_a_short_conv_inside_the_integer_region_stays_integer():
    # 8 products per output, but its input is quantized anyway: a float island would add a DQ/Q pair
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
      a = Conv <pads = [1, 1, 1, 1]> (x, w1)
      r = Relu (a)
      y = Conv (r, w2)
    }
    """
    plan = plan_quantization(prepared(parse_model(text, {"w1": RNG.standard_normal((8, 3, 3, 3)).astype(np.float32),
                                                         "w2": RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)})),
                             QuantizeConfig())
    assert len(plan.compute_nodes()) == 2


def test_depthwise_convs_are_not_short_reductions():
    # a depthwise 3x3 also has 9 products per output, but onnxruntime has a separate integer kernel for it
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16, 8, 8] x) => (float[N, 8, 8, 8] y) {
      d = Conv <group = 16, pads = [1, 1, 1, 1]> (x, w1)
      r = Relu (d)
      y = Conv (r, w2)
    }
    """
    plan = plan_quantization(prepared(parse_model(text, {"w1": RNG.standard_normal((16, 1, 3, 3)).astype(np.float32),
                                                         "w2": RNG.standard_normal((8, 16, 1, 1)).astype(np.float32)})),
                             QuantizeConfig())
    assert len(plan.compute_nodes()) == 2


def test_tensorrt_plan_quantizes_inputs_only_and_residual_adds():
    model = prepared(residual_cnn())
    plan = plan_quantization(model, QuantizeConfig(target="tensorrt"))
    assert {n.op for n in plan.nodes.values()} == {"Conv", "Gemm", "Add"}
    assert all(n.output is None for n in plan.nodes.values())  # no output Q
    assert all(n.bias is None for n in plan.nodes.values())  # TensorRT wants float biases
    add = by_op(plan, "Add")[0]
    assert add.activations == (0, 1)
    assert not plan.dq_for_float_consumers
    assert QuantizeConfig(target="tensorrt").resolved().activations.value == "symmetric"


def test_tensorrt_refuses_asymmetric_and_cuda_is_refused_with_advice():
    with pytest.raises(UnsupportedError, match="symmetric"):
        QuantizeConfig(target="tensorrt", activations="asymmetric")
    with pytest.raises(UnsupportedError, match="no INT8 convolution kernels.*FP16"):
        parse_target("cuda")
    assert parse_target("CPU") is Target.CPU


def test_tables_are_data():
    assert CPU_TABLE.rules["Conv"].weight == 1 and CPU_TABLE.rules["MaxPool"].passthrough
    assert "ConvTranspose" in TENSORRT_TABLE.rules and "ConvTranspose" not in CPU_TABLE.rules
    assert set(CPU_TABLE.absorbable) == {"Relu", "Clip"}
    assert [f.op for f in CPU_TABLE.float_faster] == ["Conv"] and not TENSORRT_TABLE.float_faster


def test_nameless_nodes_get_unique_names():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { a = Relu(x)  y = Relu(a) }
    """)
    model = Model.from_onnx(proto)
    for n in model.graph.nodes:
        n.name = ""
    assert name_nodes(model) == 2
    assert len({n.name for n in model.graph.nodes}) == 2
