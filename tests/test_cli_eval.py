"""`onnxopt eval`: accuracy on labelled data, JSON output, bad input."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import parse_model
from onnxopt.cli.main import main

# logits = x * 2: the predicted class is the argmax of the input row
PASS_THROUGH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 10] x) => (float[N, 10] logits) {
  two = Constant <value = float {2.0}> ()
  logits = Mul(x, two)
}
"""


@pytest.fixture
def model_and_data(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save_model(parse_model(PASS_THROUGH), str(model))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10)).astype(np.float32)
    labels = x.argmax(axis=1)
    labels[:60] = (labels[:60] + 1) % 10  # 60 of 200 wrong -> top-1 exactly 70%
    data = tmp_path / "d.npz"
    np.savez(data, **{"eval/x": x, "eval/labels": labels})
    return model, data, x, labels


def test_eval_top1_top5_json(model_and_data, capsys):
    model, data, x, labels = model_and_data
    rc = main(["eval", str(model), "--data", f"{data}:eval", "--batch-size", "32", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    (res,) = doc["results"]
    assert res["samples"] == 200
    assert res["top1"] == pytest.approx(70.0)
    top5 = np.argsort(-x, axis=1)[:, :5]
    assert res["top5"] == pytest.approx(100.0 * (top5 == labels[:, None]).any(axis=1).mean())
    assert res["latency_ms_median"] > 0 and res["throughput"] > 0


def test_eval_limit_and_text_output(model_and_data, capsys):
    model, data, _, _ = model_and_data
    assert main(["eval", str(model), "--data", f"{data}:eval", "--limit", "60", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "60 samples" in out and "top-1 0.00%" in out  # the first 60 are all wrong


def test_eval_without_labels_reports_latency_only(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save_model(parse_model(PASS_THROUGH), str(model))
    np.save(tmp_path / "x.npy", np.ones((8, 10), np.float32))
    assert main(["eval", str(model), "--data", str(tmp_path / "x.npy"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["top1"] is None and res["samples"] == 8


def test_eval_bad_split_and_missing_data(model_and_data, capsys):
    model, data, _, _ = model_and_data
    assert main(["eval", str(model), "--data", f"{data}:calib"]) == 2
    assert "no split 'calib'" in capsys.readouterr().err
    assert main(["eval", str(model), "--data", str(Path(data).parent / "nope.npz")]) == 2
    assert "data not found" in capsys.readouterr().err
    assert main(["eval", str(model)]) == 2
    assert "exactly one of --data or --dataset" in capsys.readouterr().err


def test_eval_wrong_label_shape(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save_model(parse_model(PASS_THROUGH), str(model))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 10), np.float32), labels=np.ones((4, 2), np.int64))
    assert main(["eval", str(model), "--data", str(tmp_path / "d.npz")]) == 2
    assert "'labels' must be a 1-D integer array" in capsys.readouterr().err
