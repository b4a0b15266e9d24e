"""``--importance taylor``: first-order Taylor scores from gradients in the torch executor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import small_cnn

from onnxopt.cli.main import main
from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import DataError
from onnxopt.ir import Model, load_model
from onnxopt.prune.importance import Taylor, make_importance
from onnxopt.prune.structured import analyze, prune_structured

pytest.importorskip("torch")

MODELS = Path(__file__).resolve().parent.parent / "models"


def labelled_npz(tmp_path, n=16, seed=0):
    rng = np.random.default_rng(seed)
    p = tmp_path / "calib.npz"
    np.savez(p, x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32), labels=rng.integers(0, 10, n))
    return p


def taylor_scores(proto, data_path):
    model = Model.from_onnx(proto)
    plan = analyze(model)
    return plan, Taylor(open_dataset(data_path, input_specs(model)), batch_size=4).scores(model, plan)


def test_scores_are_finite_non_negative_per_unit(tmp_path):
    plan, scores = taylor_scores(small_cnn(), labelled_npz(tmp_path))
    assert set(scores) == {g.id for g in plan.prunable()} and scores
    for g in plan.prunable():
        s = scores[g.id]
        assert s.shape == (g.size,) and np.isfinite(s).all() and (s >= 0).all() and s.sum() > 0


def test_zero_channel_scores_zero(tmp_path):
    proto = small_cnn()
    inits = {i.name: onnx.numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
    for name in ("w1", "b1", "bn_scale", "bn_bias", "w2", "b2"):  # channel 2 produces exactly zero everywhere
        inits[name][2] = 0
    for i in proto.graph.initializer:
        i.CopyFrom(onnx.numpy_helper.from_array(inits[i.name], i.name))
    plan, scores = taylor_scores(proto, labelled_npz(tmp_path))
    (group,) = plan.prunable()
    assert scores[group.id][2] == 0 and (np.delete(scores[group.id], 2) > 0).all()


def test_unlabelled_data_uses_the_predicted_logit(tmp_path):
    p = tmp_path / "nolabels.npz"
    np.savez(p, x=np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32))
    _, scores = taylor_scores(small_cnn(), p)
    assert all(np.isfinite(s).all() and s.sum() > 0 for s in scores.values())


def test_needs_calibration_data():
    with pytest.raises(DataError, match="calibration"):
        make_importance("taylor")


def test_cli_taylor_half_gives_a_valid_model(tmp_path, capsys):
    src, out = tmp_path / "cnn.onnx", tmp_path / "out.onnx"
    onnx.save(small_cnn(), str(src))
    rc = main(["prune", str(src), "-o", str(out), "--structured", "--ratio", "0.5", "--importance", "taylor",
               "--calib", str(labelled_npz(tmp_path))])
    assert rc == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})[0]
    assert y.shape == (2, 10) and np.isfinite(y).all()
    w1 = next(i for i in onnx.load(str(out)).graph.initializer if i.name == "w1")
    assert w1.dims[0] == 2  # half of the 4 channels removed


def test_cli_taylor_without_calib_is_one_line_error(tmp_path, capsys):
    src, out = tmp_path / "cnn.onnx", tmp_path / "out.onnx"
    onnx.save(small_cnn(), str(src))
    rc = main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--importance", "taylor"])
    err = capsys.readouterr().err
    assert rc == 2 and "--calib" in err and not out.exists()


def test_taylor_beats_random_on_resnet(tmp_path):
    model = load_model(MODELS / "resnet.onnx")
    data = np.load(MODELS / "fashion_mnist_sample.npz")
    calib = tmp_path / "calib64.npz"
    np.savez(calib, input=data["calib/input"][:64])
    x, y = data["eval/input"][:500], data["eval/labels"][:500]

    def top1(m):
        sess = ort.InferenceSession(m.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
        return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())

    taylor = top1(prune_structured(model, ratio=0.3, importance="taylor",
                                   dataset=open_dataset(calib, input_specs(model))).model)
    randoms = [top1(prune_structured(model, ratio=0.3, importance="random", seed=s).model) for s in (0, 1)]
    assert taylor > np.mean(randoms) + 0.1, (taylor, randoms)
