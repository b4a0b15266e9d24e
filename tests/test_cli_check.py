import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

from conftest import ROOT, parse_model, small_cnn
from onnxopt.cli.main import main
from onnxopt.runtime.compare import OutputStats, output_name_problem
from onnxopt.runtime.providers import available_providers


@pytest.fixture
def cnn(tmp_model_path):
    return tmp_model_path(small_cnn(), "reference.onnx")


@pytest.fixture
def optimized(cnn, tmp_path):
    out = tmp_path / "optimized.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "remove_identity", "--quiet"]) == 0
    return out


def perturbed(tmp_model_path, scale: float):
    """The reference CNN with its classifier weights changed by ``scale`` (to make numbers differ)."""
    proto = small_cnn()
    for t in proto.graph.initializer:
        if t.name == "wf":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * scale, "wf"))
    return tmp_model_path(proto, "perturbed.onnx")


def junit_cases(path):
    root = ET.parse(path).getroot()
    return {c.get("name"): c.find("failure") for c in root.iter("testcase")}, root


def test_passing_check_with_reference_writes_junit_and_json(cnn, optimized, tmp_path, capsys):
    junit, report = tmp_path / "junit.xml", tmp_path / "check.json"
    assert main(["check", str(optimized), "--reference", str(cnn), "--junit", str(junit), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 checks passed" in out
    cases, root = junit_cases(junit)
    assert list(cases) == ["load", "onnx_checker", "shape_inference", "session[cpu]", "output_names",
                           "compare[cpu]:logits"]
    assert all(f is None for f in cases.values())
    assert root.get("failures") == "0" and root.get("tests") == "6"
    doc = json.loads(report.read_text())
    assert doc["passed"] is True
    cmp = doc["checks"][-1]["details"]
    assert cmp["max_abs_error"] == 0.0 and cmp["cosine_similarity"] == pytest.approx(1.0)
    assert cmp["top1_agreement"] == 1.0 and cmp["elements"] == 8 * 10  # 8 random samples by default


def test_numeric_mismatch_fails_with_exit_1(cnn, tmp_model_path, tmp_path, capsys):
    other = perturbed(tmp_model_path, 1.01)
    junit = tmp_path / "junit.xml"
    assert main(["check", str(other), "--reference", str(cnn), "--junit", str(junit), "--num-random", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "onnxopt check: error: 1 of 6 checks failed: compare[cpu]:logits"
    cases, root = junit_cases(junit)
    assert root.get("failures") == "1"
    failure = cases["compare[cpu]:logits"]
    assert failure is not None and "outside tolerance" in failure.get("message")
    # a loose enough tolerance passes the same pair
    assert main(["check", str(other), "--reference", str(cnn), "--num-random", "4", "--rtol", "0.05",
                 "--atol", "0.05"]) == 0


def test_output_names_must_match(cnn, tmp_path, capsys):
    proto = small_cnn()
    proto.graph.node[-1].output[0] = "scores"
    proto.graph.output[0].name = "scores"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(proto, str(renamed))
    assert main(["check", str(renamed), "--reference", str(cnn)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("output_names"))
    assert "FAIL" in row and "logits" in row and "scores" in row


def test_missing_provider_is_a_failed_check_not_a_fallback(cnn, tmp_path, capsys):
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is installed here")
    junit = tmp_path / "j.xml"
    assert main(["check", str(cnn), "--providers", "cpu,cuda", "--junit", str(junit)]) == 1
    cases, _ = junit_cases(junit)
    assert cases["session[cpu]"] is None
    assert "not available" in cases["session[cuda]"].get("message")


def test_checker_and_shape_inference_failures(tmp_path, capsys):
    proto = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2, 3]),
         onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp_path / "bad_broadcast.onnx"
    onnx.save(proto, str(path))
    report = tmp_path / "r.json"
    assert main(["check", str(path), "--json", str(report)]) == 1
    checks = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert checks["load"]["passed"]
    assert not checks["onnx_checker"]["passed"] and not checks["shape_inference"]["passed"]
    for name in ("onnx_checker", "shape_inference"):
        assert "incompatible dimensions" in checks[name]["message"].lower()


def test_inputs_without_reference_run_the_model(cnn, tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 3, 8, 8), np.float32), labels=np.array([0, 1, 2]))
    assert main(["check", str(cnn), "--inputs", str(data)]) == 0
    assert "ran on 3 samples" in capsys.readouterr().out


def test_load_error_exits_2_and_still_writes_junit(tmp_path, capsys):
    junit = tmp_path / "j.xml"
    assert main(["check", str(tmp_path / "nope.onnx"), "--junit", str(junit)]) == 2
    assert "not found" in capsys.readouterr().err
    cases, _ = junit_cases(junit)
    assert "not found" in cases["load"].get("message")


def test_failed_check_exit_code_through_the_module(cnn, tmp_model_path):
    other = perturbed(tmp_model_path, 2.0)
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "check", str(other), "--reference", str(cnn)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 1
    assert "compare[cpu]:logits" in proc.stderr and "Traceback" not in proc.stderr


# -- the comparison statistics themselves -------------------------------------------------
def test_output_stats_numbers():
    ref = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]], np.float32)
    got = np.array([[1.1, 2.0, 0.0], [2.0, 4.0, 0.5]], np.float32)
    s = OutputStats("y", rtol=1e-3, atol=1e-3)
    s.update(ref, got)
    r = s.result()
    assert r.max_abs_error == pytest.approx(5.0)
    assert r.max_rel_error == pytest.approx(5.0)  # |4 - -1| / |-1|
    r64, g64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    assert r.cosine_similarity == pytest.approx(r64 @ g64 / math.sqrt((r64 @ r64) * (g64 @ g64)))
    assert r.top1_agreement == 0.5  # row 0 agrees (index 1), row 1 does not (0 vs 1)
    assert r.mismatched == 3 and not r.passed


def test_output_stats_stream_over_batches_and_allclose_semantics():
    s = OutputStats("y", rtol=0.1, atol=0.0)
    s.update(np.array([10.0]), np.array([10.9]))  # within rtol * |ref|
    s.update(np.array([1.0]), np.array([1.2]))  # outside
    r = s.result()
    assert r.elements == 2 and r.mismatched == 1 and not r.passed
    assert r.top1_agreement is None  # 1-D: not a classifier output
    nan = OutputStats("y", rtol=0.0, atol=0.0)
    nan.update(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    assert nan.result().passed
    nan.update(np.array([1.0]), np.array([np.nan]))
    assert not nan.result().passed and math.isinf(nan.result().max_abs_error)


def test_shape_mismatch_and_name_problems():
    s = OutputStats("y", rtol=0.0, atol=0.0)
    s.update(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not s.result().passed and "[3, 2]" in s.result().message
    assert output_name_problem(["a", "b"], ["a", "b"]) is None
    problem = output_name_problem(["a", "b"], ["a", "c"])
    assert "b" in problem and "c" in problem


def test_unusable_reference_is_an_input_error(cnn, tmp_path, capsys):
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[N, 3, 8, 8] x) => (float[N, 10] logits) { logits = com.example.Mystery (x) }
    """)
    ref = tmp_path / "no_kernel.onnx"
    onnx.save(proto, str(ref))
    junit = tmp_path / "j.xml"
    assert main(["check", str(cnn), "--reference", str(ref), "--junit", str(junit)]) == 2
    err = capsys.readouterr().err
    assert "reference:" in err and "Mystery" in err and len(err.strip().splitlines()) == 1
    cases, _ = junit_cases(junit)
    assert cases["load"] is None and "Mystery" in cases["reference"].get("message")
