import numpy as np
import onnx
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def bn_params(c, seed=1, var_low=0.5):
    rng = np.random.default_rng(seed)
    return {
        "s": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "b": rng.standard_normal(c).astype(np.float32),
        "m": rng.standard_normal(c).astype(np.float32),
        "v": rng.uniform(var_low, 2.0, c).astype(np.float32),
    }


def weights(seed=0, **shapes):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def fold(proto):
    res = create_pass("fold_batchnorm")(Model.from_onnx(proto))
    return res, res.model.to_onnx()


def assert_folded(proto, layer_op, feeds=None):
    res, out = fold(proto)
    assert res.modified and res.stats == {"folded": 1}
    assert count_ops(out, "BatchNormalization") == 0
    assert count_ops(out, layer_op) == 1 and count_ops(out) == 1
    assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
    assert_same_outputs(proto, out, feeds)
    return out


@pytest.mark.parametrize("group, cin, w_shape", [
    (1, 4, [6, 4, 3, 3]),   # plain
    (2, 4, [6, 2, 3, 3]),   # grouped
    (4, 4, [4, 1, 3, 3]),   # depthwise (group = C)
])
def test_conv_bn_folds_for_any_group_count(group, cin, w_shape):
    cout = w_shape[0]
    proto = parse_model(HEADER + f"""
    g (float[N, {cin}, 6, 6] x) => (float[N, {cout}, 6, 6] y) {{
      c = Conv <group = {group}, pads = [1, 1, 1, 1]> (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
    }}""", {**weights(W=w_shape, B=[cout]), **bn_params(cout)})
    out = assert_folded(proto, "Conv")
    assert_same_outputs(proto, out, random_feeds(proto, batch=3, seed=5))  # another batch size


def test_conv_without_bias_gets_one():
    proto = parse_model(HEADER + """
    g (float[N, 3, 5, 5] x) => (float[N, 4, 3, 3] y) {
      c = Conv (x, W)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[4, 3, 3, 3]), **bn_params(4)})
    out = assert_folded(proto, "Conv")
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2]


def test_conv_transpose_with_groups_scales_per_group_columns():
    # W is [Cin, Cout/group, kH, kW] = [4, 3, 2, 2] with group 2: 6 output channels
    proto = parse_model(HEADER + """
    g (float[N, 4, 5, 5] x) => (float[N, 6, 10, 10] y) {
      c = ConvTranspose <group = 2, strides = [2, 2]> (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[4, 3, 2, 2], B=[6]), **bn_params(6)})
    assert_folded(proto, "ConvTranspose")


def test_conv_transpose_without_bias():
    proto = parse_model(HEADER + """
    g (float[N, 2, 4, 4] x) => (float[N, 5, 6, 6] y) {
      c = ConvTranspose (x, W)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[2, 5, 3, 3]), **bn_params(5)})
    assert_folded(proto, "ConvTranspose")


@pytest.mark.parametrize("trans_b, w_shape", [(0, [8, 5]), (1, [5, 8])])
def test_gemm_bn_folds_over_feature_axis(trans_b, w_shape):
    proto = parse_model(HEADER + f"""
    g (float[N, 8] x) => (float[N, 5] y) {{
      c = Gemm <transB = {trans_b}, alpha = 0.5, beta = 2.0> (x, W, C)
      y = BatchNormalization (c, s, b, m, v)
    }}""", {**weights(W=w_shape, C=[5]), **bn_params(5)})
    out = assert_folded(proto, "Gemm")
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    assert {a.name: a.i for a in gemm.attribute if a.name == "transB"}.get("transB", 0) == trans_b


def test_gemm_without_bias_gets_one():
    proto = parse_model(HEADER + """
    g (float[N, 3] x) => (float[N, 4] y) {
      c = Gemm <transB = 1> (x, W)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[4, 3]), **bn_params(4)})
    assert_folded(proto, "Gemm")


