"""``optimize --recipe`` with data steps: prune -> distill -> quantize -> check -> report, end to end.

Tiny graphs (conftest's ``small_cnn``) with tiny npz data whose eval labels are
the input model's own predictions, so the input scores 100% and any changed
prediction is an accuracy drop.
"""

import json
import math

import numpy as np
import onnx
import pytest

from conftest import count_ops, run_ort, small_cnn
from onnxopt.cli.main import main


@pytest.fixture
def setup(tmp_path):
    """The input model and an npz with calib/train/eval splits, in tmp_path."""
    proto = small_cnn()
    model = tmp_path / "cnn.onnx"
    onnx.save(proto, str(model))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 3, 8, 8)).astype(np.float32)
    labels = run_ort(proto, {"x": x})[0].argmax(axis=1).astype(np.int64)
    np.savez(tmp_path / "data.npz", **{"calib/x": x[:32], "train/x": x[32:64], "eval/x": x[64:],
                                       "eval/labels": labels[64:]})
    return model


def write_recipe(folder, steps: str, data: str = "{calib: ../data.npz:calib, train: ../data.npz:train, "
                                                 "eval: ../data.npz:eval}"):
    """A recipe in a sub-folder, naming the data relative to itself."""
    (folder / "recipes").mkdir(exist_ok=True)
    path = folder / "recipes" / "r.yaml"
    path.write_text(f"name: tiny\ndata: {data}\nsteps:\n{steps}")
    return path


FULL = """  - cleanup
  - prune: {ratio: 0.5}
  - distill: {epochs: 1, batch_size: 16}
  - quantize
  - check: {max_drop: 100}
  - report: {runs: 2, warmup: 0, keep_stages: true}
"""


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_prune_distill_quantize_check_report_end_to_end(setup, tmp_path, capsys):
    pytest.importorskip("torch", reason="the distill step needs torch (the finetune extra)")
    before = setup.read_bytes()
    out = tmp_path / "out" / "cnn.opt.onnx"
    out.parent.mkdir()
    assert main(["optimize", str(setup), "-o", str(out), "--recipe", str(write_recipe(tmp_path, FULL))]) == 0
    text = capsys.readouterr().out
    assert setup.read_bytes() == before

    # a valid INT8 model
    result = onnx.load(str(out))
    onnx.checker.check_model(result, full_check=True)
    assert count_ops(result, "QuantizeLinear") > 0 and count_ops(result, "BatchNormalization") == 0
    logits = run_ort(result, {"x": np.zeros((3, 3, 8, 8), np.float32)})[0]
    assert logits.shape == (3, 10) and np.isfinite(logits).all()

    # the per-pass table shows each step's stats
    rows = {}
    for line in text.splitlines():  # the per-pass table comes first, the stage table (same names) later
        if line.startswith("  "):
            rows.setdefault(line.split()[0], line)
    assert "units_removed=2" in rows["prune"] and "steps=2" in rows["distill"]
    assert "quantized_nodes=" in rows["quantize"] and "top1_input=100" in rows["check"]

    report = json.loads((tmp_path / "out" / "cnn.opt.report.json").read_text())
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["input", "cleanup", "prune", "distill", "quantize"]
    for s in stages:
        assert all(finite(s[k]) for k in ("top1", "macs", "params", "file_bytes", "top1_drop")), s
        assert [lat["batch"] for lat in s["latency"]] == [1, 64]
        assert all(finite(lat["median_ms"]) and lat["median_ms"] > 0 for lat in s["latency"])
    assert stages[0]["top1"] == 100.0 and stages[1]["top1"] == 100.0  # cleanup is lossless
    assert stages[2]["macs"] < stages[1]["macs"] and stages[2]["params"] < stages[1]["params"]
    assert stages[-1]["file_bytes"] == out.stat().st_size  # the last stage is what was written

    # the distill stage trained the pruned weights: same shapes, other values
    pruned, distilled = (onnx.load(s["path"]) for s in stages[2:4])
    w_pruned = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    w_distilled = {i.name: onnx.numpy_helper.to_array(i) for i in distilled.graph.initializer}
    assert {k: v.shape for k, v in w_pruned.items()} == {k: v.shape for k, v in w_distilled.items()}
    assert any(not np.array_equal(w_pruned[k], w_distilled[k]) for k in w_pruned)

    png = (tmp_path / "out" / "cnn.opt.report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    md = (tmp_path / "out" / "cnn.opt.report.md").read_text()
    assert "| quantize |" in md and "cnn.opt.report.png" in md


def test_check_over_its_accuracy_budget_exits_1_and_writes_only_the_report(setup, tmp_path, capsys):
    steps = "  - prune: {ratio: 0.5}\n  - check: {max_drop: 0}\n  - report: {runs: 1, warmup: 0}\n"
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(setup), "-o", str(out), "--recipe", str(write_recipe(tmp_path, steps))]) == 1
    err = capsys.readouterr().err
    assert "max_drop 0" in err and "top-1 dropped" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["failures"] and report["stages"][-1]["top1_drop"] > 0


