"""The fusion check: what onnxruntime's CPU provider really runs after quantization."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import ROOT, parse_model, run_ort
from onnxopt.data import Dataset
from onnxopt.data import input_specs, random_dataset
from onnxopt.ir import Model, load_model
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.fusion import analyse_optimized, fusion_report
from onnxopt.quantize.quality import sqnr_db
from test_quantize_qdq import calib_data, residual_cnn

EXPORTED = ROOT / "tests" / "data" / "exported"


@pytest.mark.parametrize("activations", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("weights", ["per-channel", "per-tensor"])
def test_every_conv_and_gemm_of_the_cnn_runs_as_an_integer_kernel(activations, weights):
    model = Model.from_onnx(residual_cnn())
    res = quantize(model, calib_data(model), QuantizeConfig(activations=activations, weights=weights))
    fusion = res.report.fusion
    assert fusion.integer_compute == {"QGemm": 1, "QLinearConv": 2}
    assert fusion.float_compute == [] and fusion.unfused == 0 and fusion.expected_integer == 3
    assert not any("kept in float" in n for n in res.report.notes)  # nothing had to fall back
    if activations == "asymmetric":
        # Relus absorbed, Add/GAP integer too: one Q on the input is all that is left
        assert fusion.other_integer == {"QLinearAdd": 1, "QLinearGlobalAveragePool": 1}
        assert (fusion.quantize_linear, fusion.dequantize_linear, fusion.islands) == (1, 0, [])
    else:
        # zero point 0 cannot absorb Relu: it runs in float between DQ and Q, and the report says so
        assert {i["op"] for i in fusion.islands} == {"Relu"}
        assert any("symmetric activations on the CPU target" in n for n in res.report.notes)


def test_report_reads_a_hand_written_optimized_graph():
    f = TensorProto.FLOAT
    s = helper.make_tensor("s", f, [], [0.1])
    z = helper.make_tensor("z", TensorProto.UINT8, [], [0])
    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["r"], name="island"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("QLinearConv", ["rq", "s", "z", "w", "s", "z", "s", "z"], ["cq"], name="qc", domain="com.microsoft"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
        helper.make_node("Conv", ["cd", "wf"], ["y0"], name="fused stays_float"),
        helper.make_node("QuantizeLinear", ["y0", "s", "z"], ["yq"]),
        helper.make_node("MaxPool", ["yq"], ["pq"], name="nchw_pool", kernel_shape=[2]),
        helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1])],
                              [helper.make_tensor_value_info("y", f, [1])], [s, z])
    report = analyse_optimized(helper.make_model(graph), planned=["stays_float", "qc"])
    assert report.integer_compute == {"QLinearConv": 1}
    assert report.islands == [{"name": "island", "op": "Relu"}, {"name": "fused stays_float", "op": "Conv"}]
    assert report.unfused_nodes == ["stays_float"]  # 'fused X' is onnxruntime's name for a fused X
    assert (report.quantize_linear, report.dequantize_linear) == (2, 3)
    assert [p["name"] for p in report.slow_paths] == ["nchw_pool"]


def test_a_one_channel_stem_runs_float_and_the_rest_integer():
    """The CPU table keeps a Conv with 9 products per output float; onnxruntime then quantizes after it."""
    rng = np.random.default_rng(0)
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 1, 12, 12] x) => (float[N, 8, 12, 12] y) {
      c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
      r = Relu (c)
      y = Conv (r, w2)
    }
    """, {"w1": (rng.standard_normal((16, 1, 3, 3)) * 0.5).astype(np.float32), "b1": np.zeros(16, np.float32),
          "w2": (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)})
    model = Model.from_onnx(proto)
    x = rng.standard_normal((32, 1, 12, 12)).astype(np.float32)
    res = quantize(model, Dataset(lambda: iter([{"x": x}]), input_specs(model), "d"), QuantizeConfig())
    fusion = res.report.fusion
    assert fusion.integer_compute == {"QLinearConv": 1} and [f["op"] for f in fusion.float_compute] == ["Conv"]
    assert fusion.unfused == 0 and fusion.expected_integer == 1  # float by plan, not a failed fusion
    assert any("slower than float" in f["reason"] for f in res.report.float_nodes if f["op"] == "Conv")
    ref, got = run_ort(proto, {"x": x})[0], run_ort(res.model.to_onnx(), {"x": x})[0]
    assert sqnr_db(ref, got) > 25.0


def test_float_model_has_no_integer_kernels():
    report = fusion_report(residual_cnn())
    assert report.integer_count == 0 and len(report.float_compute) == 3


def exported_models():
    if not EXPORTED.is_dir():
        return []
    return sorted(p for p in EXPORTED.glob("*.onnx") if "noopt" not in p.name)


@pytest.mark.parametrize("path", exported_models(), ids=lambda p: p.name)
def test_exported_cnns_fuse_every_quantized_conv(path):
    model = load_model(path)
    data = random_dataset(input_specs(model), 8, batch=1, seed=0)
    res = quantize(model, data, QuantizeConfig(batch_size=8))
    fusion = res.report.fusion
    assert fusion.expected_integer > 0
    assert fusion.unfused == 0, fusion.unfused_nodes
    assert not any("kept in float" in n for n in res.report.notes)
    left_float = {f["op"] for f in fusion.float_compute}
    assert left_float <= {"ConvTranspose"}  # no integer ConvTranspose kernel on the CPU provider
    json.dumps(res.report.to_json())  # the report is plain JSON


def test_symmetric_fan_out_falls_back_to_float_and_says_why():
    path = EXPORTED / "mobilenetv2.torchscript.onnx"
    if not path.exists():
        pytest.skip("exported test graphs not present")
    model = load_model(path)
    res = quantize(model, random_dataset(input_specs(model), 8, batch=1), QuantizeConfig(activations="symmetric"))
    assert res.report.fusion.unfused == 0  # whatever stays, runs as intended
    kept = [f for f in res.report.float_nodes if "does not fuse" in f["reason"]]
    assert kept and all(f["op"] == "Conv" for f in kept)
    assert any("single consumer" in n for n in res.report.notes)
