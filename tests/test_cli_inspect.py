import json
import os
import subprocess
import sys

from conftest import ROOT, small_cnn
from onnxopt.cli.main import main

TOTAL_MACS = 6912 + 9216 + 40


def test_inspect_prints_a_readable_report(tmp_model_path, capsys):
    path = tmp_model_path(small_cnn())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[N, 3, 8, 8]" in out and "[N, 10]" in out  # symbolic dims by name
    assert "onnxopt-tests 1.0" in out
    assert "ai.onnx 17" in out
    assert f"{TOTAL_MACS:,}" in out and "per sample" in out
    assert "326" in out  # parameters
    lines = out.splitlines()
    conv_rows = [line for line in lines if line.strip().startswith(("c1 ", "c2 "))]
    assert len(conv_rows) == 2 and "6,912" in conv_rows[0] and "9,216" in conv_rows[1]
    hist = {line.split()[0]: line.split()[1] for line in lines if line.strip().split()[:1] in (["Conv"], ["Gemm"])
            and len(line.split()) == 2}
    assert hist == {"Conv": "2", "Gemm": "1"}


def test_inspect_json_to_stdout_is_only_json(tmp_model_path, capsys):
    path = tmp_model_path(small_cnn())
    assert main(["inspect", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert doc["outputs"][0]["shape"] == ["N", 10]
    assert doc["opsets"] == {"ai.onnx": 17}
    assert doc["ir_version"] == 8 and doc["node_count"] == 10
    assert doc["op_histogram"]["Conv"] == 2
    assert doc["parameter_count"] == 326 and doc["parameter_bytes"] == 1304
    assert doc["macs"]["total"] == TOTAL_MACS and doc["macs"]["per_sample"] is True
    assert [n["macs"] for n in doc["macs"]["nodes"]] == [6912, 9216, 40]


def test_inspect_json_to_file_keeps_the_table(tmp_model_path, tmp_path, capsys):
    path = tmp_model_path(small_cnn(batch=2))
    report = tmp_path / "summary.json"
    assert main(["inspect", str(path), "--json", str(report)]) == 0
    assert "MACs by node" in capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert doc["macs"]["total"] == 2 * TOTAL_MACS and doc["macs"]["batch"] == 2


def test_inspect_as_a_module(tmp_model_path):
    path = tmp_model_path(small_cnn())
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "inspect", str(path)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GlobalAveragePool" in proc.stdout


def test_passes_lists_registered_passes_with_options(capsys):
    assert main(["passes"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("remove_identity "))
    assert "drop Identity nodes" in row and row.split()[1] == "pass"
    cleanup = next(line for line in table.splitlines() if line.startswith("cleanup "))
    assert "pipeline" in cleanup and "fixed_point=True (bool)" in cleanup
    assert main(["passes", "--json"]) == 0
    doc = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert doc["remove_identity"]["options"] == [] and doc["remove_identity"]["kind"] == "pass"
    assert {"name": "max_iterations", "type": "int", "default": 10} in doc["cleanup"]["options"]


def test_inspect_prunable_lists_groups(tmp_path, capsys):
    import json as _json

    from conftest import small_cnn
    from onnxopt.cli.main import main as _main

    path = tmp_path / "cnn.onnx"
    import onnx as _onnx

    _onnx.save_model(small_cnn(), str(path))
    assert _main(["inspect", str(path), "--prunable"]) == 0
    out = capsys.readouterr().out
    assert "Channel groups:" in out and "prunable" in out
    assert _main(["inspect", str(path), "--prunable", "--json"]) == 0
    doc = _json.loads(capsys.readouterr().out)
    groups = doc["channel_groups"]
    # conv1 and conv2 are tied by the residual Add: one 4-channel group; the logits reach a graph output
    assert any(g["prunable"] and g["size"] == 4 for g in groups)
    assert all(not g["prunable"] for g in groups if g["size"] == 10)
