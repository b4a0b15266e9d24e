"""Accuracy budgets: the most sensitive nodes left float until --max-drop / --min-sqnr is met, and the CLI."""

import json

import numpy as np
import onnx
import pytest

from conftest import run_ort
from onnxopt.cli.main import main
from onnxopt.errors import DataError
from onnxopt.quantize import QuantizeConfig, quantize
from onnxopt.quantize.config import host_has_vnni
from onnxopt.quantize.quality import sqnr_db
from onnxopt.quantize.sensitivity import SensitivityResult
from test_quantize_cli import expect_error
from test_quantize_sensitivity import PER_TENSOR, middle_gemm, mlp_data, outlier_mlp


def top1(model, data) -> float:
    arrays = data.arrays()
    return 100.0 * float(np.mean(run_ort(model, {"x": arrays["x"]}, optimize=True)[0].argmax(axis=1)
                                 == arrays["labels"]))


@pytest.fixture(scope="module")
def mlp():
    model = outlier_mlp()
    return model, mlp_data(model, 64, 1), mlp_data(model, 200, 4, labelled=True)


def test_max_drop_leaves_the_culprit_float_and_meets_the_budget(mlp):
    model, calib, eval_data = mlp
    result = quantize(model, calib, QuantizeConfig(**PER_TENSOR, max_drop=5.0), eval_data=eval_data)
    fb = result.report.fallback
    bad = middle_gemm(result)
    assert fb.float_top1 == pytest.approx(100.0) and 100.0 - fb.before.top1 > 5  # the budget was missed at first
    assert fb.met and fb.left_float == [bad] and [s.name for s in fb.steps] == [bad]
    reason = next(f["reason"] for f in result.report.float_nodes if f["name"] == bad)
    assert reason.startswith("left float by --max-drop: top-1 +") and reason.endswith("(sensitivity rank 1)")
    assert result.keep_float[bad] == reason
    # measured again, independently: the budget holds, and the culprit really runs float in onnxruntime
    assert 100.0 - top1(result.model, eval_data) <= 5.0
    assert top1(result.model, eval_data) == pytest.approx(fb.after.top1)
    assert result.report.fusion.integer_count == 2 and len(result.report.fusion.float_compute) == 1
    assert bad not in {n["name"] for n in result.report.quantized_nodes}
    assert any(n.startswith("accuracy budget: ") and bad in n for n in result.report.notes)
    assert result.sensitivity is not None and result.sensitivity.ranked(True)[0].name == bad


def test_min_sqnr_needs_no_labels(mlp):
    model, calib, _ = mlp
    result = quantize(model, calib, QuantizeConfig(**PER_TENSOR, min_sqnr=25.0))
    fb = result.report.fallback
    bad = middle_gemm(result)
    assert fb.met and fb.left_float == [bad] and fb.before.sqnr_db < 25 and fb.float_top1 is None
    assert next(f["reason"] for f in result.report.float_nodes if f["name"] == bad).startswith(
        "left float by --min-sqnr: output SQNR +")
    x = calib.arrays()["x"]
    assert sqnr_db(run_ort(model, {"x": x})[0], run_ort(result.model, {"x": x}, optimize=True)[0]) >= 25.0


def test_a_met_budget_changes_nothing(mlp):
    model, calib, eval_data = mlp
    plain = quantize(model, calib, QuantizeConfig(**PER_TENSOR))
    result = quantize(model, calib, QuantizeConfig(**PER_TENSOR, max_drop=60.0), eval_data=eval_data)
    assert result.report.fallback.met and not result.report.fallback.steps and result.sensitivity is None
    assert result.model.to_onnx().SerializeToString() == plain.model.to_onnx().SerializeToString()


def test_an_impossible_budget_is_reported_not_met(mlp):
    model, calib, _ = mlp
    result = quantize(model, calib, QuantizeConfig(**PER_TENSOR, min_sqnr=200.0))
    fb = result.report.fallback
    assert not fb.met and "not met" in fb.message
    assert len(fb.steps) <= 2  # one of the three Gemms at least stays quantized
    assert result.plan.compute_nodes()  # still an INT8 model: the most accurate one tried
    assert fb.after.sqnr_db == max([fb.before.sqnr_db] + [s.after.sqnr_db for s in fb.steps])
    assert any("NOT met" in n for n in result.report.notes)


def test_max_drop_needs_labelled_eval_data(mlp):
    model, calib, _ = mlp
    with pytest.raises(DataError, match="labelled eval data"):
        quantize(model, calib, QuantizeConfig(**PER_TENSOR, max_drop=1.0))
    with pytest.raises(DataError, match="needs labels"):
        quantize(model, calib, QuantizeConfig(**PER_TENSOR, max_drop=1.0), eval_data=calib)


