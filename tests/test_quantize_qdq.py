"""QDQ insertion: scale math, graph shape (one Q per tensor, one DQ per consumer), validity, accuracy."""

import json

import numpy as np
import onnx
import pytest

from conftest import parse_model, run_ort
from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError, UnsupportedError
from onnxopt.ir import Model, save_model
from onnxopt.passes import create_pass
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.config import Activations
from onnxopt.quantize.qdq import activation_qparams, quantize_bias, quantize_weight
from onnxopt.quantize.quality import sqnr_db

CNN = """
<ir_version: 8, opset_import: ["" : OPSET]>
g (float[N, 3, 12, 12] x) => (float[N, 10] y) {
  c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
  n1 = BatchNormalization (c1, s1, o1, m1, v1)
  r1 = Relu (n1)
  c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
  a = Add (c2, r1)
  r2 = Relu (a)
  gp = GlobalAveragePool (r2)
  f = Flatten (gp)
  y = Gemm <transB = 1> (f, wf, bf)
}
"""


def residual_cnn(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-Add-Relu-GAP-Flatten-Gemm, the CNN every quantization test uses."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {"w1": r(8, 3, 3, 3, scale=0.3), "b1": r(8, scale=0.1), "s1": np.abs(r(8)) + 0.5, "o1": r(8, scale=0.1),
             "m1": r(8, scale=0.1), "v1": np.abs(r(8)) + 0.5, "w2": r(8, 8, 3, 3, scale=0.2), "b2": r(8, scale=0.1),
             "wf": r(10, 8, scale=0.5), "bf": r(10, scale=0.1)}
    return parse_model(CNN.replace("OPSET", str(opset)), inits)


def calib_data(model: Model, n: int = 64, seed: int = 1) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 3, 12, 12)).astype(np.float32)
    return Dataset(lambda: iter([{"x": x}]), input_specs(model), "calibration data")


def ops(proto, op):
    return [n for n in proto.graph.node if n.op_type == op]


# -- parameter math -------------------------------------------------------------------------
def test_asymmetric_params_map_the_range_onto_uint8():
    p = activation_qparams(-1.0, 3.0, Activations.ASYMMETRIC)
    assert p.zero_point.dtype == np.uint8 and p.scale.shape == () and p.zero_point.shape == ()
    assert float(p.scale) == pytest.approx(4.0 / 255)
    assert (0 - int(p.zero_point)) * float(p.scale) == pytest.approx(-1.0, abs=float(p.scale))
    post_relu = activation_qparams(0.0, 6.0, Activations.ASYMMETRIC)
    assert int(post_relu.zero_point) == 0  # zero point at the type's minimum: Relu becomes redundant


def test_symmetric_params_have_zero_point_zero():
    p = activation_qparams(-1.0, 3.0, Activations.SYMMETRIC)
    assert p.zero_point.dtype == np.int8 and int(p.zero_point) == 0
    assert float(p.scale) == pytest.approx(3.0 / 127)


def test_constant_zero_tensor_gets_a_usable_scale():
    for scheme in Activations:
        assert float(activation_qparams(0.0, 0.0, scheme).scale) == 1.0


def test_per_channel_weights_use_their_own_scale_and_zero_point_zero():
    w = np.stack([np.full((2, 3, 3), 0.5), np.full((2, 3, 3), -4.0)]).astype(np.float32)
    w[0, 0, 0, 0] = -1.0
    q, p = quantize_weight(w, axis=0, reduce_range=False)
    assert q.dtype == np.int8 and p.axis == 0 and np.all(p.zero_point == 0)
    np.testing.assert_allclose(p.scale, [1.0 / 127, 4.0 / 127], rtol=1e-6)
    assert q[0, 0, 0, 0] == -127 and q[1].min() == -127
    q7, _ = quantize_weight(w, axis=0, reduce_range=True)
    assert np.abs(q7).max() == 64  # 7-bit range, as onnxruntime's reduce_range
    qt, pt = quantize_weight(w, axis=None, reduce_range=False)
    assert pt.scale.shape == () and float(pt.scale) == pytest.approx(4.0 / 127)
    np.testing.assert_allclose(qt * pt.scale, w, atol=float(pt.scale) / 2 + 1e-7)


