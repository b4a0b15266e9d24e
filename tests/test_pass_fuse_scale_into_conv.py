import numpy as np
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
RNG = np.random.default_rng(0)
CONV_WEIGHTS = {"W": RNG.standard_normal([4, 3, 3, 3]).astype(np.float32),
                "B": RNG.standard_normal([4]).astype(np.float32)}


def conv_then(op_line: str, const: np.ndarray, bias: bool = True, outputs: str = "float[N, 4, 5, 5] y"):
    """x -> Conv -> ``op_line`` (which reads ``c`` and constant ``k``, writes ``y``)."""
    conv_inputs = "x, W, B" if bias else "x, W"
    inits = {"k": const, **(CONV_WEIGHTS if bias else {"W": CONV_WEIGHTS["W"]})}
    return parse_model(HEADER + f"""
    g (float[N, 3, 7, 7] x) => ({outputs}) {{
      c = Conv ({conv_inputs})
      {op_line}
    }}""", inits)


def fuse(proto, name="fuse_scale_into_conv"):
    res = create_pass(name)(Model.from_onnx(proto))
    return res, res.model.to_onnx()


def per_channel(shape, low=0.5, high=2.0):
    return RNG.uniform(low, high, shape).astype(np.float32) * RNG.choice([-1, 1], shape).astype(np.float32)


@pytest.mark.parametrize("op_line, shape", [
    ("y = Mul (c, k)", [4, 1, 1]),
    ("y = Mul (k, c)", [1, 4, 1, 1]),
    ("y = Mul (c, k)", []),
    ("y = Mul (k, c)", [1]),
    ("y = Add (c, k)", [1, 4, 1, 1]),
    ("y = Add (k, c)", [4, 1, 1]),
    ("y = Sub (c, k)", [4, 1, 1]),
    ("y = Div (c, k)", [1, 4, 1, 1]),
    ("y = Div (c, k)", []),
])
def test_per_channel_constant_is_fused(op_line, shape):
    proto = conv_then(op_line, per_channel(shape))
    res, out = fuse(proto)
    assert res.modified and res.stats == {"fused": 1}
    assert count_ops(out) == 1 and count_ops(out, "Conv") == 1
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_outputs(proto, out)
    assert_same_outputs(proto, out, random_feeds(proto, batch=3, seed=7))


def test_mul_into_conv_without_bias():
    proto = conv_then("y = Mul (c, k)", per_channel([4, 1, 1]), bias=False)
    res, out = fuse(proto)
    assert res.modified and count_ops(out) == 1
    assert_same_outputs(proto, out)


def test_chain_of_mul_and_add_fuses_both_in_one_run():
    proto = conv_then("t = Mul (c, k)\n      y = Add (t, k)", per_channel([4, 1, 1]))
    res, out = fuse(proto)
    assert res.stats == {"fused": 2} and count_ops(out) == 1
    assert_same_outputs(proto, out)


@pytest.mark.parametrize("op_line, const", [
    ("y = Mul (c, k)", per_channel([1, 1, 1, 5])),     # varies along width
    ("y = Mul (c, k)", per_channel([4, 5, 5])),        # varies along space
    ("y = Mul (c, k)", per_channel([5])),              # [C]-like but broadcasts along width
    ("y = Sub (k, c)", per_channel([4, 1, 1])),        # constant on the left of Sub
    ("y = Div (k, c)", per_channel([4, 1, 1])),        # constant on the left of Div
    ("y = Div (c, k)", np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1)),  # zero divisor
])
def test_non_per_channel_or_inexact_cases_stay(op_line, const):
    proto = conv_then(op_line, const)
    res, out = fuse(proto)
    assert not res.modified and res.stats == {"fused": 0}
    assert count_ops(out) == 2


def test_conv_output_with_two_consumers_stays():
    proto = conv_then("y = Mul (c, k)\n      r = Relu (c)", per_channel([4, 1, 1]),
                      outputs="float[N, 4, 5, 5] y, float[N, 4, 5, 5] r")
    res, out = fuse(proto)
    assert not res.modified and count_ops(out, "Mul") == 1


def test_shared_conv_weight_is_not_modified_for_the_other_conv():
    proto = parse_model(HEADER + """
    g (float[N, 3, 7, 7] x) => (float[N, 4, 5, 5] y, float[N, 4, 5, 5] z) {
      c = Conv (x, W, B)
      y = Mul (c, k)
      z = Conv (x, W, B)
    }""", {**CONV_WEIGHTS, "k": per_channel([4, 1, 1])})
    res, out = fuse(proto)
    assert res.modified and count_ops(out, "Mul") == 0
    plain = next(n for n in out.graph.node if n.output[0] == "z")
    assert list(plain.input[1:]) == ["W", "B"]
    assert_same_outputs(proto, out)


def test_nothing_to_do_is_a_no_op():
    proto = conv_then("y = Relu (c)\n      z = Mul (y, k)", per_channel([4, 1, 1]),
                      outputs="float[N, 4, 5, 5] z")
    res, out = fuse(proto)
    assert not res.modified and res.stats == {"fused": 0}
    assert count_ops(out) == 3