def test_check_within_budget_passes(setup, tmp_path):
    steps = "  - cleanup\n  - check: {max_drop: 0}\n"  # cleanup is lossless: no drop at all
    assert main(["optimize", str(setup), "-o", str(tmp_path / "o.onnx"),
                 "--recipe", str(write_recipe(tmp_path, steps))]) == 0


def test_builtin_recipe_by_name_with_data_flags(setup, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    data = tmp_path / "data.npz"
    assert main(["optimize", str(setup), "-o", str(out), "--recipe", "cpu-int8",
                 "--calib", f"{data}:calib", "--eval", f"{data}:eval", "--report", str(tmp_path / "r.json")]) == 0
    assert count_ops(onnx.load(str(out)), "QuantizeLinear") > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "cpu-int8"
    assert [s["stage"] for s in report["stages"]] == ["input", "cleanup", "quantize"]
    assert (tmp_path / "r.png").exists() and (tmp_path / "r.md").exists()
    assert "Pipeline cpu-int8" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--recipe", "cpu-int8"], "step 'quantize' needs calibration data: pass --calib DATA or set data.calib"),
    (["--recipe", "cpu-int8", "--calib", "DATA"], "step 'check' needs labelled eval data: pass --eval DATA"),
    (["--recipe", "cpu-prune50-int8", "--calib", "DATA", "--eval", "DATA"],
     "step 'distill' needs training data: pass --train-data DATA or set data.train"),
    (["--passes", "remove_identity", "--report", "r.json"], "step 'report' needs labelled eval data"),
])
def test_missing_data_is_a_one_line_error_naming_step_and_flag(setup, tmp_path, capsys, args, message):
    args = [a.replace("DATA", str(tmp_path / "data.npz:calib")) for a in args]
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(setup), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_flags_override_the_recipe_data(setup, tmp_path):
    recipe = write_recipe(tmp_path, "  - quantize\n", data="{calib: ../missing.npz}")
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(setup), "-o", str(out), "--recipe", str(recipe)]) == 2  # the recipe's file
    assert main(["optimize", str(setup), "-o", str(out), "--recipe", str(recipe),
                 "--calib", f"{tmp_path / 'data.npz'}:calib"]) == 0
    assert count_ops(onnx.load(str(out)), "QuantizeLinear") > 0


def test_a_bad_data_source_names_where_it_came_from(setup, tmp_path, capsys):
    recipe = write_recipe(tmp_path, "  - quantize\n", data="{calib: ../data.npz:nosuchsplit}")
    assert main(["optimize", str(setup), "-o", str(tmp_path / "o.onnx"), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data.calib in" in err and "no split 'nosuchsplit'" in err


def test_report_flag_adds_a_report_to_the_default_cleanup(setup, tmp_path):
    report = tmp_path / "rep" / "cleanup.json"
    assert main(["optimize", str(setup), "-o", str(tmp_path / "o.onnx"), "--report", str(report),
                 "--eval", f"{tmp_path / 'data.npz'}:eval", "--quiet"]) == 0
    doc = json.loads(report.read_text())
    assert doc["pipeline"] == "cleanup" and [s["stage"] for s in doc["stages"]] == ["input", "cleanup"]
    assert doc["stages"][1]["top1_drop"] == 0.0 and doc["stages"][1]["nodes"] < doc["stages"][0]["nodes"]
