"""Calibration math on known arrays, and streaming calibration through onnxruntime."""

import numpy as np
import pytest

from conftest import parse_model
from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError
from onnxopt.ir import Model
from onnxopt.quantize.calibrate import (
    SMOOTHING_EPS,
    HistogramCollector,
    MinMaxCollector,
    calibrate,
    entropy_range,
    entropy_range_signed,
    kl_divergences,
    level_spikes,
    mse_range,
    percentile_range,
)
from onnxopt.quantize.config import QuantizeConfig

RNG = np.random.default_rng(0)


def hist_of(values, absolute, bins=2048):
    h = HistogramCollector(bins, absolute)
    h.update(values)
    return h


# -- collectors ------------------------------------------------------------------
def test_minmax_is_exact_and_order_free():
    data = RNG.standard_normal(10_000).astype(np.float32)
    c = MinMaxCollector()
    for part in np.array_split(data, 7):
        c.update(part)
    assert c.result() == (float(data.min()), float(data.max()))


def test_moving_average_tempers_one_outlier_batch():
    c = MinMaxCollector(moving_average=True, averaging_constant=0.1)
    c.update(np.array([-1.0, 1.0]))
    c.update(np.array([-100.0, 100.0]))
    lo, hi = c.result()
    assert lo == pytest.approx(-1.0 + 0.1 * (-99.0)) and hi == pytest.approx(1.0 + 0.1 * 99.0)
    assert hi < 100.0


def test_histogram_grows_by_exact_merges_in_one_pass():
    # batches whose range keeps growing: 0.5, then 3, then 40 (and -7 on the other side)
    parts = [RNG.uniform(0, 0.5, 5000), RNG.uniform(-3, 3, 5000), RNG.uniform(-7, 40, 5000)]
    h = HistogramCollector(256, absolute=False)
    for p in parts:
        h.update(p.astype(np.float32))
    x = np.concatenate(parts).astype(np.float32)
    assert (h.lo, h.hi) == (float(x.min()), float(x.max()))
    assert 256 <= h.counts.size <= 512  # never coarser than 256 bins over the range
    assert h.edges[0] <= h.lo and h.edges[-1] > h.hi and 0.0 in h.edges
    # merging pairs of bins aligned on 0 loses nothing: the same as binning everything at the final width
    direct, _ = np.histogram(x.astype(np.float64), bins=h.edges)
    assert np.abs(direct - h.counts).sum() <= 2  # a value within float32 rounding of an edge may move


def test_histogram_of_a_tensor_that_starts_all_zero():
    h = HistogramCollector(256, absolute=True)
    h.update(np.zeros(100, np.float32))
    assert h.counts.tolist() == [100]
    h.update(np.array([-2.0, 1.0], np.float32))
    assert h.counts.sum() == 102 and h.counts[0] == 100 and h.edges[0] == 0.0
    assert (h.lo, h.hi) == (-2.0, 1.0)


def test_histogram_counts_every_value():
    x = RNG.standard_normal(5000).astype(np.float32)
    for absolute in (True, False):
        h = hist_of(x, absolute)
        assert h.counts.sum() == x.size
        if absolute:
            assert h.edges[0] == 0.0
        else:  # zero sits on a bin edge so each side reads as a histogram of |x|
            assert h.edges[0] <= float(x.min()) and h.edges[-1] >= float(x.max())
            assert np.min(np.abs(h.edges)) < 1e-9


# -- ranges from histograms ------------------------------------------------------
def test_percentile_cuts_the_outliers():
    x = np.concatenate([RNG.uniform(-1, 1, 100_000), [50.0, -60.0]]).astype(np.float32)
    h = hist_of(x, False)
    lo, hi = percentile_range(h.counts, h.edges, float(x.min()), float(x.max()), 99.9, absolute=False)
    assert -1.2 < lo < -0.9 and 0.9 < hi < 1.2
    h = hist_of(x, True)
    lo, hi = percentile_range(h.counts, h.edges, float(x.min()), float(x.max()), 99.9, absolute=True)
    assert lo == -hi and 0.9 < hi < 1.2


def test_percentile_100_keeps_the_full_range():
    x = RNG.standard_normal(2000).astype(np.float32)
    h = hist_of(x, False)
    lo, hi = percentile_range(h.counts, h.edges, float(x.min()), float(x.max()), 100.0, absolute=False)
    assert lo == pytest.approx(float(x.min())) and hi == pytest.approx(float(x.max()))


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_histogram_methods_stay_within_minmax_and_clip_long_tails(method):
    # a Laplace-like activation with a far outlier: the minmax range is mostly empty
    x = np.concatenate([np.abs(RNG.laplace(0, 1, 200_000)), [80.0]]).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    h = hist_of(x, absolute=True)
    if method == "entropy":
        got = entropy_range(h.counts, h.edges, lo, hi)
    else:
        got = mse_range(h.counts, h.edges, lo, hi, absolute=True, levels=127)
    assert lo <= got[0] <= got[1] <= hi
    assert 3.0 < got[1] < 40.0  # clips the outlier, keeps the bulk (99.9th percentile is ~6.9)


