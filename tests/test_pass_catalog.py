"""``create_pass("cleanup")`` builds the catalogued pipeline, and the graph-cleanup passes work together in it."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds
from onnxopt.errors import RecipeError
from onnxopt.ir import Model
from onnxopt.passes import PassManager, create_pass
from onnxopt.passes.catalog import CLEANUP_PASSES

GRAPH_CLEANUP = ("fold_constants", "fold_shape_subgraphs", "simplify_reshapes",
                 "merge_duplicate_initializers", "remove_dead_code")

#: what a tracing exporter leaves around a flatten + linear head, with a dynamic batch
EXPORTED_HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 3, 4] x) => (float[N, 5] y) {
  t = Transpose<perm = [0, 2, 3, 1]>(x)
  u = Transpose<perm = [0, 3, 1, 2]>(t)
  r = Relu(u)
  s = Shape(r)
  zero = Constant<value_int = 0>()
  n = Gather<axis = 0>(s, zero)
  ax = Constant<value_ints = [0]>()
  nu = Unsqueeze(n, ax)
  m1 = Constant<value_ints = [-1]>()
  sh = Concat<axis = 0>(nu, m1)
  f = Reshape(r, sh)
  wt = Transpose<perm = [1, 0]>(w)
  mm = MatMul(f, wt)
  scaled = Mul(mm, s1)
  y = Add(scaled, s2)
  dead = Sigmoid(mm)
}
"""


def exported_head():
    rng = np.random.default_rng(0)
    ones = np.ones(5, np.float32)
    return parse_model(EXPORTED_HEAD, {"w": rng.standard_normal((5, 24)).astype(np.float32),
                                       "s1": ones, "s2": ones.copy(), "unused": ones.copy()})


def test_create_pass_cleanup_builds_the_catalogued_pipeline():
    pm = create_pass("cleanup")
    assert isinstance(pm, PassManager) and pm.name == "cleanup" and pm.fixed_point
    assert tuple(p.name for p in pm.passes) == CLEANUP_PASSES
    assert set(GRAPH_CLEANUP) <= set(CLEANUP_PASSES)
    once = create_pass("cleanup", {"fixed_point": False, "max_iterations": 3})
    assert not once.fixed_point and once.max_iterations == 3
    with pytest.raises(RecipeError):
        create_pass("cleanup", {"fixed_pont": False})


def test_graph_cleanup_passes_as_a_pipeline_on_an_exported_head():
    proto = exported_head()
    pm = PassManager([create_pass(n) for n in GRAPH_CLEANUP], name="graph_cleanup")
    res = pm(Model.from_onnx(proto))
    assert res.modified
    out = res.model.to_onnx()
    assert sorted(n.op_type for n in out.graph.node) == ["Add", "MatMul", "Mul", "Relu", "Reshape"]
    reshape = next(n for n in res.model.graph.nodes if n.op == "Reshape")
    assert reshape.inputs[0].name == "r" and reshape.inputs[1].values.tolist() == [0, -1]
    mul, add = (next(n for n in res.model.graph.nodes if n.op == op) for op in ("Mul", "Add"))
    assert mul.inputs[1] is add.inputs[1]  # s1 and s2 merged
    assert isinstance(next(n for n in res.model.graph.nodes if n.op == "MatMul").inputs[1], gs.Constant)
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    assert res.stats["fold_shape_subgraphs.subgraphs_folded"] == 1
    assert res.stats["merge_duplicate_initializers.merged"] == 1
    for batch in (1, 4):
        assert_same_outputs(proto, out, random_feeds(proto, batch=batch))


def test_full_cleanup_reaches_a_fixed_point_where_every_pass_is_a_no_op():
    proto = exported_head()
    cleaned = create_pass("cleanup")(Model.from_onnx(proto)).model
    assert count_ops(cleaned, "Shape") == 0 and count_ops(cleaned, "Transpose") == 0
    assert count_ops(cleaned, "Sigmoid") == 0 and count_ops(cleaned, "Constant") == 0
    assert_same_outputs(proto, cleaned, random_feeds(proto, batch=3))
    for name in GRAPH_CLEANUP:
        res = create_pass(name)(cleaned)
        assert not res.modified, name
    assert not create_pass("cleanup")(cleaned).modified
