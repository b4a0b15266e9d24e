"""Saved ranges: JSON round trip, and refusal of files that do not fit."""

import json

import pytest

from onnxopt.errors import DataError
from onnxopt.ir import Model
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.ranges import Ranges, model_fingerprint
from test_quantize_qdq import calib_data, residual_cnn


def test_round_trip_is_exact(tmp_path):
    r = Ranges({"a": (-1.25, 3.5), "b": (0.0, 1e-7)}, "percentile", "asymmetric", "abc123", 64, {"percentile": 99.9})
    path = r.save(tmp_path / "r.json")
    back = Ranges.load(path)
    assert back.tensors == r.tensors and back.method == "percentile" and back.activations == "asymmetric"
    assert back.fingerprint == "abc123" and back.samples == 64 and back.extra == {"percentile": 99.9}


def test_quantize_with_loaded_ranges_gives_the_same_model(tmp_path):
    model = Model.from_onnx(residual_cnn())
    first = quantize(model, calib_data(model), QuantizeConfig(method="percentile"))
    loaded = Ranges.load(first.ranges.save(tmp_path / "r.json"))
    again = quantize(model, None, QuantizeConfig(method="percentile"), ranges=loaded)
    assert again.report.calibration is None
    assert again.model.to_onnx().SerializeToString() == first.model.to_onnx().SerializeToString()


def test_fingerprint_follows_weights_and_structure():
    a = Model.from_onnx(residual_cnn(seed=0))
    assert model_fingerprint(a) == model_fingerprint(Model.from_onnx(residual_cnn(seed=0)))
    assert model_fingerprint(a) != model_fingerprint(Model.from_onnx(residual_cnn(seed=1)))


def test_ranges_missing_a_tensor_are_refused():
    r = Ranges({"a": (0.0, 1.0)}, "minmax", "asymmetric", "f")
    with pytest.raises(DataError, match="no range for tensor 'b'"):
        r.check_applies_to("f", ["a", "b"])
    with pytest.raises(DataError, match="different model"):
        r.check_applies_to("g", ["a"])


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"tensors": {}}', "not an onnxopt ranges file"),
    ('{"format": "onnxopt-ranges", "tensors": {"a": [1]}}', "must be \\[lo, hi\\]"),
    ('{"format": "onnxopt-ranges", "tensors": {"a": [2, 1]}}', "invalid"),
    ('{"format": "onnxopt-ranges", "version": 99, "tensors": {}}', "newer"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        Ranges.load(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Ranges.load(tmp_path / "nope.json")


def test_saved_file_is_readable_json(tmp_path):
    path = Ranges({"x": (-1.0, 1.0)}, "minmax", "symmetric", "f").save(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "onnxopt-ranges" and doc["tensors"] == {"x": [-1.0, 1.0]}
