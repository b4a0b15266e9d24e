import numpy as np
import onnx_graphsurgeon as gs

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.ir import Model
from onnxopt.passes import create_pass

GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  a = Mul(x, s1)
  b = Add(a, s2)
  c = Mul(b, s3)
  d = Add(c, h1)
  y = Sub(d, h2)
}
"""


def merge(proto_or_model):
    model = proto_or_model if isinstance(proto_or_model, Model) else Model.from_onnx(proto_or_model)
    return create_pass("merge_duplicate_initializers")(model)


def test_identical_initializers_merge_and_consumers_are_rewired():
    scale = np.array([0.5, 1.5, -2.0, 3.0], np.float32)
    proto = parse_model(GRAPH, {
        "s1": scale, "s2": scale.copy(), "s3": scale.copy(),
        "h1": np.float32([1, 2, 3, 4]),
        "h2": np.float32([[1, 2, 3, 4]]),  # same bytes, other shape: kept
    })
    res = merge(proto)
    assert res.modified
    assert res.stats == {"merged": 2, "bytes_saved": 32}
    out = res.model.to_onnx()
    assert sorted(i.name for i in out.graph.initializer) == ["h1", "h2", "s1"]
    assert [n.input[1] for n in out.graph.node][:3] == ["s1", "s1", "s1"]
    assert count_ops(out) == 5
    for batch in (1, 4):
        assert_same_outputs(proto, out, random_feeds(proto, batch=batch))


def test_same_bytes_other_dtype_and_negative_zero_stay_apart():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x, int32[N, 2] i) => (float[N, 2] y, int32[N, 2] j) {
      a = Add(x, pz)
      y = Add(a, nz)
      j = Add(i, iz)
    }
    """, {"pz": np.float32([0.0, 1.0]), "nz": np.float32([-0.0, 1.0]),
          "iz": np.float32([0.0, 1.0]).view(np.int32)})
    res = merge(proto)
    assert not res.modified and res.stats["merged"] == 0
    assert len(res.model.to_onnx().graph.initializer) == 3


def test_initializer_that_is_a_graph_input_is_not_merged():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x) => (float[N, 2] y) {
      a = Add(x, k1)
      y = Mul(a, k2)
    }
    """, {"k1": np.float32([2, 3]), "k2": np.float32([2, 3])})
    model = Model.from_onnx(proto)
    k2 = model.graph.nodes[1].inputs[1]
    assert isinstance(k2, gs.Constant)
    model.graph.inputs.append(k2)  # an overridable initializer (IR < 4 style)
    res = merge(model)
    assert not res.modified
    out = res.model.to_onnx()
    assert [i.name for i in out.graph.input] == ["x", "k2"]
    assert {i.name for i in out.graph.initializer} == {"k1", "k2"}


def test_duplicate_read_inside_an_if_branch_is_rewired():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x, bool c) => (float[N, 2] y) {
      a = Add(x, k1)
      y = If(c) <then_branch = t () => (float[N, 2] ty) { ty = Mul(a, k2) },
                 else_branch = e () => (float[N, 2] ey) { ey = Sub(a, k2) }>
    }
    """, {"k1": np.float32([2, 3]), "k2": np.float32([2, 3])})
    res = merge(proto)
    assert res.modified and res.stats["merged"] == 1
    out = res.model.to_onnx()
    assert [i.name for i in out.graph.initializer] == ["k1"]
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(proto, out, {"x": x, "c": np.array(cond)})


def test_distinct_initializers_are_a_no_op():
    proto = parse_model(GRAPH, {n: np.float32([i, 1, 2, 3]) for i, n in enumerate(["s1", "s2", "s3", "h1", "h2"])})
    res = merge(proto)
    assert not res.modified and res.stats == {"merged": 0, "bytes_saved": 0}
    assert len(res.model.to_onnx().graph.initializer) == 5