def test_bias_is_int32_at_input_scale_times_weight_scale():
    _, wp = quantize_weight(np.ones((2, 1, 1, 1), np.float32) * [[[[1.0]]], [[[2.0]]]], 0, False)
    q, p, clipped = quantize_bias(np.array([0.5, -0.25], np.float32), np.float32(0.01), wp)
    assert q.dtype == np.int32 and clipped == 0 and p.axis == 0
    np.testing.assert_allclose(p.scale, 0.01 * wp.scale, rtol=1e-6)
    np.testing.assert_allclose(q * p.scale, [0.5, -0.25], atol=float(p.scale.max()))


# -- the inserted graph ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_result():
    model = Model.from_onnx(residual_cnn())
    return model, quantize(model, calib_data(model), QuantizeConfig())


def test_graph_passes_full_check_and_runs(cnn_result):
    _, res = cnn_result
    proto = res.model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(5).standard_normal((4, 3, 12, 12)).astype(np.float32)
    (y,) = run_ort(proto, {"x": x})
    assert y.shape == (4, 10)
    assert [o.name for o in proto.graph.output] == ["y"]


def test_outputs_stay_close_to_float(cnn_result):
    model, res = cnn_result
    x = np.random.default_rng(7).standard_normal((32, 3, 12, 12)).astype(np.float32)  # same distribution
    (ref,), (got,) = run_ort(model, {"x": x}), run_ort(res.model, {"x": x}, optimize=True)
    assert sqnr_db(ref, got) > 20.0
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9


def test_batchnorm_is_folded_before_quantizing(cnn_result):
    _, res = cnn_result
    assert not ops(res.model.to_onnx(), "BatchNormalization")


def test_one_quantize_per_tensor_one_dequantize_per_consumer(cnn_result):
    _, res = cnn_result
    proto = res.model.to_onnx()
    q_inputs = [n.input[0] for n in ops(proto, "QuantizeLinear")]
    assert len(q_inputs) == len(set(q_inputs))
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for dq in ops(proto, "DequantizeLinear"):
        assert len(consumers.get(dq.output[0], [])) <= 1
    r1 = next(q for q in ops(proto, "QuantizeLinear") if q.input[0] == "r1")  # Relu output read by Conv and Add
    assert len(consumers[r1.output[0]]) == 2
    # no Q/DQ pair left dangling
    for q in ops(proto, "QuantizeLinear"):
        assert all(c.op_type == "DequantizeLinear" for c in consumers[q.output[0]])


def test_weights_are_int8_initializers_and_biases_int32(cnn_result):
    _, res = cnn_result
    proto = res.model.to_onnx()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for conv in ops(proto, "Conv") + ops(proto, "Gemm"):
        producers = {o: n for n in proto.graph.node for o in n.output}
        w_dq = producers[conv.input[1]]
        b_dq = producers[conv.input[2]]
        assert w_dq.op_type == b_dq.op_type == "DequantizeLinear"
        assert inits[w_dq.input[0]].dtype == np.int8 and inits[b_dq.input[0]].dtype == np.int32
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis", 1)
        assert axis == 0  # Conv: output channels; Gemm transB=1: B is [N, K]
        assert not np.any(inits[w_dq.input[2]])  # zero points 0
        assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name == conv.input[1] for t in proto.graph.initializer)


def test_relu_after_conv_is_absorbed_into_the_output_quantize(cnn_result):
    _, res = cnn_result
    proto = res.model.to_onnx()
    conv1 = next(n for n in ops(proto, "Conv") if n.output[0] == "c1")
    consumers = [n for n in proto.graph.node if "c1" in n.input]
    assert [n.op_type for n in consumers] == ["Relu"]  # no Q/DQ between Conv and Relu
    assert ops(proto, "QuantizeLinear") and any(q.input[0] == "r1" for q in ops(proto, "QuantizeLinear"))
    assert conv1.name in {n["name"] for n in res.report.quantized_nodes if n["absorbed"]}


