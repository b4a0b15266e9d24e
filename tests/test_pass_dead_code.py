import numpy as np

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass


def clean(proto):
    return create_pass("remove_dead_code")(Model.from_onnx(proto))


def test_dead_nodes_their_initializers_and_constant_nodes_go_inputs_stay():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x, float[N, 4] unused) => (float[N, 4] y) {
      y = Relu(x)
      m = Mul(x, w)
      k = Constant<value_float = 1.0>()
      dead = Add(m, k)
      lone = Constant<value_floats = [1.0, 2.0]>()
    }
    """, {"w": np.ones(4, np.float32), "never_used": np.zeros(3, np.float32)})
    res = clean(proto)
    assert res.modified
    assert res.stats == {"nodes_removed": 4, "initializers_removed": 1}
    out = res.model.to_onnx()
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert len(out.graph.initializer) == 0
    assert [i.name for i in out.graph.input] == ["x", "unused"]
    assert [o.name for o in out.graph.output] == ["y"]
    for batch in (1, 3):
        assert_same_outputs(proto, out, random_feeds(proto, batch=batch))


def test_outer_tensor_read_only_inside_if_branch_is_live():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x, bool c) => (float[N, 2] y) {
      a = Neg(x)
      b = Mul(x, w)
      y = If(c) <then_branch = t () => (float[N, 2] ty) { ty = Add(a, b) },
                 else_branch = e () => (float[N, 2] ey) { junk = Abs(a)  ey = Identity(x) }>
      unused = Sigmoid(x)
    }
    """, {"w": np.float32([2, 3])})
    res = clean(proto)
    assert res.stats["nodes_removed"] == 2  # Sigmoid, and Abs inside the else branch
    out = res.model.to_onnx()
    assert sorted(n.op_type for n in out.graph.node) == ["If", "Mul", "Neg"]
    assert [i.name for i in out.graph.initializer] == ["w"]
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(proto, out, {"x": x, "c": np.array(cond)})


def test_multi_output_node_keeps_its_unused_outputs():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 5] x) => (int64[N, 2] i) {
      v, i = TopK<axis = 1>(x, k)
    }
    """, {"k": np.array([2], np.int64)})
    res = clean(proto)
    assert not res.modified
    out = res.model.to_onnx()
    assert list(out.graph.node[0].output) == ["v", "i"]
    assert_same_outputs(proto, out)


def test_live_graph_is_a_no_op():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      k = Constant<value_float = 2.0>()
      y = Mul(x, k)
    }
    """)
    res = clean(proto)
    assert not res.modified and res.stats == {"nodes_removed": 0, "initializers_removed": 0}
    assert count_ops(res.model) == 2
