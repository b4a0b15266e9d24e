"""Empirical bias correction: the mean per-channel output error of a quantized conv shrinks (real onnxruntime runs)."""

import numpy as np
import pytest
from conftest import parse_model, run_ort

from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir import Model
from onnxopt.passes import create_pass
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.bias_correction import channel_sums, correct_bias
from onnxopt.quantize.fusion import fusion_report

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
STEP = 0.01  # the weight quantization step of every output channel
#: 7-bit weights (reduce_range): full 8-bit ones saturate int16 in onnxruntime's AVX2 kernels on CPUs without
#: VNNI, an error that no bias can fix and that would hide the one under test
QMAX = 64


def floor_biased_weight(rng, cout: int, cin: int) -> np.ndarray:
    """Conv weights whose per-channel int8 rounding errs the same way inside a channel.

    One weight per channel is ``QMAX`` steps (fixing the per-channel scale at
    ``STEP``); the others sit 0.45 of a step above (even channels) or below
    (odd channels) a multiple of it, so rounding moves every weight of a
    channel the same way and, with positive inputs, the channel's output mean.
    """
    n = rng.integers(-QMAX + 4, QMAX - 4, size=(cout, cin, 3, 3)).astype(np.float64)
    offset = np.where(np.arange(cout) % 2 == 0, 0.45, -0.45).reshape(-1, 1, 1, 1)
    w = (n + offset) * STEP
    w[:, 0, 0, 0] = QMAX * STEP
    return w.astype(np.float32)


def conv_model(with_bias: bool = True, seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    inits = {"W": floor_biased_weight(rng, 6, 4)}
    if with_bias:
        inits["B"] = rng.standard_normal(6).astype(np.float32)
    bias = ", B" if with_bias else ""
    proto = parse_model(HEADER + f"""
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {{
      c = Conv <pads = [1, 1, 1, 1]> (x{bias})
      y = Relu (c)
    }}""".replace("(x", "(x, W"), inits)
    return create_pass("cleanup")(Model.from_onnx(proto)).model


def positive_data(model: Model, n: int, seed: int) -> Dataset:
    x = np.random.default_rng(seed).uniform(0.0, 2.0, (n, 4, 6, 6)).astype(np.float32)
    return Dataset(lambda: iter([{"x": x}]), input_specs(model), "positive inputs", length=n)


def mean_channel_error(float_model: Model, quant_model: Model, data: Dataset) -> np.ndarray:
    """|mean (quantized - float)| per output channel, the quantized model with onnxruntime's integer kernels."""
    x = data.arrays()["x"]
    ref = run_ort(float_model, {"x": x})[0]
    got = run_ort(quant_model, {"x": x}, optimize=True)[0]
    sums, n = channel_sums(got.astype(np.float64) - ref)
    return np.abs(sums / n)


def quantized(float_model: Model, calib: Dataset) -> Model:
    return quantize(float_model, calib, QuantizeConfig(reduce_range=True)).model


@pytest.mark.parametrize("sequential", [False, True])
def test_mean_channel_error_shrinks(sequential):
    fm = conv_model()
    calib, held_out = positive_data(fm, 64, seed=1), positive_data(fm, 64, seed=2)
    qm = quantized(fm, calib)
    before = mean_channel_error(fm, qm, held_out)
    assert before.mean() > 0.05  # the rounding bias is there to correct: ~0.45 steps x 36 weights x E[x]
    stats = correct_bias(fm, qm, calib, sequential=sequential, max_samples=48, batch_size=16)
    assert [c.name for c in stats.corrected] == ["Conv_0"] and not stats.skipped
    assert stats.samples == 48 and stats.batches == 3 and stats.passes == (2 if sequential else 1)
    assert stats.corrected[0].mean_abs_error > 0.05 and not stats.corrected[0].bias_added
    after = mean_channel_error(fm, qm, held_out)
    assert after.mean() < 0.25 * before.mean()
    assert after.max() < before.max()
    # still one integer kernel: only the int32 bias values changed
    assert fusion_report(qm, planned=["Conv_0"]).integer_count == 1


def test_layer_without_bias_gets_an_int32_one():
    fm = conv_model(with_bias=False)
    calib = positive_data(fm, 32, seed=3)
    qm = quantized(fm, calib)
    before = mean_channel_error(fm, qm, calib)
    stats = correct_bias(fm, qm, calib)
    assert stats.corrected[0].bias_added
    conv = next(n for n in qm.graph.nodes if n.op == "Conv")
    dq = conv.inputs[2].inputs[0]
    assert dq.op == "DequantizeLinear" and dq.inputs[0].values.dtype == np.int32
    assert mean_channel_error(fm, qm, calib).mean() < 0.25 * before.mean()
    assert fusion_report(qm, planned=[conv.name]).integer_count == 1


def test_nodes_filter_and_unknown_names():
    fm = conv_model()
    calib = positive_data(fm, 16, seed=4)
    qm = quantized(fm, calib)
    with pytest.raises(OnnxoptError, match="no node named"):
        correct_bias(fm, qm, calib, nodes=["nope"])
    relu = next(n.name for n in qm.graph.nodes if n.op in ("Relu", "QuantizeLinear"))
    stats = correct_bias(fm, qm, calib, nodes=[relu])
    assert not stats.corrected and relu in stats.skipped and stats.passes == 0


def test_a_float_model_that_was_not_the_one_quantized_is_refused():
    fm = conv_model()
    calib = positive_data(fm, 16, seed=5)
    qm = quantized(fm, calib)
    other = fm.copy()
    w = next(t for t in other.initializers().values() if t.values.ndim == 4)
    w.values = w.values * 1.1  # e.g. the model before BatchNormalization was folded into the conv
    with pytest.raises(DataError, match="does not round to the quantized one"):
        correct_bias(other, qm, calib)


@pytest.mark.parametrize("mode", ["one-shot", "sequential"])
def test_quantize_config_switches_bias_correction_on(mode):
    """QuantizeConfig(bias_correction=...) runs it inside quantize(): same structure, smaller channel error."""
    fm = conv_model()
    calib, held_out = positive_data(fm, 64, seed=1), positive_data(fm, 64, seed=2)
    plain = quantize(fm, calib, QuantizeConfig(reduce_range=True))
    corrected = quantize(fm, calib, QuantizeConfig(reduce_range=True, bias_correction=mode))
    assert plain.report.bias_correction is None
    doc = corrected.report.bias_correction
    assert doc["sequential"] is (mode == "sequential") and [c["name"] for c in doc["corrected"]] == ["Conv_0"]
    assert corrected.report.config["bias_correction"] == mode
    assert corrected.model.op_histogram() == plain.model.op_histogram()
    assert mean_channel_error(fm, corrected.model, held_out).mean() < \
        0.25 * mean_channel_error(fm, plain.model, held_out).mean()
    with pytest.raises(OnnxoptError, match="bias_correction"):
        QuantizeConfig(bias_correction="always")


def test_bias_correction_without_calibration_data_is_refused_before_any_work():
    fm = conv_model()
    ranges = quantize(fm, positive_data(fm, 16, seed=1), QuantizeConfig(reduce_range=True)).ranges
    with pytest.raises(DataError, match="bias correction measures on calibration data"):
        quantize(fm, None, QuantizeConfig(reduce_range=True, bias_correction="one-shot"), ranges=ranges)
    # the same saved ranges without bias correction need no data
    assert quantize(fm, None, QuantizeConfig(reduce_range=True), ranges=ranges).report.bias_correction is None