def test_gemm_per_channel_axis_follows_transb():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 6] x) => (float[N, 5] y) {
      h = Gemm (x, w1)
      r = Relu (h)
      y = Gemm <transB = 1> (r, w2, b2)
    }
    """
    rng = np.random.default_rng(0)
    proto = parse_model(text, {"w1": rng.standard_normal((6, 7)).astype(np.float32),
                               "w2": rng.standard_normal((5, 7)).astype(np.float32),
                               "b2": rng.standard_normal(5).astype(np.float32)})
    model = Model.from_onnx(proto)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    res = quantize(model, Dataset(lambda: iter([{"x": x}]), input_specs(model), "d"), QuantizeConfig())
    out = res.model.to_onnx()
    axes = {n.input[0]: {a.name: a.i for a in n.attribute}.get("axis") for n in ops(out, "DequantizeLinear")}
    assert axes["w1_quantized"] == 1 and axes["w2_quantized"] == 0
    assert res.report.fusion.integer_compute == {"QGemm": 2}
    (ref,), (got,) = run_ort(proto, {"x": x}), run_ort(out, {"x": x}, optimize=True)
    assert sqnr_db(ref, got) > 20.0


def test_graph_output_produced_by_a_quantized_op_keeps_its_name():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y, float[N, 4, 8, 8] z) {
      y = Conv <pads = [1, 1, 1, 1]> (x, w)
      z = Conv <pads = [1, 1, 1, 1]> (y, w2)
    }
    """
    rng = np.random.default_rng(0)
    proto = parse_model(text, {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                               "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32)})
    model = Model.from_onnx(proto)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    res = quantize(model, Dataset(lambda: iter([{"x": x}]), input_specs(model), "d"), QuantizeConfig())
    out = res.model.to_onnx()
    assert [o.name for o in out.graph.output] == ["y", "z"]
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    assert producers["y"] == producers["z"] == "DequantizeLinear"
    assert res.report.fusion.unfused == 0 and res.report.fusion.integer_compute == {"QLinearConv": 2}
    for r, g in zip(run_ort(proto, {"x": x}), run_ort(out, {"x": x}, optimize=True)):
        assert sqnr_db(r, g) > 20.0


def test_opset_11_model_is_upgraded_with_a_note():
    model = Model.from_onnx(residual_cnn(opset=11))
    res = quantize(model, calib_data(model), QuantizeConfig())
    assert res.model.opset == 13
    assert any("opset 11 to opset 13" in n for n in res.report.notes)
    assert res.report.fusion.unfused == 0


def test_model_without_quantizable_op_is_refused():
    model = Model.from_onnx(parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """))
    data = Dataset(lambda: iter([{"x": np.ones((2, 4), np.float32)}]), input_specs(model), "d")
    with pytest.raises(UnsupportedError, match="nothing to quantize"):
        quantize(model, data, QuantizeConfig())


def test_nan_in_calibration_data_is_refused():
    model = Model.from_onnx(residual_cnn())
    x = np.zeros((4, 3, 12, 12), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        quantize(model, Dataset(lambda: iter([{"x": x}]), input_specs(model), "d"), QuantizeConfig())


def test_input_model_is_not_modified():
    model = Model.from_onnx(residual_cnn())
    before = model.to_onnx().SerializeToString()
    quantize(model, calib_data(model), QuantizeConfig())
    assert model.to_onnx().SerializeToString() == before


# -- the insert_qdq pass ------------------------------------------------------------------------
def test_insert_qdq_pass_reapplies_saved_ranges(cnn_result, tmp_path):
    model, res = cnn_result
    path = res.ranges.save(tmp_path / "ranges.json")
    cleaned = create_pass("cleanup")(model.copy()).model
    out = create_pass("insert_qdq", {"ranges": str(path)})(cleaned)
    assert out.modified
    assert out.model.to_onnx().SerializeToString() == res.model.to_onnx().SerializeToString()


def test_insert_qdq_pass_refuses_ranges_of_another_model(cnn_result, tmp_path):
    _, res = cnn_result
    path = res.ranges.save(tmp_path / "ranges.json")
    other = create_pass("cleanup")(Model.from_onnx(residual_cnn(seed=3))).model
    with pytest.raises(DataError, match="different model"):
        create_pass("insert_qdq", {"ranges": str(path)})(other)


def test_insert_qdq_pass_upgrades_old_opsets(tmp_path):
    model = Model.from_onnx(residual_cnn(opset=11))
    res = quantize(model, calib_data(model), QuantizeConfig())
    path = res.ranges.save(tmp_path / "r.json")
    cleaned = create_pass("cleanup")(model.copy()).model
    out = create_pass("insert_qdq", {"ranges": str(path)})(cleaned)
    assert out.model.opset == 13 and any("opset 11" in n for n in out.model.notes)
    save_model(out.model, tmp_path / "q.onnx")
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)
    assert json.loads(path.read_text())["format"] == "onnxopt-ranges"
