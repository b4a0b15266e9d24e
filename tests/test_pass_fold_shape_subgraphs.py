import numpy as np
import onnx_graphsurgeon as gs

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Mul", "Slice")


def fold(proto):
    return create_pass("fold_shape_subgraphs")(Model.from_onnx(proto))


def reshape_shapes(model):
    return [n.inputs[1].values.tolist() for n in model.graph.nodes
            if n.op == "Reshape" and isinstance(n.inputs[1], gs.Constant)]


def check_batches(proto, model, batches=(1, 3)):
    for b in batches:
        assert_same_outputs(proto, model, random_feeds(proto, batch=b))


FLATTEN_GEMM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 3, 4] x) => (float[N, 5] y) {
  r = Relu(x)
  s = Shape(r)
  zero = Constant<value_int = 0>()
  n = Gather<axis = 0>(s, zero)
  ax = Constant<value_ints = [0]>()
  nu = Unsqueeze(n, ax)
  m1 = Constant<value_ints = [-1]>()
  sh = Concat<axis = 0>(nu, m1)
  f = Reshape(r, sh)
  y = Gemm(f, w, b)
}
"""


def gemm_weights():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((24, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def test_flatten_before_gemm_with_dynamic_batch_becomes_copy_dim():
    proto = parse_model(FLATTEN_GEMM, gemm_weights())
    res = fold(proto)
    assert res.modified and res.stats["subgraphs_folded"] == 1
    assert reshape_shapes(res.model) == [[0, -1]]
    out = res.model.to_onnx()
    assert all(count_ops(out, op) == 0 for op in SHAPE_OPS)
    assert count_ops(out) == 3  # Relu, Reshape, Gemm
    check_batches(proto, out)


def test_opset11_shape_of_input_matches_reshape_of_relu_by_symbol():
    proto = parse_model("""
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[N, 2, 3, 4] x) => (float[N, 5] y) {
      r = Relu(x)
      s = Shape(x)
      n = Gather<axis = 0>(s, zero)
      nu = Unsqueeze<axes = [0]>(n)
      sh = Concat<axis = 0>(nu, m1)
      f = Reshape(r, sh)
      y = Gemm(f, w, b)
    }
    """, {**gemm_weights(), "zero": np.array(0, np.int64), "m1": np.array([-1], np.int64)})
    res = fold(proto)
    assert res.modified
    assert reshape_shapes(res.model) == [[0, -1]]
    assert all(count_ops(res.model, op) == 0 for op in SHAPE_OPS)
    check_batches(proto, res.model)


def test_static_dims_and_their_product_fold_to_numbers():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 6] x, float[1, 6] b) => (float[N, 24] y, float[4, 6] e) {
      s = Shape(x)
      i0 = Constant<value_ints = [0]>()
      i1 = Constant<value_int = 1>()
      i2 = Constant<value_int = 2>()
      n = Gather<axis = 0>(s, i0)
      c = Gather<axis = 0>(s, i1)
      h = Gather<axis = 0>(s, i2)
      ch = Mul(c, h)
      chu = Unsqueeze(ch, i0)
      sh = Concat<axis = 0>(n, chu)
      y = Reshape(x, sh)
      st = Constant<value_ints = [1]>()
      en = Constant<value_ints = [3]>()
      hw = Slice(s, st, en)
      e = Expand(b, hw)
    }
    """)
    res = fold(proto)
    assert res.stats["subgraphs_folded"] == 2
    assert reshape_shapes(res.model) == [[0, 24]]
    expand = next(n for n in res.model.graph.nodes if n.op == "Expand")
    assert isinstance(expand.inputs[1], gs.Constant) and expand.inputs[1].values.tolist() == [4, 6]
    out = res.model.to_onnx()
    assert all(count_ops(out, op) == 0 for op in SHAPE_OPS)
    assert count_ops(out) == 2
    check_batches(proto, out)


def test_two_unknown_dims_cannot_become_a_constant():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, M, 4] x) => (float[M, N, 4] y) {
      s = Shape(x)
      i0 = Constant<value_ints = [0]>()
      i1 = Constant<value_ints = [1]>()
      n = Gather<axis = 0>(s, i0)
      m = Gather<axis = 0>(s, i1)
      four = Constant<value_ints = [4]>()
      sh = Concat<axis = 0>(m, n, four)
      y = Reshape(x, sh)
    }
    """)
    res = fold(proto)
    assert not res.modified
    assert count_ops(res.model, "Shape") == 1 and count_ops(res.model, "Concat") == 1
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    assert_same_outputs(proto, res.model, feeds)


def test_graph_without_shape_subgraphs_is_a_no_op():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 3] x) => (float[N, 6] y) {
      sh = Constant<value_ints = [0, -1]>()
      y = Reshape(x, sh)
    }
    """)
    res = fold(proto)
    assert not res.modified
    assert count_ops(res.model) == 2
    check_batches(proto, res.model)