def test_epsilon_attribute_is_honoured():
    # tiny variances: ignoring epsilon = 0.5 would change the output by orders of magnitude
    proto = parse_model(HEADER + """
    g (float[N, 2, 4, 4] x) => (float[N, 3, 4, 4] y) {
      c = Conv (x, W, B)
      y = BatchNormalization <epsilon = 0.5> (c, s, b, m, v)
    }""", {**weights(W=[3, 2, 1, 1], B=[3]), **bn_params(3),
           "v": np.array([1e-4, 2e-4, 3e-4], np.float32)})
    assert_folded(proto, "Conv")


def test_bn_input_with_two_consumers_is_not_folded():
    proto = parse_model(HEADER + """
    g (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y, float[N, 4, 4, 4] r) {
      c = Conv (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
      r = Relu (c)
    }""", {**weights(W=[4, 3, 1, 1], B=[4]), **bn_params(4)})
    res, out = fold(proto)
    assert not res.modified and res.stats == {"folded": 0}
    assert count_ops(out, "BatchNormalization") == 1
    assert_same_outputs(proto, out)


def test_layer_output_that_is_a_graph_output_is_not_folded():
    proto = parse_model(HEADER + """
    g (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y, float[N, 4, 4, 4] c) {
      c = Conv (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[4, 3, 1, 1], B=[4]), **bn_params(4)})
    res, out = fold(proto)
    assert not res.modified and count_ops(out, "BatchNormalization") == 1


def test_bn_after_a_graph_input_is_left_alone():
    proto = parse_model(HEADER + """
    g (float[N, 4, 3, 3] x) => (float[N, 4, 3, 3] y) {
      y = BatchNormalization (x, s, b, m, v)
    }""", bn_params(4))
    res, out = fold(proto)
    assert not res.modified and count_ops(out, "BatchNormalization") == 1


def test_shared_weight_is_copied_not_modified_in_place():
    proto = parse_model(HEADER + """
    g (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y, float[N, 4, 4, 4] z) {
      c = Conv (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
      z = Conv (x, W, B)
    }""", {**weights(W=[4, 3, 1, 1], B=[4]), **bn_params(4)})
    w_before = next(t for t in proto.graph.initializer if t.name == "W")
    res, out = fold(proto)
    assert res.modified and count_ops(out, "BatchNormalization") == 0
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    plain = next(n for n in convs if n.output[0] == "z")
    folded = next(n for n in convs if n.output[0] == "y")
    assert list(plain.input[1:]) == ["W", "B"]
    assert folded.input[1] != "W" and folded.input[2] != "B"
    w_after = next(t for t in out.graph.initializer if t.name == "W")
    assert w_after.raw_data == w_before.raw_data
    assert_same_outputs(proto, out)


def test_weight_from_a_constant_node_is_folded():
    proto = parse_model(HEADER + """
    g (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y) {
      c = Conv (x, W, B)
      y = BatchNormalization (c, s, b, m, v)
    }""", {**weights(W=[4, 3, 1, 1], B=[4]), **bn_params(4)})
    w = next(t for t in proto.graph.initializer if t.name == "W")
    proto.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["W"], value=w))
    proto.graph.initializer.remove(w)
    onnx.checker.check_model(proto, full_check=True)
    assert_folded(proto, "Conv")


def test_training_mode_bn_is_kept():
    proto = parse_model(HEADER + """
    g (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y) {
      c = Conv (x, W, B)
      y, rm, rv = BatchNormalization <training_mode = 1> (c, s, b, m, v)
    }""", {**weights(W=[4, 3, 1, 1], B=[4]), **bn_params(4)})
    res, out = fold(proto)
    assert not res.modified and count_ops(out, "BatchNormalization") == 1


def test_nothing_to_do_is_a_no_op():
    proto = parse_model(HEADER + """
    g (float[N, 4] x) => (float[N, 4] y) { y = Relu (x) }""")
    res, out = fold(proto)
    assert not res.modified and res.stats == {"folded": 0}
    assert count_ops(out) == 1
