import json

import numpy as np
import onnx
import pytest

from conftest import assert_same_outputs, count_ops, parse_model, random_feeds, small_cnn
from onnxopt.cli.main import main
from onnxopt.passes import Pass, PassResult, register


@register
class NeedsOpset18(Pass):
    """A do-nothing pass that needs opset 18: running it on an opset-17 model upgrades the model."""

    name = "test_only_needs_opset18"
    summary = "test helper: requires opset 18"
    min_opset = 18

    def run(self, model):
        return PassResult(model, False)


@pytest.fixture
def cnn(tmp_model_path):
    return tmp_model_path(small_cnn())


def leftovers(folder):
    """Temporary files or folders an interrupted or failed save could leave behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_optimize_with_a_pass_list(cnn, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    before = cnn.read_bytes()
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "remove_identity"]) == 0
    text = capsys.readouterr().out
    optimized = onnx.load(str(out))
    assert count_ops(optimized, "Identity") == 0 and count_ops(optimized) == 9
    assert_same_outputs(small_cnn(), optimized, random_feeds(optimized, batch=3))
    assert cnn.read_bytes() == before
    assert "remove_identity" in text and "10 -> 9" in text and "removed=1" in text
    nodes_row = next(line for line in text.splitlines() if line.strip().startswith("nodes"))
    assert nodes_row.split()[1:] == ["10", "9"]
    diff_line = next(line for line in text.splitlines() if line.startswith("max abs output difference"))
    assert "random samples" in diff_line and diff_line.endswith("logits 0")
    assert leftovers(tmp_path) == []


def test_default_cleanup_pipeline_folds_the_cnn(cnn, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(cnn), "-o", str(out)]) == 0
    optimized = onnx.load(str(out))
    assert count_ops(optimized, "BatchNormalization") == 0 and count_ops(optimized, "Identity") == 0
    assert count_ops(optimized) < 10
    assert_same_outputs(small_cnn(), optimized, random_feeds(optimized, batch=2), rtol=1e-4)
    assert "Pipeline cleanup" in capsys.readouterr().out


def test_json_report_and_recipe(cnn, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": ["remove_identity"]}))
    report = tmp_path / "report.json"
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--recipe", str(recipe), "--json", str(report), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    doc = json.loads(report.read_text())
    assert doc["pipeline"] == "recipe"
    assert [(p["name"], p["modified"], p["nodes_before"], p["nodes_after"]) for p in doc["passes"]] == [
        ("remove_identity", True, 10, 9)]
    assert doc["before"]["nodes"] == 10 and doc["after"]["nodes"] == 9
    assert doc["before"]["parameters"] == doc["after"]["parameters"] == 326
    assert doc["after"]["file_bytes"] == out.stat().st_size
    assert doc["max_abs_diff"] == {"logits": 0.0}


def test_json_to_stdout(cnn, tmp_path, capsys):
    assert main(["optimize", str(cnn), "-o", str(tmp_path / "o.onnx"), "--passes", "remove_identity", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["output"] == str(tmp_path / "o.onnx")


def test_in_place_overwrites_the_input_only_when_asked(cnn, tmp_path):
    assert main(["optimize", str(cnn), "-o", str(cnn), "--passes", "remove_identity", "--in-place"]) == 0
    assert count_ops(onnx.load(str(cnn)), "Identity") == 0
    assert leftovers(tmp_path) == []


def test_external_data_output(tmp_path):
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)  # above the 1 KiB threshold
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x) => (float[N, 64] y) { a = Identity (x)  y = MatMul (a, w) }
    """, {"w": weight})
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "remove_identity", "--external-data"]) == 0
    data = tmp_path / "opt.onnx.data"
    assert data.stat().st_size == weight.nbytes
    stored = onnx.load(str(out), load_external_data=False)
    assert [t.data_location for t in stored.graph.initializer] == [onnx.TensorProto.EXTERNAL]
    assert_same_outputs(proto, onnx.load(str(out)))
    assert leftovers(tmp_path) == []


def test_real_inputs_for_the_comparison(cnn, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32))
    assert main(["optimize", str(cnn), "-o", str(tmp_path / "o.onnx"), "--passes", "remove_identity",
                 "--inputs", str(data)]) == 0
    assert "5 given samples" in capsys.readouterr().out


def test_invalid_result_is_not_written_and_exits_1(tmp_path, capsys):
    # a custom-domain op onnxruntime has no kernel for: the saved model cannot be validated
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[2] x) => (float[2] y) {
      a = Identity (x)
      y = com.example.Mystery (a)
    }
    """)
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    before = src.read_bytes()
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "remove_identity"]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "nothing was written" in err and "Traceback" not in err
    assert not out.exists()
    assert src.read_bytes() == before
    assert leftovers(tmp_path) == []
    # in place: the input survives a failed validation untouched
    assert main(["optimize", str(src), "-o", str(src), "--passes", "remove_identity", "--in-place"]) == 1
    assert src.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_notes_are_printed(cnn, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "test_only_needs_opset18"]) == 0
    text = capsys.readouterr().out
    assert "note: upgraded the model from opset 17 to opset 18" in text
    assert onnx.load(str(out)).opset_import[0].version == 18
