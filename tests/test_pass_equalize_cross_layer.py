"""Cross-layer equalization: exact on homogeneous pairs, equal ranges after, skips what it must."""

import numpy as np
import pytest
from conftest import assert_same_outputs, count_ops, parse_model, random_feeds, run_ort

from onnxopt.errors import RecipeError
from onnxopt.ir import Model
from onnxopt.passes import create_pass
from onnxopt.passes.equalize_cross_layer import input_channel_ranges, output_channel_ranges

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def uneven(rng, *shape):
    """Weights whose output channels span four orders of magnitude (what BN folding leaves behind)."""
    w = rng.standard_normal(shape)
    return (w * 10.0 ** rng.uniform(-2, 2, size=(shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)


def equalize(proto, **options):
    res = create_pass("equalize_cross_layer", options)(Model.from_onnx(proto))
    return res, res.model.to_onnx()


def weight(proto, name):
    import onnx.numpy_helper as nh

    inits = {t.name: t for t in proto.graph.initializer}
    conv = next(n for n in proto.graph.node if n.output[0] == name)
    return nh.to_array(inits[conv.input[1]])


def spread(r):
    """max/min of per-channel ranges: 1 when every channel has the same range."""
    return float(r.max() / r.min())


def test_relu_pair_is_exact_and_ranges_become_equal():
    rng = np.random.default_rng(0)
    proto = parse_model(HEADER + """
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
      r = Relu (c1)
      y = Conv <pads = [1, 1, 1, 1]> (r, W2, B2)
    }""", {"W1": uneven(rng, 6, 3, 3, 3), "B1": uneven(rng, 6),
           "W2": rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "B2": rng.standard_normal(4).astype(np.float32)})
    res, out = equalize(proto)
    assert res.modified and res.stats["pairs"] == 1 and res.stats["relu6_replaced"] == 0
    assert_same_outputs(proto, out, random_feeds(proto, batch=3, seed=2), rtol=1e-5)
    before1, before2 = output_channel_ranges(weight(proto, "c1")), input_channel_ranges(weight(proto, "y"), 1)
    after1, after2 = output_channel_ranges(weight(out, "c1")), input_channel_ranges(weight(out, "y"), 1)
    # each channel's range is the geometric mean of its two ranges before, in both layers
    np.testing.assert_allclose(after1, after2, rtol=1e-5)
    np.testing.assert_allclose(after1, np.sqrt(before1 * before2), rtol=1e-5)
    assert spread(before1) > 100 and spread(after1) < spread(before1) / 10


def test_chain_with_depthwise_and_leaky_relu_converges_and_is_exact():
    rng = np.random.default_rng(1)
    proto = parse_model(HEADER + """
    g (float[N, 3, 8, 8] x) => (float[N, 5, 8, 8] y) {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
      r1 = Relu (c1)
      c2 = Conv <group = 8, pads = [1, 1, 1, 1]> (r1, W2, B2)
      r2 = LeakyRelu <alpha = 0.1> (c2)
      y = Conv (r2, W3)
    }""", {"W1": uneven(rng, 8, 3, 3, 3), "B1": uneven(rng, 8), "W2": uneven(rng, 8, 1, 3, 3), "B2": uneven(rng, 8),
           "W3": uneven(rng, 5, 8, 1, 1)})
    res, out = equalize(proto, tolerance=1e-6)
    assert res.modified and res.stats["pairs"] == 2 and res.stats["iterations"] > 1
    assert_same_outputs(proto, out, random_feeds(proto, batch=2, seed=3), rtol=1e-5)
    # converged: both pairs equalized at once (the depthwise conv is Conv2 of one pair and Conv1 of the next)
    w1, w2, w3 = weight(out, "c1"), weight(out, "c2"), weight(out, "y")
    np.testing.assert_allclose(output_channel_ranges(w1), input_channel_ranges(w2, 8), rtol=1e-4)
    np.testing.assert_allclose(output_channel_ranges(w2), input_channel_ranges(w3, 1), rtol=1e-4)
    assert spread(output_channel_ranges(w2)) < spread(output_channel_ranges(weight(proto, "c2")))


def test_grouped_second_conv_and_pool_between_are_exact():
    rng = np.random.default_rng(2)
    proto = parse_model(HEADER + """
    g (float[N, 4, 8, 8] x) => (float[N, 6, 4, 4] y) {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
      r = Relu (c1)
      p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
      y = Conv <group = 2, pads = [1, 1, 1, 1]> (p, W2, B2)
    }""", {"W1": uneven(rng, 8, 4, 3, 3), "W2": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
           "B2": rng.standard_normal(6).astype(np.float32)})
    res, out = equalize(proto)
    assert res.modified and res.stats["pairs"] == 1
    assert_same_outputs(proto, out, rtol=1e-5)
    np.testing.assert_allclose(output_channel_ranges(weight(out, "c1")), input_channel_ranges(weight(out, "y"), 2),
                               rtol=1e-5)


@pytest.mark.parametrize("extra", [
    "z = Sigmoid (c1)",   # Conv1's output has another reader
    "z = Identity (r)",   # the activation's output has another reader
])
def test_pairs_with_other_consumers_are_skipped(extra):
    rng = np.random.default_rng(3)
    proto = parse_model(HEADER + f"""
    g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y, float[N, 6, 6, 6] z) {{
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
      r = Relu (c1)
      y = Conv <pads = [1, 1, 1, 1]> (r, W2)
      {extra}
    }}""", {"W1": uneven(rng, 6, 3, 3, 3), "B1": uneven(rng, 6), "W2": uneven(rng, 4, 6, 3, 3)})
    res, out = equalize(proto)
    assert not res.modified and res.stats["pairs"] == 0
    np.testing.assert_array_equal(weight(out, "c1"), weight(proto, "c1"))


def test_graph_output_between_is_skipped_and_shared_weight_is_copied():
    rng = np.random.default_rng(4)
    skipped = parse_model(HEADER + """
    g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y, float[N, 6, 6, 6] c1) {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
      y = Conv <pads = [1, 1, 1, 1]> (c1, W2)
    }""", {"W1": uneven(rng, 6, 3, 3, 3), "W2": uneven(rng, 4, 6, 3, 3)})
    assert not equalize(skipped)[0].modified
    # W2 is also read by a conv outside the pair: that conv must keep the original values
    shared = parse_model(HEADER + """
    g (float[N, 3, 6, 6] x, float[N, 6, 6, 6] x2) => (float[N, 4, 6, 6] y, float[N, 4, 6, 6] z) {
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
      r = Relu (c1)
      y = Conv <pads = [1, 1, 1, 1]> (r, W2)
      z = Conv <pads = [1, 1, 1, 1]> (x2, W2)
    }""", {"W1": uneven(rng, 6, 3, 3, 3), "W2": uneven(rng, 4, 6, 3, 3)})
    res, out = equalize(shared)
    assert res.modified
    assert_same_outputs(shared, out, rtol=1e-5)


RELU6 = HEADER + """
g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {
  lo = Constant <value = float {0.0}> ()
  hi = Constant <value = float {6.0}> ()
  c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
  r = Clip (c1, lo, hi)
  y = Conv <pads = [1, 1, 1, 1]> (r, W2)
}"""


def relu6_model(seed=5):
    rng = np.random.default_rng(seed)
    return parse_model(RELU6, {"W1": uneven(rng, 6, 3, 3, 3), "B1": np.zeros(6, np.float32),
                               "W2": rng.standard_normal((4, 6, 3, 3)).astype(np.float32)})


def test_relu6_pairs_are_skipped_by_default():
    proto = relu6_model()
    res, out = equalize(proto)
    assert not res.modified and res.stats["pairs"] == 0 and res.stats["relu6_pairs_skipped"] == 1
    assert count_ops(out, "Clip") == 1


def test_relu6_as_relu_is_exact_only_where_the_clip_never_bites():
    proto = relu6_model()
    res, out = equalize(proto, relu6_as_relu=True)
    assert res.modified and res.stats["relu6_replaced"] == 1 and res.stats["pairs"] == 1
    assert count_ops(out, "Clip") == 0 and count_ops(out, "Relu") == 1
    tiny = {"x": random_feeds(proto, seed=6)["x"] * 1e-3}  # every activation far below 6
    assert float(run_ort(proto, tiny)[0].std()) > 0
    assert_same_outputs(proto, out, tiny, rtol=1e-5)
    big = {"x": random_feeds(proto, seed=6)["x"] * 100.0}  # the clip bites: the function changes
    assert not np.allclose(run_ort(proto, big)[0], run_ort(out, big)[0], rtol=1e-3)


def test_clip_without_upper_bound_is_homogeneous():
    rng = np.random.default_rng(7)
    proto = parse_model(HEADER + """
    g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {
      lo = Constant <value = float {0.0}> ()
      c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
      r = Clip (c1, lo)
      y = Conv <pads = [1, 1, 1, 1]> (r, W2)
    }""", {"W1": uneven(rng, 6, 3, 3, 3), "B1": uneven(rng, 6), "W2": uneven(rng, 4, 6, 3, 3)})
    res, out = equalize(proto)
    assert res.modified and res.stats["pairs"] == 1 and count_ops(out, "Clip") == 1
    assert_same_outputs(proto, out, rtol=1e-5)


def test_options_are_checked():
    with pytest.raises(RecipeError):
        create_pass("equalize_cross_layer", {"relu6": True})
    with pytest.raises(RecipeError):
        create_pass("equalize_cross_layer", {"tolerance": 0.0})