def test_mse_asymmetric_on_uniform_data_keeps_the_range():
    x = RNG.uniform(-1.0, 3.0, 100_000).astype(np.float32)
    h = hist_of(x, absolute=False)
    lo, hi = mse_range(h.counts, h.edges, float(x.min()), float(x.max()), absolute=False, levels=255)
    assert lo == pytest.approx(-1.0, abs=0.05) and hi == pytest.approx(3.0, abs=0.05)


def test_mse_prefers_a_narrower_range_than_minmax_for_gaussian_data():
    x = RNG.standard_normal(100_000).astype(np.float32)
    h = hist_of(x, absolute=True)
    _, hi = mse_range(h.counts, h.edges, float(x.min()), float(x.max()), absolute=True, levels=127)
    assert 2.0 < hi < float(x.max())

    def expected_error(t):  # brute-force check of the objective at the chosen and the full range
        q = np.clip(np.round(x / (t / 127)), -127, 127) * (t / 127)
        return float(np.mean((x - q) ** 2))

    assert expected_error(hi) < expected_error(float(np.abs(x).max()))


def test_entropy_is_not_dragged_down_by_the_zeros_of_a_relu():
    x = np.maximum(RNG.standard_normal(200_000), 0).astype(np.float32)  # half the values are exactly 0
    h = hist_of(x, absolute=True)
    lo, hi = entropy_range(h.counts, h.edges, 0.0, float(x.max()))
    assert lo == 0.0 and float(np.percentile(x[x > 0], 99)) < hi <= float(x.max())


def _kl_by_definition(counts, i, quantized_bins):
    """TensorRT's KL(P || Q) for one candidate, bin by bin, smoothing counts as MXNet/onnxruntime do."""
    def smooth(p):
        zero = p == 0
        return p + SMOOTHING_EPS * zero - SMOOTHING_EPS * zero.sum() / (~zero).sum() * (~zero)

    head = counts[:i].astype(np.float64)
    p = head.copy()
    p[-1] += counts[i:].sum()
    groups = np.arange(i) * quantized_bins // i
    merged = np.bincount(groups, weights=head, minlength=quantized_bins)
    occupied = np.bincount(groups, weights=(head != 0).astype(float), minlength=quantized_bins)
    q = np.where(head != 0, merged[groups] / np.maximum(occupied[groups], 1), 0.0)
    p, q = smooth(p), smooth(q)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


@pytest.mark.parametrize("quantized_bins", [128, 200, 256])
def test_closed_form_kl_matches_the_definition(quantized_bins):
    x = np.concatenate([np.abs(RNG.laplace(0, 1, 100_000)), [40.0]])
    counts, _ = np.histogram(x, 2048, (0, x.max()))
    counts[700:720] = 0  # empty bins inside the range, and candidates whose last bin is empty
    candidates = np.arange(quantized_bins, 2049, 37)
    got = kl_divergences(counts, candidates, quantized_bins)
    want = [_kl_by_definition(counts, i, quantized_bins) for i in candidates]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.argmin(got) == np.argmin(want)


def test_spikes_are_leveled_to_their_neighbourhood():
    counts = np.full(64, 10.0)
    counts[[5, 30]] = [500.0, 25.0]
    out = level_spikes(counts)
    assert out[5] == 10.0 and out[30] == 10.0 and (np.delete(out, [5, 30]) == 10.0).all()
    assert level_spikes(np.array([3.0, 1.0, 0.0, 2.0, 0.0]))[0] == 3.0  # sparse tails are not spikes (floor of 1)


def test_entropy_is_not_dragged_down_by_spikes():
    # a ReLU6 output: a third exact zeros, a continuous part up to 6, and spikes (12 channels' constant responses to
    # a flat image background); spread over merged bins the spikes used to swamp the divergence (threshold ~2.3)
    spikes = np.repeat(RNG.uniform(0.2, 2.5, 12), 15_000)
    x = np.concatenate([np.zeros(150_000), np.minimum(RNG.exponential(1.0, 250_000), 6.0), spikes]).astype(np.float32)
    h = hist_of(x, absolute=False)
    lo, hi = entropy_range_signed(h.counts, h.edges, 0.0, float(x.max()))
    assert lo == 0.0 and hi > float(np.percentile(x, 99.5))


def test_asymmetric_entropy_searches_each_side_of_zero():
    # a normalized image: most pixels at the background value -0.8, the rest spread up to +2
    x = np.concatenate([np.full(60_000, -0.81), RNG.uniform(-0.81, 2.0, 40_000)]).astype(np.float32)
    h = hist_of(x, absolute=False)
    lo, hi = entropy_range_signed(h.counts, h.edges, float(x.min()), float(x.max()))
    assert lo == pytest.approx(-0.81, abs=0.01)  # the background spike is kept exact
    assert hi > 1.5  # |x| would fold the background onto the positive side at 0.81


