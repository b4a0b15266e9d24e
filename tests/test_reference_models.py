"""The bundled reference models: files match models/README's hashes, `eval` reproduces the recorded
accuracies on the sample eval split (and on the full test set when the Debian dataset is installed),
and the cleanup pipeline keeps every prediction."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from onnxopt.cli.main import main

MODELS = Path(__file__).resolve().parents[1] / "models"
REFERENCE = json.loads((MODELS / "reference.json").read_text())
FILES = REFERENCE["files"]
SAMPLE = MODELS / "fashion_mnist_sample.npz"


def test_sample_data_layout():
    with np.load(SAMPLE, allow_pickle=False) as z:
        assert z["calib/input"].shape == (512, 1, 28, 28) and z["calib/input"].dtype == np.float32
        assert z["eval/input"].shape == (2000, 1, 28, 28)
        assert z["eval/labels"].shape == (2000,) and z["eval/labels"].dtype == np.int64
        assert np.bincount(z["eval/labels"], minlength=10).min() > 150  # every class present


@pytest.mark.parametrize("entry", FILES, ids=[f["file"] for f in FILES])
def test_sha256_matches_record(entry):
    assert hashlib.sha256((MODELS / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("entry", FILES, ids=[f["file"] for f in FILES])
def test_eval_reproduces_recorded_accuracy(entry, capsys):
    assert main(["eval", str(MODELS / entry["file"]), "--data", f"{SAMPLE}:eval", "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["samples"] == 2000
    assert res["top1"] == pytest.approx(entry["top1_eval_2000"], abs=0.051)


@pytest.mark.parametrize("entry", FILES, ids=[f["file"] for f in FILES])
def test_optimize_keeps_predictions(entry, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(MODELS / entry["file"]), "-o", str(out), "--quiet"]) == 0
    assert main(["check", str(out), "--reference", str(MODELS / entry["file"]), "--inputs", f"{SAMPLE}:eval",
                 "--rtol", "1e-4", "--atol", "1e-4"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["op_histogram"]
    assert "BatchNormalization" not in ops and "Identity" not in ops


def test_full_test_set_shortcut(capsys):
    from onnxopt.data import fashion_mnist

    if not Path(fashion_mnist.default_root()).is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    entry = next(f for f in FILES if f["file"] == "resnet.onnx")
    assert main(["eval", str(MODELS / "resnet.onnx"), "--dataset", "fashion-mnist", "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["samples"] == 10000
    assert res["top1"] == pytest.approx(entry["top1_test_10k"], abs=0.011)