def test_constant_node_beside_a_shape_subgraph_is_not_counted():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 3] x) => (float[N, 6] y, int64[3] s) {
      s = Shape(x)
      sh = Constant<value_ints = [0, -1]>()
      y = Reshape(x, sh)
    }
    """)
    res = fold(proto)
    assert not res.modified
    assert count_ops(res.model, "Constant") == 1 and count_ops(res.model, "Shape") == 1
    check_batches(proto, res.model)


def test_dynamo_flatten_with_allowzero_and_shape_slice_of_the_input():
    """dynamo: Reshape<allowzero=1>(pooled, Concat(Shape<start=0, end=1>(input), [-1]))."""
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[batch, 2, 4, 4] x) => (float[batch, 5] y) {
      s = Shape<start = 0, end = 1>(x)
      p = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
      m1 = Constant<value_ints = [-1]>()
      sh = Concat<axis = 0>(s, m1)
      f = Reshape<allowzero = 1>(p, sh)
      y = Gemm<transB = 1>(f, w, b)
    }
    """, {"w": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32),
          "b": np.zeros(5, np.float32)})
    res = fold(proto)
    assert res.stats["subgraphs_folded"] == 1
    (reshape,) = [n for n in res.model.graph.nodes if n.op == "Reshape"]
    assert reshape.inputs[1].values.tolist() == [0, -1] and reshape.attrs["allowzero"] == 0
    assert count_ops(res.model, "Shape") == 0 and count_ops(res.model, "Concat") == 0
    check_batches(proto, res.model)


def test_allowzero_reshape_with_a_literal_zero_is_left_alone():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[batch, 0, 4] x) => (float[batch, 0, 4] y) {
      s = Shape(x)
      first2 = Gather<axis = 0>(s, idx)
      sh = Concat<axis = 0>(first2, four)
      y = Reshape<allowzero = 1>(x, sh)
    }
    """, {"idx": np.array([0, 1], np.int64), "four": np.array([4], np.int64)})
    res = fold(proto)  # [copy, literal 0, 4] needs allowzero=0 for the copy and 1 for the zero
    assert not res.modified
    (reshape,) = [n for n in res.model.graph.nodes if n.op == "Reshape"]
    assert reshape.attrs["allowzero"] == 1 and count_ops(res.model, "Shape") == 1
    check_batches(proto, res.model)


def test_dynamo_channel_shuffle_with_scalar_size_reshaped_to_a_vector():
    """dynamo's channel shuffle: sym_size = Squeeze(Shape<end=1>(x)); Reshape(sym_size, [-1]) feeds each Concat."""
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[batch, 4, 3, 3] x) => (float[batch, 4, 3, 3] y) {
      s = Shape<start = 0, end = 1>(x)
      n = Squeeze(s)
      m1 = Constant<value_ints = [-1]>()
      n1 = Reshape(n, m1)
      split = Constant<value_ints = [2, 2, 3, 3]>()
      sh5 = Concat<axis = 0>(n1, split)
      v = Reshape<allowzero = 1>(x, sh5)
      t = Transpose<perm = [0, 2, 1, 3, 4]>(v)
      n2 = Reshape(n, m1)
      rest = Constant<value_ints = [-1, 3, 3]>()
      sh4 = Concat<axis = 0>(n2, rest)
      y = Reshape<allowzero = 1>(t, sh4)
    }
    """)
    res = fold(proto)
    assert res.stats["subgraphs_folded"] == 2
    assert sorted(reshape_shapes(res.model)) == [[0, -1, 3, 3], [0, 2, 2, 3, 3]]
    out = res.model.to_onnx()
    assert sorted(n.op_type for n in out.graph.node) == ["Reshape", "Reshape", "Transpose"]
    check_batches(proto, out)


def test_static_shape_value_entering_a_data_slice_folds_there():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 6] x, float[N, 4] z) => (float[N, 4] y) {
      s = Shape(z)
      one = Constant<value_ints = [1]>()
      w = Gather<axis = 0>(s, one)
      zero = Constant<value_ints = [0]>()
      y = Slice(x, zero, w, one)
    }
    """)
    res = fold(proto)
    assert res.stats["subgraphs_folded"] == 1
    (sl,) = [n for n in res.model.graph.nodes if n.op == "Slice"]
    assert isinstance(sl.inputs[2], gs.Constant) and sl.inputs[2].values.tolist() == [4]
    assert count_ops(res.model, "Shape") == 0 and count_ops(res.model, "Gather") == 0
    check_batches(proto, res.model)