def test_entropy_never_clips_below_the_smallest_value():
    x = RNG.uniform(0.38, 0.62, 50_000).astype(np.float32)  # a Sigmoid gate: far from 0 on one side
    h = hist_of(x, absolute=False)
    lo, hi = entropy_range_signed(h.counts, h.edges, float(x.min()), float(x.max()))
    assert lo == pytest.approx(float(x.min())) and hi > 0.55


def test_entropy_on_data_that_fits_needs_no_clipping():
    x = RNG.uniform(0, 1, 10_000).astype(np.float32)
    counts, edges = np.histogram(x, bins=128, range=(0.0, float(x.max())))  # no more bins than quantized levels
    assert entropy_range(counts, edges, 0.0, float(x.max())) == (0.0, float(x.max()))


# -- streaming through a model ---------------------------------------------------------
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  h = MatMul(x, w)
  y = Relu(h)
}
"""


def tiny_model():
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    return Model.from_onnx(parse_model(MODEL, {"w": w}))


def dataset(model, x):
    return Dataset(lambda: iter([{"x": x}]), input_specs(model), "test data")


def test_minmax_ranges_do_not_depend_on_batch_size():
    model = tiny_model()
    x = RNG.standard_normal((130, 4)).astype(np.float32)
    r1, s1 = calibrate(model, ["x", "h", "y"], dataset(model, x), QuantizeConfig(batch_size=1))
    r64, s64 = calibrate(model, ["x", "h", "y"], dataset(model, x), QuantizeConfig(batch_size=64))
    assert r1.tensors == r64.tensors
    assert s1.samples == s64.samples == 130 and (s1.batches, s64.batches) == (130, 3)
    w = model.initializers()["w"].values
    h = x @ w
    assert r1["h"] == (pytest.approx(float(h.min()), rel=1e-5), pytest.approx(float(h.max()), rel=1e-5))
    assert r1["y"][0] == 0.0 and r1["x"] == (float(x.min()), float(x.max()))


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_run_two_passes_and_stay_inside_minmax(method):
    model = tiny_model()
    x = RNG.standard_normal((200, 4)).astype(np.float32)
    mm, _ = calibrate(model, ["h", "y"], dataset(model, x), QuantizeConfig(batch_size=32))
    got, stats = calibrate(model, ["h", "y"], dataset(model, x), QuantizeConfig(method=method, batch_size=32))
    assert stats.passes == 1 and got.method == method  # the histograms grow with the data: one pass
    for name in ("h", "y"):
        assert mm[name][0] - 1e-6 <= got[name][0] <= got[name][1] <= mm[name][1] + 1e-6


def test_intermediate_nan_is_a_data_error():
    model = Model.from_onnx(parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2] x) => (float[N, 2] y) { y = Log(x) }
    """))
    x = np.array([[1.0, -1.0]], np.float32)  # log(-1) = nan
    with pytest.raises(DataError, match="NaN"):
        calibrate(model, ["y"], dataset(model, x), QuantizeConfig())


PEAK_SCRIPT = r'''
import resource, sys
import numpy as np
import onnx.parser
from onnxopt.data import Dataset, input_specs
from onnxopt.ir import Model
from onnxopt.quantize.calibrate import calibrate
from onnxopt.quantize.config import QuantizeConfig

proto = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 8192] y) { h = MatMul(x, w)  y = Relu(h) }
""")
proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((16, 8192), np.float32), "w"))
model = Model.from_onnx(proto)
x = np.random.default_rng(0).standard_normal((int(sys.argv[1]), 16)).astype(np.float32)
data = Dataset(lambda: iter([{"x": x}]), input_specs(model), "d")
calibrate(model, ["h", "y"], data, QuantizeConfig(method="percentile", batch_size=8))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
'''


def test_peak_memory_does_not_grow_with_the_number_of_samples():
    """Activations of 2048 samples would take 128 MiB; streaming holds one batch (0.5 MiB)."""
    import subprocess
    import sys

    from conftest import ROOT

    def peak_kib(n):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(n)], capture_output=True, text=True, cwd=ROOT,
                             check=True)
        return int(out.stdout.split()[-1])

    small, large = peak_kib(16), peak_kib(2048)
    assert large - small < 32 * 1024  # KiB


def test_a_fixed_batch_dimension_sets_the_calibration_batch():
    model = Model.from_onnx(parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 4] x) => (float[4, 4] y) { h = MatMul(x, w)  y = Relu(h) }
    """, {"w": RNG.standard_normal((4, 4)).astype(np.float32)}))
    x = RNG.standard_normal((10, 4)).astype(np.float32)
    ranges, stats = calibrate(model, ["h"], dataset(model, x), QuantizeConfig(batch_size=16))
    assert (stats.batches, stats.samples, stats.skipped_samples) == (2, 8, 2)
    h = x[:8] @ model.initializers()["w"].values
    assert ranges["h"] == (pytest.approx(float(h.min()), rel=1e-5), pytest.approx(float(h.max()), rel=1e-5))
    with pytest.raises(DataError, match="fixed batch size 4"):
        calibrate(model, ["h"], dataset(model, x[:3]), QuantizeConfig())
