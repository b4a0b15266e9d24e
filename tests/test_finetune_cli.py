"""``onnxopt finetune`` end to end on a tiny model and a tiny npz (issue 6)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from conftest import parse_model, run_ort, small_cnn  # noqa: E402
from test_finetune_distill import HINT_CNN, hint_models, perturbed, structure  # noqa: E402

from onnxopt.cli.main import main  # noqa: E402
from onnxopt.ir import Model, load_model  # noqa: E402

torch.set_num_threads(1)  # at most 2 (shared machine); one thread avoids thread-sync stalls under load


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    teacher = Model.from_onnx(small_cnn(seed=0))
    student = perturbed(teacher, scale=0.4)
    t_path, s_path = tmp_path / "teacher.onnx", tmp_path / "student.onnx"
    onnx.save_model(teacher.to_onnx(), str(t_path))
    onnx.save_model(student.to_onnx(), str(s_path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 3, 8, 8)).astype(np.float32)
    labels = run_ort(teacher, {"x": x})[0].argmax(axis=1).astype(np.int64)  # the teacher is right by definition
    data = tmp_path / "data.npz"
    np.savez(data, **{"train/x": x[:64], "train/labels": labels[:64], "eval/x": x[64:], "eval/labels": labels[64:]})
    return s_path, t_path, data


def test_finetune_end_to_end(files, tmp_path, capsys):
    s_path, t_path, data = files
    before = (digest(s_path), digest(t_path))
    out = tmp_path / "out.onnx"
    rc = main(["finetune", str(s_path), "--teacher", str(t_path), "--data", f"{data}:train", "--eval", f"{data}:eval",
               "-o", str(out), "--epochs", "6", "--lr", "0.01", "--batch-size", "16", "--json", "-q"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 24 and not report["diverged"]
    assert report["teacher_top1"] == 100.0
    assert report["top1_before"] is not None and report["top1_after"] is not None
    assert report["eval_kl_after"] < 0.5 * report["eval_kl_before"]
    assert report["top1_after"] >= report["top1_before"]
    assert (digest(s_path), digest(t_path)) == before  # inputs never change
    written = load_model(out)
    assert structure(written) == structure(load_model(s_path))
    onnx.checker.check_model(str(out), full_check=True)


def test_human_report(files, tmp_path, capsys):
    s_path, t_path, data = files
    rc = main(["finetune", str(s_path), "--teacher", str(t_path), "--data", f"{data}:train", "--eval", f"{data}:eval",
               "-o", str(tmp_path / "o.onnx"), "--max-steps", "2", "--batch-size", "32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "KL to teacher" in text and "2 steps" in text


def test_hints_with_plan(tmp_path, capsys):
    teacher, student = hint_models(kept=(0, 2, 3))
    t_path, s_path = tmp_path / "t.onnx", tmp_path / "s.onnx"
    onnx.save_model(teacher.to_onnx(), str(t_path))
    onnx.save_model(student.to_onnx(), str(s_path))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"kept_channels": {"h": [0, 2, 3]}}))
    args = ["finetune", str(s_path), "--teacher", str(t_path), "--data", str(data), "-o", str(tmp_path / "o.onnx"),
            "--hint", "h", "--batch-size", "8", "--json", "-q"]
    assert main(args + ["--plan", str(plan)]) == 0
    assert json.loads(capsys.readouterr().out)["hints"] == {"h": 3}
    # without the plan the pruned tensor cannot be compared: a clear error, exit 2
    assert main(args) == 2
    assert "kept channel" in capsys.readouterr().err


def test_nan_exit_code_and_message(files, tmp_path, capsys):
    s_path, t_path, data = files
    out = tmp_path / "o.onnx"
    rc = main(["finetune", str(s_path), "--teacher", str(t_path), "--data", f"{data}:train", "-o", str(out),
               "--lr", "1e30", "--optimizer", "sgd", "--batch-size", "16", "-q"])
    assert rc == 1
    assert "NaN" in capsys.readouterr().err
    assert np.isfinite(run_ort(load_model(out), {"x": np.ones((1, 3, 8, 8), np.float32)})[0]).all()


@pytest.mark.parametrize("change,match", [
    (lambda a, p: a.__setitem__(a.index("--data") + 1, str(p / "missing.npz")), "data not found"),
    (lambda a, p: a.extend(["--plan", str(p / "plan.json")]), "name at least one --hint"),
    (lambda a, p: a.__setitem__(a.index("-o") + 1, a[1]), "input model"),
    (lambda a, p: a.extend(["--optimizer", "rmsprop"]), "unknown optimizer"),
    (lambda a, p: a.extend(["--hint", "nope"]), "not in the student"),
])
def test_bad_input_exits_2(files, tmp_path, capsys, change, match):
    s_path, t_path, data = files
    (tmp_path / "plan.json").write_text(json.dumps({"h": [0]}))
    args = ["finetune", str(s_path), "--teacher", str(t_path), "--data", f"{data}:train", "-o", str(tmp_path / "o.onnx"),
            "--max-steps", "1"]
    change(args, tmp_path)
    assert main(args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_mismatched_teacher_exits_2(files, tmp_path, capsys):
    s_path, _, data = files
    rng = np.random.default_rng(0)
    text = HINT_CNN.replace("float[N, 5] logits", "float[N, 5] scores").replace("logits = Gemm", "scores = Gemm")
    other = parse_model(text, {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                               "b1": np.zeros(4, np.float32), "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
                               "wf": rng.standard_normal((5, 4)).astype(np.float32), "bf": np.zeros(5, np.float32)})
    t_path = tmp_path / "other.onnx"
    onnx.save_model(other, str(t_path))
    assert main(["finetune", str(s_path), "--teacher", str(t_path), "--data", f"{data}:train",
                 "-o", str(tmp_path / "o.onnx")]) == 2
    assert "teacher's outputs (scores)" in capsys.readouterr().err


def test_full_fashion_mnist_by_name_with_augmentation(tmp_path, capsys):
    """--data fashion-mnist reads the Debian package's train split; a few augmented steps move the student."""
    from onnxopt.data.fashion_mnist import load_fashion_mnist
    from conftest import ROOT

    try:
        load_fashion_mnist("test")
    except (FileNotFoundError, ValueError):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    teacher = ROOT / "models" / "resnet.onnx"
    out = tmp_path / "s.onnx"
    rc = main(["finetune", str(teacher), "--teacher", str(teacher), "--data", "fashion-mnist", "--eval",
               f"{ROOT / 'models' / 'fashion_mnist_sample.npz'}:eval", "--max-steps", "2", "--batch-size", "16",
               "--augment", "shift-flip", "--threads", "1", "-o", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 2 and doc["top1_before"] == pytest.approx(93.90, abs=0.01)
    assert doc["top1_after"] > 80  # the teacher as its own student stays close to itself
    assert load_model(out).op_histogram() == load_model(teacher).op_histogram()