@pytest.mark.skipif(host_has_vnni(), reason="the A/B runs only on CPUs without VNNI")
def test_reduce_range_ab_keeps_the_more_accurate(mlp):
    model, calib, eval_data = mlp
    result = quantize(model, calib, QuantizeConfig(weights="per-tensor", max_drop=100.0), eval_data=eval_data)
    choice = result.report.fallback.reduce_range
    assert choice is not None and result.config.reduce_range is choice.reduce_range
    assert choice.reduce_range is not (choice.full.top1 > choice.reduced.top1)
    assert top1(result.model, eval_data) == pytest.approx(max(choice.full.top1, choice.reduced.top1))
    assert any(n.startswith("reduce_range A/B") for n in result.report.notes)
    explicit = quantize(model, calib, QuantizeConfig(weights="per-tensor", reduce_range=True, max_drop=100.0),
                        eval_data=eval_data)
    assert explicit.report.fallback.reduce_range is None  # an explicit choice is not second-guessed


# -- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def cli_files(tmp_path, mlp):
    model, calib, eval_data = mlp
    path = tmp_path / "mlp.onnx"
    onnx.save(model.to_onnx(), str(path))
    data = tmp_path / "data.npz"
    e = eval_data.arrays()
    np.savez(data, **{"calib/x": calib.arrays()["x"], "eval/x": e["x"], "eval/labels": e["labels"],
                      "nolabels/x": e["x"]})
    return path, data, tmp_path


def test_cli_max_drop_without_eval_is_a_one_line_error(cli_files, capsys):
    model, data, tmp = cli_files
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", f"{data}:calib", "--max-drop", "1"],
                 capsys, "--max-drop needs labelled eval data", tmp / "q.onnx")
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", f"{data}:calib", "--max-drop", "1",
                  "--eval", f"{data}:nolabels"], capsys, "needs labels in the eval data", tmp / "q.onnx")
    expect_error(["quantize", str(model), "-o", str(tmp / "q.onnx"), "--calib", f"{data}:calib", "--report",
                  str(tmp / "r.md")], capsys, "give the JSON file name", tmp / "q.onnx")


def test_cli_report_markdown_names_the_float_nodes(cli_files, capsys):
    model, data, tmp = cli_files
    out, report, sens = tmp / "q.onnx", tmp / "r.json", tmp / "s.json"
    rc = main(["quantize", str(model), "-o", str(out), "--calib", f"{data}:calib", "--eval", f"{data}:eval",
               "--weights", "per-tensor", "--reduce-range", "--min-sqnr", "25", "--report", str(report),
               "--sensitivity", str(sens)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "accuracy budget" in text and "left float: Gemm_2" in text and "most sensitive nodes" in text
    doc = json.loads(report.read_text())
    assert doc["report"]["fallback"]["left_float"] == ["Gemm_2"] and doc["report"]["fallback"]["met"]
    assert doc["accuracy"]["fp32_top1"] == pytest.approx(100.0) and doc["accuracy"]["samples"] == 200
    assert [r["batch"] for r in doc["latency"]] == [1, 64] and all(r["int8_ms"] > 0 for r in doc["latency"])
    md = (tmp / "r.md").read_text()
    assert "## Nodes left float" in md and "`Gemm_2`" in md and "left float by --min-sqnr" in md
    assert "## Per-node sensitivity" in md and "## Latency" in md and "## Accuracy" in md
    loaded = SensitivityResult.load(sens)
    assert len(loaded.nodes) == 3 and loaded.quantized_top1 is not None  # measured on the labelled --eval data
    onnx.checker.check_model(str(out), full_check=True)


def test_cli_unmet_budget_exits_1_and_still_writes_the_model(cli_files, capsys):
    model, data, tmp = cli_files
    out = tmp / "q.onnx"
    rc = main(["quantize", str(model), "-o", str(out), "--calib", f"{data}:calib", "--weights", "per-tensor",
               "--reduce-range", "--min-sqnr", "200", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "not met" in err and str(out) in err
    assert out.exists()


# -- pipeline step -----------------------------------------------------------------------------------
def test_pipeline_quantize_step_meets_max_drop_on_the_eval_role(cli_files, mlp, capsys):
    model, data, tmp = cli_files
    (tmp / "recipes").mkdir()
    recipe = tmp / "recipes" / "r.yaml"
    recipe.write_text("name: budget\ndata: {calib: ../data.npz:calib, eval: ../data.npz:eval}\nsteps:\n"
                      "  - quantize: {weights: per-tensor, reduce_range: true, max_drop: 5}\n")
    out = tmp / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--recipe", str(recipe), "-q"]) == 0
    assert 100.0 - top1(onnx.load(str(out)), mlp[2]) <= 5.0
    # without eval data the step refuses before any work, naming the flag
    recipe.write_text("name: budget\ndata: {calib: ../data.npz:calib}\nsteps:\n  - quantize: {max_drop: 5}\n")
    assert main(["optimize", str(model), "-o", str(tmp / "o2.onnx"), "--recipe", str(recipe)]) == 2
    assert "needs labelled eval data: pass --eval DATA" in capsys.readouterr().err
    assert not (tmp / "o2.onnx").exists()
