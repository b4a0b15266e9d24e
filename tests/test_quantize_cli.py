"""``onnxopt quantize`` end to end, and its one-line errors (exit 2) on bad input."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import ROOT, parse_model
from onnxopt.cli.main import main
from test_quantize_qdq import residual_cnn


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(residual_cnn(), str(model))
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{"calib/x": rng.standard_normal((48, 3, 12, 12)).astype(np.float32),
                       "eval/x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32),
                       "eval/labels": rng.integers(0, 10, 16)})
    return model, calib, tmp_path


def test_end_to_end_writes_a_validated_model_report_and_ranges(files, capsys):
    model, calib, tmp = files
    before = model.read_bytes()
    out, report, ranges = tmp / "q.onnx", tmp / "report.json", tmp / "ranges.json"
    rc = main(["quantize", str(model), "-o", str(out), "--calib", f"{calib}:calib", "--method", "percentile",
               "--report", str(report), "--save-ranges", str(ranges), "--batch-size", "8"])
    assert rc == 0
    assert model.read_bytes() == before
    onnx.checker.check_model(str(out), full_check=True)
    text = capsys.readouterr().out
    assert "3 of 3 quantized ones fused" in text and "QLinearConv" in text and "SQNR" in text
    doc = json.loads(report.read_text())
    fusion = doc["report"]["fusion"]
    assert fusion["integer_compute"] == {"QGemm": 1, "QLinearConv": 2} and fusion["unfused"] == 0
    assert doc["report"]["config"]["method"] == "percentile" and doc["report"]["ranges"]
    assert doc["quality"][0]["sqnr_db"] > 20
    assert json.loads(ranges.read_text())["method"] == "percentile"
    # re-applying the saved ranges needs no data and gives the same model
    out2 = tmp / "q2.onnx"
    assert main(["quantize", str(model), "-o", str(out2), "--load-ranges", str(ranges), "--method", "percentile",
                 "-q"]) == 0
    assert out2.read_bytes() == out.read_bytes()
    assert capsys.readouterr().out == ""


def test_json_to_stdout_is_one_document(files, capsys):
    model, calib, tmp = files
    assert main(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", f"{calib}:calib",
                 "--activations", "symmetric", "--weights", "per-tensor", "--no-reduce-range", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cfg = doc["report"]["config"]
    assert (cfg["activations"], cfg["weights"], cfg["reduce_range"]) == ("symmetric", "per-tensor", False)
    assert doc["report"]["fusion"]["unfused"] == 0


def test_exclude_and_tensorrt_target(files, capsys):
    model, calib, tmp = files
    assert main(["quantize", str(model), "-o", str(tmp / "t.onnx"), "--calib", f"{calib}:calib", "--target",
                 "tensorrt", "--exclude", "Gemm", "--report", str(tmp / "r.json"), "-q"]) == 0
    doc = json.loads((tmp / "r.json").read_text())["report"]
    assert doc["fusion"] is None  # the CPU fusion check is for the cpu target
    assert {n["op"] for n in doc["quantized_nodes"]} == {"Conv", "Add"}
    assert any(f["op"] == "Gemm" and f["reason"] == "excluded (--exclude)" for f in doc["float_nodes"])


def expect_error(argv, capsys, message, out=None):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and message in err, err
    if out is not None:
        assert not out.exists()


def test_cuda_target_is_refused_with_advice(files, capsys):
    model, calib, tmp = files
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", str(calib), "--target", "cuda"],
                 capsys, "no INT8 convolution kernels", tmp / "q.onnx")


@pytest.mark.parametrize("case, message", [
    ("wrong_name", "match no model input"),
    ("wrong_shape", "has shape"),
    ("empty", "no samples"),
    ("nan", "NaN"),
    ("int_data", "dtype"),
])
def test_bad_calibration_data(files, capsys, case, message):
    model, _, tmp = files
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)
    arrays = {
        "wrong_name": {"x": x, "other": x},
        "wrong_shape": {"x": x[:, :, :6]},
        "empty": {"x": x[:0]},
        "nan": {"x": np.where(x > 2, np.nan, x).astype(np.float32)},
        "int_data": {"x": np.array(["a"] * 8)},
    }[case]
    data = tmp / f"{case}.npz"
    np.savez(data, **arrays)
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", str(data)], capsys, message,
                 tmp / "q.onnx")


def test_no_quantizable_op_is_an_error(tmp_path, capsys):
    model = tmp_path / "relu.onnx"
    onnx.save(parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """), str(model))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    expect_error(["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "d.npz")],
                 capsys, "nothing to quantize", tmp_path / "q.onnx")


def test_data_source_is_required_and_exclusive(files, capsys):
    model, calib, tmp = files
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx")], capsys, "needs calibration data")
    (tmp / "r.json").write_text("{}")
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", str(calib), "--load-ranges",
                  str(tmp / "r.json")], capsys, "not both")
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--load-ranges", str(tmp / "r.json")],
                 capsys, "not an onnxopt ranges file")
    expect_error(["quantize", str(model), "-o", str(model), "--calib", str(calib)], capsys, "is the input model")


def test_process_exit_code_and_single_line(files):
    model, calib, tmp = files
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "quantize", str(model), "-o", str(tmp / "q.onnx"),
                           "--calib", str(calib), "--target", "cuda"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("onnxopt quantize: error:") and "Traceback" not in proc.stderr


def test_equalize_and_bias_correction_flags(files, capsys):
    model, calib, tmp = files
    out, report = tmp / "q.onnx", tmp / "report.json"
    rc = main(["quantize", str(model), "-o", str(out), "--calib", f"{calib}:calib", "--equalize",
               "--bias-correction", "one-shot", "--report", str(report), "--batch-size", "8"])
    assert rc == 0
    onnx.checker.check_model(str(out), full_check=True)
    doc = json.loads(report.read_text())["report"]
    assert doc["config"]["equalize"] is True and doc["config"]["bias_correction"] == "one-shot"
    assert doc["bias_correction"]["corrected"] and not doc["bias_correction"]["sequential"]
    assert any("cross-layer equalization" in n for n in doc["notes"])
    assert doc["fusion"]["unfused"] == 0


def test_slower_int8_gets_a_note_and_noise_does_not():
    from onnxopt.cli.quantize_cmd import slower_than_fp32_notes

    rows = [{"batch": 1, "fp32_ms": 0.154, "int8_ms": 0.253, "speedup": 0.154 / 0.253},
            {"batch": 64, "fp32_ms": 10.0, "int8_ms": 10.3, "speedup": 10.0 / 10.3},
            {"batch": 128, "fp32_ms": 20.0, "int8_ms": 12.0, "speedup": 20.0 / 12.0}]
    notes = slower_than_fp32_notes(rows)
    assert len(notes) == 1 and "batch 1 " in notes[0] and "0.253 vs 0.154" in notes[0]
