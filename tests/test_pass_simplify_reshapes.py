import numpy as np
import onnx_graphsurgeon as gs

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass


def simplify(proto):
    return create_pass("simplify_reshapes")(Model.from_onnx(proto))


def check(proto, model, batches=(1, 3)):
    for b in batches:
        assert_same_outputs(proto, model, random_feeds(proto, batch=b))


def test_reshape_chain_keeps_only_the_last_reshape():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 3, 4] x) => (float[N, 24] y) {
      a = Reshape(x, s1)
      b = Flatten<axis = 2>(a)
      y = Reshape(b, s2)
    }
    """, {"s1": np.array([0, 6, 4], np.int64), "s2": np.array([-1, 24], np.int64)})
    res = simplify(proto)
    assert res.modified and res.stats["nodes_removed"] == 2
    out = res.model.to_onnx()
    assert count_ops(out) == 1 and count_ops(out, "Reshape") == 1
    assert out.graph.node[0].input[0] == "x" and out.graph.output[0].name == "y"
    check(proto, out)


def test_reshape_whose_shape_copies_an_intermediate_dim_is_kept():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 3, 4] x) => (float[N, 4, 6] y) {
      a = Reshape(x, s1)
      y = Reshape(a, s2)
    }
    """, {"s1": np.array([0, 24], np.int64), "s2": np.array([0, 4, 6], np.int64)})
    res = simplify(proto)
    assert not res.modified
    assert count_ops(res.model, "Reshape") == 2
    check(proto, res.model)


def test_reshape_and_flatten_to_own_shape_are_dropped():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x, float[2, 3] z) => (float[N, 8] y, float[2, 3] w) {
      a = Reshape(x, copy)
      b = Relu(a)
      y = Flatten<axis = 1>(b)
      c = Reshape(z, s23)
      w = Neg(c)
    }
    """, {"copy": np.array([0, 8], np.int64), "s23": np.array([-1, 3], np.int64)})
    res = simplify(proto)
    assert res.modified and res.stats["nodes_removed"] == 3
    out = res.model.to_onnx()
    assert count_ops(out, "Reshape") == 0 and count_ops(out, "Flatten") == 0
    assert sorted(n.op_type for n in out.graph.node) == ["Neg", "Relu"]
    assert [o.name for o in out.graph.output] == ["y", "w"]
    check(proto, out)


def test_inverse_transposes_vanish_and_output_name_is_kept():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 4, 5] x) => (float[N, 3, 4, 5] y) {
      r = Relu(x)
      t = Transpose<perm = [0, 2, 3, 1]>(r)
      y = Transpose<perm = [0, 3, 1, 2]>(t)
    }
    """)
    res = simplify(proto)
    out = res.model.to_onnx()
    assert res.modified and count_ops(out, "Transpose") == 0 and count_ops(out) == 1
    assert out.graph.node[0].output[0] == "y"
    check(proto, out)


def test_transposes_compose_into_one():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 4] x) => (float[N, 4, 3] y) {
      t = Transpose<perm = [1, 0, 2]>(x)
      u = Transpose<perm = [0, 2, 1]>(t)
      y = Transpose(u)
    }
    """)
    res = simplify(proto)
    out = res.model.to_onnx()
    assert count_ops(out, "Transpose") == 1
    (t,) = res.model.graph.nodes
    assert t.attrs["perm"] == [0, 2, 1] and t.inputs[0].name == "x"
    check(proto, out)


def test_transpose_with_shared_intermediate_is_kept():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3] x) => (float[N, 3] y, float[3, N] t) {
      t = Transpose<perm = [1, 0]>(x)
      y = Transpose<perm = [1, 0]>(t)
    }
    """)
    res = simplify(proto)
    assert not res.modified
    assert count_ops(res.model, "Transpose") == 2


def test_squeeze_unsqueeze_cancel_opset13_axes_input():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 1, 4] x) => (float[N, 1, 4] y, float[N, 1, 4] z) {
      s = Squeeze(x, one)
      a = Relu(s)
      u = Unsqueeze(a, one)
      p = Unsqueeze(u, neg)
      z = Squeeze(p, zero)
      y = Identity(u)
    }
    """, {"one": np.array([1], np.int64), "neg": np.array([-4], np.int64), "zero": np.array([0], np.int64)})
    res = simplify(proto)
    out = res.model.to_onnx()
    # Squeeze->Relu->Unsqueeze is not a chain; Unsqueeze(-4 of rank 4 = 0)->Squeeze(0) cancels
    assert count_ops(out, "Squeeze") == 1 and count_ops(out, "Unsqueeze") == 1
    check(proto, out)


def test_squeeze_unsqueeze_cancel_opset11_axes_attribute():
    proto = parse_model("""
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[N, 1, 4, 1] x) => (float[N, 1, 4, 1] y) {
      r = Relu(x)
      s = Squeeze<axes = [1, -1]>(r)
      y = Unsqueeze<axes = [3, 1]>(s)
    }
    """)
    res = simplify(proto)
    out = res.model.to_onnx()
    assert res.modified and count_ops(out) == 1 and count_ops(out, "Relu") == 1
    check(proto, out)


def test_squeeze_unsqueeze_on_different_axes_stay():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 1, 4] x) => (float[N, 4, 1] y) {
      s = Squeeze(x, one)
      y = Unsqueeze(s, two)
    }
    """, {"one": np.array([1], np.int64), "two": np.array([2], np.int64)})
    res = simplify(proto)
    assert not res.modified and count_ops(res.model) == 2


def test_nothing_to_simplify_is_a_no_op():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, 3] x) => (float[2, N, 3] y) {
      a = Reshape(x, s)
      y = Transpose<perm = [2, 0, 1]>(a)
    }
    """, {"s": np.array([0, 3, 2], np.int64)})
    res = simplify(proto)
    assert not res.modified and res.stats["nodes_removed"] == 0
    assert count_ops(res.model) == 2
    assert isinstance(res.model.graph.nodes[0].inputs[1], gs.Constant)
    check(proto, res.model)
