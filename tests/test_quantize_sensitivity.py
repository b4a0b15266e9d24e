"""Per-node sensitivity: variants built from the full plan's ranges, measured in onnxruntime, saved as JSON."""

import math

import numpy as np
import pytest

from conftest import ROOT, parse_model, run_ort
from onnxopt.data import Dataset, input_specs, open_dataset
from onnxopt.errors import DataError
from onnxopt.ir import Model, load_model
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.fusion import fusion_report
from onnxopt.quantize.qdq import insert_qdq
from onnxopt.quantize.quality import sqnr_db
from onnxopt.quantize.sensitivity import (OutputMeter, SensitivityResult, analyse_sensitivity, build_variant,
                                          covering_ranges, pin_float_nodes)

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 10] y) {
    h0 = Gemm (x, w0, b0)
    r0 = Relu (h0)
    h1 = Gemm (r0, w1, b1)
    r1 = Relu (h1)
    y = Gemm (r1, w2, b2)
}
"""


def outlier_mlp(seed: int = 0) -> Model:
    """Gemm-Relu-Gemm-Relu-Gemm whose middle Gemm has one outlier weight.

    With per-tensor weights the outlier sets the middle Gemm's scale so high
    that its other weights round to 0: that node alone ruins the model, the
    other two quantize well.
    """
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w0, b0 = r(16, 32, scale=0.25), r(32, scale=0.1)
    w0[:, 0] *= 0.01  # the outlier multiplies a small activation: no activation range grows with it
    b0[0] = 0.0
    w1 = r(32, 32, scale=0.2)
    w1[0, 0] = 25.0
    inits = {"w0": w0, "b0": b0, "w1": w1, "b1": r(32, scale=0.1), "w2": r(32, 10, scale=0.3), "b2": r(10, scale=0.1)}
    return Model.from_onnx(parse_model(MLP, inits))


def mlp_data(model: Model, n: int, seed: int, labelled: bool = False) -> Dataset:
    """Random inputs; labels (when asked) are the float model's own predictions, so FP32 top-1 is 100%."""
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    chunk = {"x": x}
    if labelled:
        chunk["labels"] = run_ort(model, {"x": x})[0].argmax(axis=1)
    return Dataset(lambda: iter([chunk]), input_specs(model), "labelled data" if labelled else "calibration data",
                   length=n, has_labels=labelled)


PER_TENSOR = dict(weights="per-tensor", reduce_range=True)


def middle_gemm(result) -> str:
    """The name of the Gemm holding the outlier weight (w1)."""
    return next(n.name for n in result.float_model.graph.nodes if n.op == "Gemm" and n.inputs[1].name == "w1")


@pytest.fixture(scope="module")
def mlp_result():
    model = outlier_mlp()
    return model, quantize(model, mlp_data(model, 64, 1), QuantizeConfig(**PER_TENSOR))


def test_the_outlier_node_is_the_most_sensitive(mlp_result):
    model, result = mlp_result
    sens = analyse_sensitivity(result, mlp_data(model, 128, 2))
    bad = middle_gemm(result)
    assert [n.name for n in sens.nodes] == [n.name for n in result.plan.compute_nodes()] and len(sens.nodes) == 3
    for n in sens.nodes:
        assert math.isfinite(n.sqnr_only_quantized) and math.isfinite(n.sqnr_only_float)
        assert n.top1_only_float is None and n.top1_only_quantized is None  # no labels
        # leaving one node float never makes the outputs much worse than quantizing everything
        assert n.sqnr_only_float >= sens.quantized_sqnr - 0.5, n
    ranked = sens.ranked()
    assert ranked[0].name == bad and sens.sqnr_gain(ranked[0]) > 15
    alone = {n.name: n.sqnr_only_quantized for n in sens.nodes}
    assert min(alone, key=alone.get) == bad
    assert sens.samples == 128 and sens.quantized_sqnr < 15


def test_numbers_match_a_model_built_and_run_independently(mlp_result):
    model, result = mlp_result
    data = mlp_data(model, 96, 3)
    sens = analyse_sensitivity(result, data, only_quantized=False)
    bad = middle_gemm(result)
    variant = build_variant(result.float_model, result.config, covering_ranges(result.ranges, result.plan),
                            {bad: "test"})
    x = data.arrays()["x"]
    ref = run_ort(model, {"x": x})[0]
    got = run_ort(variant, {"x": x}, optimize=True)[0]
    row = next(n for n in sens.nodes if n.name == bad)
    assert row.sqnr_only_float == pytest.approx(sqnr_db(ref, got), abs=0.05)
    assert row.sqnr_only_quantized is None
    full = run_ort(result.model, {"x": x}, optimize=True)[0]
    assert sens.quantized_sqnr == pytest.approx(sqnr_db(ref, full), abs=0.05)


def test_accuracy_with_labels_and_json_round_trip(mlp_result, tmp_path):
    model, result = mlp_result
    sens = analyse_sensitivity(result, mlp_data(model, 200, 4, labelled=True))
    assert sens.float_top1 == pytest.approx(100.0) and sens.samples == 200
    bad = middle_gemm(result)
    row = next(n for n in sens.nodes if n.name == bad)
    assert row.top1_only_float > sens.quantized_top1 + 20 and row.top1_only_quantized < 90
    assert sens.ranked(by_accuracy=True)[0].name == bad
    path = sens.save(tmp_path / "s.json")
    back = SensitivityResult.load(path)
    assert back.nodes == sens.nodes and back.quantized_sqnr == sens.quantized_sqnr
    assert [n.name for n in back.ranked(True)] == [n.name for n in sens.ranked(True)]
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not an onnxopt sensitivity file"):
        SensitivityResult.load(tmp_path / "bad.json")


