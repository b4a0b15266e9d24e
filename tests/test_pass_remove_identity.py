import numpy as np

from conftest import assert_same_outputs, count_ops, parse_model
from onnxopt.ir import Model
from onnxopt.passes import create_pass

GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  a = Identity(x)
  b = Relu(a)
  c, mask = Dropout(b)
  d = Identity(c)
  y = Identity(d)
}
"""


def test_removes_identity_and_dropout_keeps_output_name():
    proto = parse_model(GRAPH)
    model = Model.from_onnx(proto)
    res = create_pass("remove_identity")(model)
    out = res.model.to_onnx()
    assert res.modified
    assert count_ops(out, "Identity") == 0 and count_ops(out, "Dropout") == 0
    assert [o.name for o in out.graph.output] == ["y"]
    assert count_ops(out) == 1
    assert_same_outputs(proto, out)


def test_keeps_dropout_whose_mask_is_used():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y, bool[N, 4] m) {
      y, m = Dropout(x)
    }
    """)
    res = create_pass("remove_identity")(Model.from_onnx(proto))
    assert not res.modified
    assert count_ops(res.model, "Dropout") == 1


def test_identity_between_input_and_output_is_kept():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Identity(x) }
    """)
    res = create_pass("remove_identity")(Model.from_onnx(proto))
    assert not res.modified
    x = np.array([1.0, 2.0], np.float32)
    assert_same_outputs(proto, res.model, {"x": x})
