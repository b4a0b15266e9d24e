import numpy as np
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
RNG = np.random.default_rng(3)
W = RNG.standard_normal([6, 2, 3, 3]).astype(np.float32)
B = RNG.standard_normal([6]).astype(np.float32)


def model(conv_inputs: str, op_line: str, k: np.ndarray, outputs="float[N, 6, 4, 4] y"):
    inits = {"W": W, "k": k, **({"B": B} if "B" in conv_inputs else {})}
    return parse_model(HEADER + f"""
    g (float[N, 2, 6, 6] x) => ({outputs}) {{
      c = Conv ({conv_inputs})
      {op_line}
    }}""", inits)


def fuse(proto):
    res = create_pass("fuse_conv_add_bias")(Model.from_onnx(proto))
    return res, res.model.to_onnx()


@pytest.mark.parametrize("conv_inputs, op_line, shape", [
    ("x, W", "y = Add (c, k)", [6, 1, 1]),
    ("x, W", "y = Add (k, c)", [1, 6, 1, 1]),
    ("x, W, B", "y = Add (c, k)", [1, 6, 1, 1]),
    ("x, W, B", "y = Sub (c, k)", [6, 1, 1]),
])
def test_per_channel_add_becomes_conv_bias(conv_inputs, op_line, shape):
    proto = model(conv_inputs, op_line, RNG.standard_normal(shape).astype(np.float32))
    res, out = fuse(proto)
    assert res.modified and res.stats == {"fused": 1}
    assert count_ops(out) == 1
    conv = out.graph.node[0]
    assert conv.op_type == "Conv" and len(conv.input) == 3 and conv.output[0] == "y"
    assert out.graph.initializer and {t.name for t in out.graph.initializer} >= {conv.input[1], conv.input[2]}
    assert_same_outputs(proto, out)
    assert_same_outputs(proto, out, random_feeds(proto, batch=5, seed=2))


def test_one_dimensional_conv_bias():
    w1 = RNG.standard_normal([3, 2, 3]).astype(np.float32)
    proto = parse_model(HEADER + """
    g (float[N, 2, 9] x) => (float[N, 3, 7] y) {
      c = Conv (x, W)
      y = Add (c, k)
    }""", {"W": w1, "k": RNG.standard_normal([3, 1]).astype(np.float32)})
    res, out = fuse(proto)
    assert res.modified and count_ops(out) == 1
    assert_same_outputs(proto, out)


def test_mul_is_not_this_passes_job():
    proto = model("x, W, B", "y = Mul (c, k)", RNG.standard_normal([6, 1, 1]).astype(np.float32))
    res, out = fuse(proto)
    assert not res.modified and count_ops(out, "Mul") == 1


def test_spatial_add_stays():
    proto = model("x, W, B", "y = Add (c, k)", RNG.standard_normal([6, 4, 4]).astype(np.float32))
    res, out = fuse(proto)
    assert not res.modified and count_ops(out, "Add") == 1


def test_add_of_two_activations_stays():
    proto = parse_model(HEADER + """
    g (float[N, 2, 6, 6] x, float[N, 6, 4, 4] s) => (float[N, 6, 4, 4] y) {
      c = Conv (x, W)
      y = Add (c, s)
    }""", {"W": W})
    res, out = fuse(proto)
    assert not res.modified and count_ops(out) == 2


def test_nothing_to_do_is_a_no_op():
    proto = parse_model(HEADER + """
    g (float[N, 2, 6, 6] x) => (float[N, 6, 4, 4] y) { y = Conv (x, W, B) }""", {"W": W, "B": B})
    res, out = fuse(proto)
    assert not res.modified and res.stats == {"fused": 0} and count_ops(out) == 1