POOL_CNN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 4, 4] y) {
    c1 = Conv <pads=[1, 1, 1, 1]> (x, w1, b1)
    r1 = Relu (c1)
    p = MaxPool <kernel_shape=[2, 2], strides=[2, 2]> (r1)
    y = Conv <pads=[1, 1, 1, 1]> (p, w2, b2)
}
"""


def test_sub_plans_reuse_the_full_plans_scales_without_recalibrating():
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "b1": np.zeros(4, np.float32),
             "w2": (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "b2": np.zeros(4, np.float32)}
    model = Model.from_onnx(parse_model(POOL_CNN, inits))
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    result = quantize(model, Dataset(lambda: iter([{"x": x}]), input_specs(model), "calib"), QuantizeConfig())
    first = next(n.name for n in result.float_model.graph.nodes if n.op == "Conv" and n.inputs[1].name == "w1")
    pool = next(n for n in result.float_model.graph.nodes if n.op == "MaxPool").outputs[0].name
    relu = next(n for n in result.float_model.graph.nodes if n.op == "Relu").outputs[0].name
    assert result.plan.tensors[pool] == relu and pool not in result.ranges  # the pool output takes the Relu's scale
    from onnxopt.quantize.placement import plan_quantization

    sub = plan_quantization(result.float_model, result.config, {first: "test"})
    assert sub.tensors[pool] == pool  # with the first Conv float, the MaxPool is float and its output its own root
    with pytest.raises(DataError, match="no range for tensor"):
        insert_qdq(result.float_model.copy(), sub, result.ranges, result.config)
    covering = covering_ranges(result.ranges, result.plan)
    assert covering[pool] == result.ranges[relu]
    variant = build_variant(result.float_model, result.config, covering, {first: "test"})
    assert math.isfinite(sqnr_db(run_ort(model, {"x": x})[0], run_ort(variant, {"x": x})[0]))


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
    c1 = Conv <pads=[1, 1, 1, 1]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads=[1, 1, 1, 1]> (r1, w2, b2)
    r2 = Relu (c2)
    y = Conv <pads=[1, 1, 1, 1]> (r2, w3, b3)
}
"""


def test_a_float_conv_between_quantized_ones_really_runs_float_in_onnxruntime():
    rng = np.random.default_rng(0)
    inits = {f"w{i}": (rng.standard_normal((4, c, 3, 3)) * 0.3).astype(np.float32) for i, c in ((1, 3), (2, 4), (3, 4))}
    inits.update({f"b{i}": (rng.standard_normal(4) * 0.1).astype(np.float32) for i in (1, 2, 3)})
    model = Model.from_onnx(parse_model(CHAIN, inits))
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    calib = Dataset(lambda: iter([{"x": x}]), input_specs(model), "calib")
    result = quantize(model, calib, QuantizeConfig())
    middle = next(n.name for n in result.float_model.graph.nodes if n.op == "Conv" and n.inputs[1].name == "w2")
    ranges = covering_ranges(result.ranges, result.plan)
    from onnxopt.quantize.placement import plan_quantization

    plan = plan_quantization(result.float_model, result.config, {middle: "test"})
    unpinned = result.float_model.copy()
    insert_qdq(unpinned, plan, ranges, result.config)
    # onnxruntime quantizes the float Conv's weight itself (per tensor) and fuses it: 3 integer Convs of 2 planned
    assert fusion_report(unpinned).integer_count == 3
    pinned = result.float_model.copy()
    insert_qdq(pinned, plan, ranges, result.config)
    assert pin_float_nodes(pinned, [middle]) == [middle]
    report = fusion_report(pinned)
    assert report.integer_count == 2 and len(report.float_compute) == 1
    # same values: the per-channel DequantizeLinear repeats the scalar scale and zero point
    np.testing.assert_allclose(run_ort(pinned, {"x": x})[0], run_ort(unpinned, {"x": x})[0], rtol=1e-5, atol=1e-5)
    # and quantize() pins the nodes it keeps float (here by --exclude)
    excluded = quantize(model, calib, QuantizeConfig(exclude=(middle,)))
    assert excluded.report.fusion.integer_count == 2
    assert any("per-channel DequantizeLinear" in n for n in excluded.report.notes)


def test_meter_needs_labels_for_accuracy(mlp_result):
    model, result = mlp_result
    with pytest.raises(DataError, match="accuracy needs labels"):
        OutputMeter(model, mlp_data(model, 16, 5), accuracy=True)


def test_bundled_resnet_sensitivity_is_finite_and_float_never_hurts_much():
    model = load_model(ROOT / "models" / "resnet.onnx")
    specs = input_specs(model)
    calib = open_dataset(f"{ROOT / 'models' / 'fashion_mnist_sample.npz'}:calib", specs)
    result = quantize(model, calib, QuantizeConfig(reduce_range=True))
    sens = analyse_sensitivity(result, calib, samples=32)
    assert len(sens.nodes) == len(result.plan.compute_nodes()) == 10 and sens.samples == 32
    # 10, not 11: the 1-channel stem Conv stays float (placement: float_faster)
    for n in sens.nodes:
        assert math.isfinite(n.sqnr_only_quantized) and math.isfinite(n.sqnr_only_float)
        assert n.sqnr_only_quantized > sens.quantized_sqnr - 0.5  # one node alone is closer to float than all
        assert n.sqnr_only_float >= sens.quantized_sqnr - 1.0, n
