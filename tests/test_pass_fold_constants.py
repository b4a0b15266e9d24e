import numpy as np
import onnx_graphsurgeon as gs

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass


def fold(proto, **options):
    return create_pass("fold_constants", options)(Model.from_onnx(proto))


def test_constant_nodes_fold_into_float32_initializers():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      a = Constant<value_float = 2.0>()
      b = Constant<value_floats = [1.0, 2.0, 3.0, 4.0]>()
      s = Add(a, b)
      y = Mul(x, s)
    }
    """)
    res = fold(proto)
    assert res.modified
    assert res.stats["nodes_folded"] == 1
    out = res.model.to_onnx()
    assert count_ops(out, "Constant") == 0 and count_ops(out, "Add") == 0
    assert count_ops(out) == 1
    mul = res.model.graph.nodes[0]
    assert isinstance(mul.inputs[1], gs.Constant)
    assert mul.inputs[1].values.dtype == np.float32
    np.testing.assert_array_equal(mul.inputs[1].values, [3, 4, 5, 6])
    for batch in (1, 5):
        assert_same_outputs(proto, out, random_feeds(proto, batch=batch))


def test_used_constant_node_becomes_initializer():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3] x) => (float[N, 3] y) {
      k = Constant<value_ints = [1, 1, 2]>()
      kf = Cast<to = 1>(k)
      y = Div(x, kf)
    }
    """)
    res = fold(proto)
    assert res.modified
    out = res.model.to_onnx()
    assert count_ops(out) == 1 and count_ops(out, "Div") == 1
    assert [i.name for i in out.graph.initializer] == ["kf"]
    assert_same_outputs(proto, out)


def test_transposed_weight_folds_but_expand_blow_up_does_not():
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)  # 8 KiB
    row = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x, float[256, 32] z) => (float[N, 32] y, float[256, 32] e) {
      wt = Transpose<perm = [1, 0]>(w)
      wtt = Transpose<perm = [1, 0]>(wt)
      y = MatMul(x, wtt)
      shape = Constant<value_ints = [256, 32]>()
      big = Expand(row, shape)
      e = Add(z, big)
    }
    """, {"w": w, "row": row})
    res = fold(proto, size_limit_bytes=1024)
    out = res.model.to_onnx()
    assert res.stats["nodes_folded"] == 2
    assert count_ops(out, "Transpose") == 0
    assert count_ops(out, "Expand") == 1  # 32 KiB from 128 bytes: stays a node
    assert_same_outputs(proto, out)
    # with a generous limit the expand folds too
    res2 = fold(proto, size_limit_bytes=1 << 20)
    assert count_ops(res2.model, "Expand") == 0
    assert_same_outputs(proto, res2.model)


def test_dequantize_linear_of_weight_is_never_folded():
    wq = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 3] y) {
      w = DequantizeLinear(wq, scale, zp)
      y = MatMul(x, w)
    }
    """, {"wq": wq, "scale": np.array(0.05, np.float32), "zp": np.array(0, np.int8)})
    res = fold(proto)
    assert not res.modified
    assert count_ops(res.model, "DequantizeLinear") == 1
    assert_same_outputs(proto, res.model)


def test_static_dim_of_dynamic_batch_shape_folds():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      s = Shape(x)
      i = Constant<value_int = 1>()
      d = Gather<axis = 0>(s, i)
      zero = Constant<value_ints = [0]>()
      du = Unsqueeze(d, zero)
      m1 = Constant<value_ints = [-1]>()
      sh = Concat<axis = 0>(m1, du)
      y = Reshape(x, sh)
    }
    """)
    res = fold(proto)
    assert res.modified
    out = res.model.to_onnx()
    assert count_ops(out) == 1 and count_ops(out, "Reshape") == 1
    (shape_init,) = [i for i in out.graph.initializer]
    np.testing.assert_array_equal(np.frombuffer(shape_init.raw_data, np.int64), [-1, 4])
    for batch in (2, 7):
        assert_same_outputs(proto, out, random_feeds(proto, batch=batch))


def test_random_ops_stay():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x) => (float[N, 2] y) {
      r = RandomUniform<shape = [2], low = 0.0, high = 0.0>()
      y = Add(x, r)
    }
    """)
    res = fold(proto)
    assert not res.modified
    assert count_ops(res.model, "RandomUniform") == 1


def test_nothing_to_fold_is_a_no_op():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      r = Relu(x)
      y = Mul(r, k)
    }
    """, {"k": np.full(4, 0.5, np.float32)})
    res = fold(proto)
    assert not res.modified
    assert res.stats["nodes_folded"] == 0
    assert count_ops(res.model) == 2
    assert_same_outputs(proto, res.model)


def test_castlike_of_a_constant_folds_though_its_dtype_source_is_an_input():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      one = Constant<value = double[1] {1.0}>()
      c = CastLike(one, x)
      shape = Constant<value_ints = [4]>()
      b = Expand(c, shape)
      y = Add(x, b)
    }
    """)
    res = fold(proto)
    assert res.stats["nodes_folded"] == 2
    out = res.model.to_onnx()
    assert [n.op_type for n in out.graph.node] == ["Add"]
    add = res.model.graph.nodes[0]
    assert add.inputs[1].values.dtype == np.float32 and add.inputs[1].values.tolist() == [1, 1, 1, 1]
    assert_same_outputs(proto, out, random_feeds(proto, batch=3))


def test_custom_domain_op_stays_and_does_not_stop_other_folding():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
    g (float[N, 2] x) => (float[N, 2] y, float[2] z) {
      a = Constant<value_floats = [1.0, 2.0]>()
      b = Neg(a)
      y = Add(x, b)
      z = my.ops.Secret(a)
    }
    """)
    res = fold(proto)
    assert res.stats["nodes_folded"] == 1
    assert count_ops(res.model, "Neg") == 0 and count_ops(res.model, "Secret") == 1
    add = next(n for n in res.model.graph.nodes if n.op == "Add")
    assert add.inputs[1].values.tolist() == [-1.0, -2.0]
