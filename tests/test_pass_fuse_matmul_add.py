import numpy as np
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
RNG = np.random.default_rng(4)
W = RNG.standard_normal([8, 5]).astype(np.float32)


def fuse(proto):
    res = create_pass("fuse_matmul_add")(Model.from_onnx(proto))
    return res, res.model.to_onnx()


@pytest.mark.parametrize("add_line, bias_shape", [
    ("y = Add (h, b)", [5]),
    ("y = Add (b, h)", [5]),
    ("y = Add (h, b)", [1, 5]),
])
def test_matmul_add_becomes_gemm_keeping_output_name(add_line, bias_shape):
    proto = parse_model(HEADER + f"""
    g (float[N, 8] x) => (float[N, 5] y) {{
      h = MatMul (x, W)
      {add_line}
    }}""", {"W": W, "b": RNG.standard_normal(bias_shape).astype(np.float32)})
    res, out = fuse(proto)
    assert res.modified and res.stats == {"fused": 1}
    assert count_ops(out) == 1 and count_ops(out, "Gemm") == 1
    gemm = out.graph.node[0]
    assert list(gemm.input) == ["x", "W", "b"] and list(gemm.output) == ["y"]
    assert_same_outputs(proto, out)
    assert_same_outputs(proto, out, random_feeds(proto, batch=7, seed=1))


def test_rank_of_an_intermediate_comes_from_shape_inference():
    # x's rank is only known after inference (Flatten of a 4-D input)
    proto = parse_model(HEADER + """
    g (float[N, 2, 2, 2] x) => (float[N, 5] y) {
      f = Flatten (x)
      h = MatMul (f, W)
      y = Add (h, b)
    }""", {"W": W, "b": RNG.standard_normal([5]).astype(np.float32)})
    res, out = fuse(proto)
    assert res.modified and count_ops(out, "Gemm") == 1 and count_ops(out, "MatMul") == 0
    assert_same_outputs(proto, out)


def test_internal_add_output_feeds_the_next_node():
    proto = parse_model(HEADER + """
    g (float[N, 8] x) => (float[N, 5] y) {
      h = MatMul (x, W)
      a = Add (h, b)
      y = Relu (a)
    }""", {"W": W, "b": RNG.standard_normal([5]).astype(np.float32)})
    res, out = fuse(proto)
    assert res.modified and [n.op_type for n in out.graph.node] == ["Gemm", "Relu"]
    assert_same_outputs(proto, out)


def test_batched_matmul_stays():
    proto = parse_model(HEADER + """
    g (float[N, 3, 8] x) => (float[N, 3, 5] y) {
      h = MatMul (x, W)
      y = Add (h, b)
    }""", {"W": W, "b": RNG.standard_normal([5]).astype(np.float32)})
    res, out = fuse(proto)
    assert not res.modified and res.stats == {"fused": 0}
    assert count_ops(out, "MatMul") == 1 and count_ops(out, "Gemm") == 0


@pytest.mark.parametrize("bias_shape", [[1, 1, 5], [4, 5]])
def test_bias_of_other_shapes_stays(bias_shape):
    n = bias_shape[0] if len(bias_shape) == 2 else "N"
    out_shape = "float[1, N, 5]" if len(bias_shape) == 3 else f"float[{n}, 5]"
    proto = parse_model(HEADER + f"""
    g (float[{n}, 8] x) => ({out_shape} y) {{
      h = MatMul (x, W)
      y = Add (h, b)
    }}""", {"W": W, "b": RNG.standard_normal(bias_shape).astype(np.float32)})
    res, out = fuse(proto)
    assert not res.modified and count_ops(out, "Gemm") == 0


def test_non_constant_weight_or_shared_matmul_output_stays():
    proto = parse_model(HEADER + """
    g (float[N, 8] x, float[8, 5] w) => (float[N, 5] y, float[N, 5] z) {
      h = MatMul (x, w)
      y = Add (h, b)
      g2 = MatMul (x, W)
      z = Add (g2, b)
      r = Relu (g2)
    }""", {"W": W, "b": RNG.standard_normal([5]).astype(np.float32)})
    res, out = fuse(proto)
    assert not res.modified and count_ops(out, "Gemm") == 0


def test_nothing_to_do_is_a_no_op():
    proto = parse_model(HEADER + """
    g (float[N, 8] x) => (float[N, 5] y) { y = MatMul (x, W) }""", {"W": W})
    res, out = fuse(proto)
    assert not res.modified and res.stats == {"fused": 0} and count_ops(out) == 1
