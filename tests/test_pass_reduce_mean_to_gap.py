import numpy as np

from conftest import assert_same_outputs, count_ops, parse_model
from onnxopt.ir import Model
from onnxopt.passes import create_pass


def _run(text, inits=None):
    proto = parse_model(text, inits)
    res = create_pass("reduce_mean_to_gap")(Model.from_onnx(proto))
    return proto, res


def test_dynamo_style_global_mean_becomes_gap_opset17():
    proto, res = _run("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8, 5, 7] x) => (float[N, 8, 1, 1] y) { y = ReduceMean <axes = [-1, -2], keepdims = 1> (x) }
    """)
    assert res.modified and count_ops(res.model, "GlobalAveragePool") == 1 and count_ops(res.model, "ReduceMean") == 0
    assert_same_outputs(proto, res.model)


def test_axes_as_input_opset18():
    proto, res = _run("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 3, 3] x) => (float[N, 4, 1, 1] y) { y = ReduceMean <keepdims = 1> (x, axes) }
    """, {"axes": np.array([2, 3], np.int64)})
    assert res.modified and count_ops(res.model, "GlobalAveragePool") == 1
    assert len(res.model.to_onnx().graph.initializer) == 0  # the axes constant went with the input
    assert_same_outputs(proto, res.model)


def test_other_reductions_are_left_alone():
    for body in ("y = ReduceMean <axes = [1], keepdims = 1> (x)",
                 "y = ReduceMean <axes = [2], keepdims = 1> (x)"):
        proto, res = _run(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4, 3, 3] x) => (float[N, ?, ?, ?] y) {{ {body} }}
        """)
        assert not res.modified and count_ops(res.model, "ReduceMean") == 1
    proto, res = _run("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 3, 3] x) => (float[N, 4] y) { y = ReduceMean <axes = [2, 3], keepdims = 0> (x) }
    """)
    assert not res.modified
