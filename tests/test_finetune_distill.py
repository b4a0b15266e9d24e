"""Distillation, masks, write-back, BatchNorm re-estimation, callbacks and NaN handling (issue 6)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from conftest import parse_model, run_ort, small_cnn  # noqa: E402

from onnxopt.errors import DataError, OnnxoptError  # noqa: E402
from onnxopt.finetune import (  # noqa: E402
    Checkpoint,
    EarlyStopping,
    GraphExecutor,
    ZeroMasks,
    finetune,
    reestimate_bn,
    write_back,
)
from onnxopt.ir import Model, load_model  # noqa: E402

torch.set_num_threads(1)  # at most 2 (shared machine); one thread avoids thread-sync stalls under load


def perturbed(model: Model, scale: float = 0.3, seed: int = 1) -> Model:
    """A copy of ``model`` with noise added to every float initializer (a student that drifted from its teacher)."""
    out = model.copy()
    rng = np.random.default_rng(seed)
    for name, c in out.initializers().items():
        v = c.values
        if v.dtype.kind == "f" and not name.startswith("bn_var"):
            c.values = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
    return out


def batches(n: int = 4, batch: int = 16, seed: int = 0, labels: bool = False, shape=(3, 8, 8), name: str = "x"):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = {name: rng.standard_normal((batch,) + shape).astype(np.float32)}
        if labels:
            b["labels"] = rng.integers(0, 10, batch).astype(np.int64)
        out.append(b)
    return out


@pytest.fixture(scope="module")
def teacher() -> Model:
    return Model.from_onnx(small_cnn(seed=0))


def structure(model: Model):
    proto = model.to_onnx()
    nodes = [(n.op_type, n.name, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
             for n in proto.graph.node]
    inits = [(t.name, t.data_type, list(t.dims)) for t in proto.graph.initializer]
    return nodes, inits, [o.name for o in proto.graph.output]


def initializer_arrays(model: Model) -> dict[str, np.ndarray]:
    return {n: np.array(c.values) for n, c in model.initializers().items()}


# -- distillation -------------------------------------------------------------------------------------------


def test_student_gets_closer_to_teacher(teacher):
    student = perturbed(teacher)
    before = initializer_arrays(student)
    result = finetune(student, teacher, batches(4), eval_data=batches(2, seed=9), epochs=8, lr=0.01, batch_size=16,
                      progress=False)
    assert not result.diverged and result.steps == 32
    assert result.eval_after["eval_kl"] < 0.5 * result.eval_before["eval_kl"]
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4])
    # the student given to finetune is untouched; the result is a new model
    assert all(np.array_equal(v, student.initializers()[k].values) for k, v in before.items())
    assert structure(result.model) == structure(student)


def test_labels_add_cross_entropy(teacher):
    student = perturbed(teacher)
    seen = []

    class Record:
        def on_step_end(self, step, losses):
            seen.append(losses)

    finetune(student, teacher, batches(2, labels=True), epochs=1, lr=1e-3, batch_size=16, callbacks=[Record()],
             alpha=0.5, progress=False)
    assert {"loss", "kd", "ce"} <= set(seen[0])
    assert seen[0]["loss"] == pytest.approx(seen[0]["kd"] + 0.5 * seen[0]["ce"], rel=1e-5)


def test_torch_teacher_matches_onnxruntime_teacher(teacher):
    student = perturbed(teacher)
    kw = dict(epochs=1, lr=1e-3, batch_size=16, progress=False)
    a = finetune(student, teacher, batches(2), teacher_runtime="onnxruntime", **kw)
    b = finetune(student, teacher, batches(2), teacher_runtime="torch", **kw)
    assert a.losses == pytest.approx(b.losses, rel=1e-4)


def test_custom_loss_extends_default(teacher):
    student = perturbed(teacher)
    calls = []

    def loss(s_out, t_out, batch, default):
        calls.append(set(batch))
        return default + 0.0 * s_out["logits"].sum() + 1.0

    r = finetune(student, teacher, batches(2), epochs=1, lr=1e-3, batch_size=16, loss=loss, progress=False)
    plain = finetune(student, teacher, batches(2), epochs=1, lr=1e-3, batch_size=16, progress=False)
    assert calls and "x" in calls[0]
    assert r.losses[0] == pytest.approx(plain.losses[0] + 1.0, rel=1e-5)


# -- feature hints ------------------------------------------------------------------------------------------

HINT_CNN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 5] logits) {
  c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
  h = Relu (c1)
  c2 = Conv <pads = [1, 1, 1, 1]> (h, w2)
  r2 = Relu (c2)
  p = GlobalAveragePool (r2)
  f = Flatten (p)
  logits = Gemm <transB = 1> (f, wf, bf)
}
"""


def hint_models(kept=(0, 2, 3)):
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    w2 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    wf, bf = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    teacher = Model.from_onnx(parse_model(HINT_CNN, {"w1": w1, "b1": b1, "w2": w2, "wf": wf, "bf": bf}))
    k = list(kept)
    noise = 0.3 * rng.standard_normal((len(k), 3, 3, 3)).astype(np.float32)
    student = Model.from_onnx(parse_model(HINT_CNN, {"w1": w1[k] + noise, "b1": b1[k], "w2": w2[:, k], "wf": wf, "bf": bf}))
    return teacher, student


def test_hint_on_pruned_tensor_uses_kept_channels():
    teacher, student = hint_models()
    seen = []

    class Record:
        def on_step_end(self, step, losses):
            seen.append(losses["hint"])

    r = finetune(student, teacher, batches(4), epochs=5, lr=0.01, batch_size=16, hints={"h": [0, 2, 3]},
                 callbacks=[Record()], progress=False)
    assert not r.diverged
    assert np.mean(seen[-4:]) < 0.7 * np.mean(seen[:4])


def test_hint_shape_mismatch_without_kept_channels_is_clear():
    teacher, student = hint_models()
    with pytest.raises(OnnxoptError, match="hint tensor 'h'.*kept channel"):
        finetune(student, teacher, batches(1), epochs=1, lr=0.01, batch_size=16, hints=["h"], progress=False)
    with pytest.raises(OnnxoptError, match="not in the student"):
        finetune(student, teacher, batches(1), epochs=1, lr=0.01, batch_size=16, hints=["nope"], progress=False)


# -- masks, write-back, BatchNorm ---------------------------------------------------------------------------


def test_zeros_stay_zero(teacher):
    student = perturbed(teacher)
    w2 = student.initializers()["w2"]
    values = w2.values.copy()
    values[:, ::2] = 0.0  # half the input channels pruned (unstructured zeros)
    w2.values = values
    zeros = values == 0
    r = finetune(student, teacher, batches(2), epochs=2, lr=0.05, batch_size=16, optimizer="adamw", progress=False)
    after = r.model.initializers()["w2"].values
    assert r.masked_zeros >= int(zeros.sum())
    assert np.all(after[zeros] == 0)
    assert np.abs(after[~zeros] - values[~zeros]).max() > 1e-3  # the others did train


def test_write_back_keeps_structure_and_runs_in_onnxruntime(teacher):
    student = perturbed(teacher)
    ex = GraphExecutor(student)
    with torch.no_grad():
        for p in ex.parameters():
            p.mul_(1.1)
    out = write_back(ex)
    assert structure(out) == structure(student)
    onnx.checker.check_model(out.to_onnx(), full_check=True)
    feeds = batches(1, batch=3)[0]
    ref = run_ort(out, feeds)[0]
    with torch.no_grad():
        got = ex(**feeds)["logits"].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(run_ort(student, feeds)[0], ref)


def _qdq_student(tmp_path, teacher):
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b["x"]} for b in batches(2, batch=4)])

        def get_next(self):
            return next(self.it, None)

    src = tmp_path / "float.onnx"
    onnx.save_model(perturbed(teacher).to_onnx(), str(src))
    dst = tmp_path / "qdq.onnx"
    quantization.quantize_static(str(src), str(dst), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, weight_type=quantization.QuantType.QInt8)
    return load_model(dst)


def test_qdq_write_back_requantizes_into_int8_with_same_scales(tmp_path, teacher):
    student = _qdq_student(tmp_path, teacher)
    before = initializer_arrays(student)
    r = finetune(student, teacher, batches(4), epochs=3, lr=0.01, batch_size=16, progress=False)
    after = initializer_arrays(r.model)
    assert structure(r.model) == structure(student)
    int_weights = [n for n, v in before.items() if v.dtype in (np.int8, np.int32) and v.ndim >= 1 and v.size > 1]
    assert int_weights
    changed = [n for n in int_weights if not np.array_equal(before[n], after[n])]
    assert changed, "training should move some integer weights"
    for n in int_weights:
        assert after[n].dtype == before[n].dtype and after[n].shape == before[n].shape
    for n, v in before.items():
        if v.dtype.kind == "f":  # scales (and anything float) are unchanged: only integers were re-quantized
            assert np.array_equal(v, after[n]), n
    # onnxruntime on the written-back model agrees with the trained executor
    ex = GraphExecutor(r.model)
    feeds = batches(1, batch=3, seed=5)[0]
    with torch.no_grad():
        got = ex(**feeds)["logits"].numpy()
    ref = run_ort(r.model, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_reestimate_batchnorm_statistics(teacher):
    student = teacher.copy()
    inits = student.initializers()
    inits["bn_mean"].values = np.full(4, 5.0, np.float32)  # badly wrong statistics
    inits["bn_var"].values = np.full(4, 9.0, np.float32)
    ex = GraphExecutor(student)
    data = batches(4, batch=16)
    report = reestimate_bn(ex, data, batches=4, batch_size=16)
    assert report.updated and report.batches == 4
    # the true statistics of the conv output over the same data
    with torch.no_grad():
        c1 = torch.cat([ex(**b, extra_outputs=["c1"])["c1"] for b in data])
    mean = c1.mean(dim=(0, 2, 3)).numpy()
    out = write_back(ex)
    np.testing.assert_allclose(out.initializers()["bn_mean"].values, mean, rtol=1e-4, atol=1e-4)
    assert structure(out) == structure(student)


# -- callbacks ----------------------------------------------------------------------------------------------


def test_callbacks_fire_in_order(teacher):
    events = []

    class Record:
        def on_train_start(self, trainer):
            events.append("train_start")

        def on_epoch_start(self, epoch):
            events.append(f"epoch_start {epoch}")

        def on_step_end(self, step, losses):
            events.append(f"step {step}")

        def on_eval(self, metrics):
            events.append(f"eval {metrics['epoch']}")

        def on_epoch_end(self, epoch, metrics):
            events.append(f"epoch_end {epoch}")

    finetune(perturbed(teacher), teacher, batches(2), eval_data=batches(1), epochs=2, lr=1e-3, batch_size=16,
             callbacks=[Record()], progress=False)
    assert events == ["train_start", "epoch_start 1", "step 1", "step 2", "eval 1", "epoch_end 1",
                      "epoch_start 2", "step 3", "step 4", "eval 2", "epoch_end 2"]


def test_callback_returning_true_stops(teacher):
    class StopAt3:
        def on_step_end(self, step, losses):
            return step == 3

    r = finetune(perturbed(teacher), teacher, batches(4), epochs=5, lr=1e-3, batch_size=16, callbacks=[StopAt3()],
                 progress=False)
    assert r.steps == 3 and r.stopped_early and "StopAt3" in r.stop_reason


def test_early_stopping(teacher):
    stop = EarlyStopping("eval_loss", patience=1, min_delta=1e9)  # nothing counts as an improvement after epoch 1
    r = finetune(perturbed(teacher), teacher, batches(2), eval_data=batches(1), epochs=6, lr=1e-3, batch_size=16,
                 callbacks=[stop], progress=False)
    assert r.epochs == 2 and r.steps == 4 and r.stopped_early and stop.stopped_epoch == 2
    with pytest.raises(OnnxoptError, match="monitors 'eval_top1'"):
        finetune(perturbed(teacher), teacher, batches(1), epochs=1, lr=1e-3, batch_size=16,
                 callbacks=[EarlyStopping("eval_top1")], progress=False)


def test_checkpoint_saves_loadable_models(tmp_path, teacher):
    ckpt = Checkpoint(tmp_path / "ckpt-{epoch}.onnx")
    best = Checkpoint(tmp_path / "best.onnx", monitor="eval_kl")
    finetune(perturbed(teacher), teacher, batches(2), eval_data=batches(1), epochs=3, lr=0.01, batch_size=16,
             callbacks=[ckpt, best], progress=False)
    assert [p.name for p in ckpt.saved] == ["ckpt-1.onnx", "ckpt-2.onnx", "ckpt-3.onnx"]
    assert best.saved and (tmp_path / "best.onnx").exists()
    m1, m3 = load_model(ckpt.saved[0]), load_model(ckpt.saved[2])
    assert structure(m1) == structure(m3)
    assert not np.array_equal(m1.initializers()["w1"].values, m3.initializers()["w1"].values)


# -- divergence ---------------------------------------------------------------------------------------------


def test_huge_learning_rate_keeps_last_good_weights(teacher):
    student = perturbed(teacher)
    r = finetune(student, teacher, batches(4), epochs=3, lr=1e30, batch_size=16, optimizer="sgd", progress=False)
    assert r.diverged and "became NaN" in r.message and "starting weights" in r.message
    assert r.losses and all(math.isfinite(v) for v in r.losses)
    start = initializer_arrays(student)
    for k, v in initializer_arrays(r.model).items():
        assert np.all(np.isfinite(v))
        assert np.array_equal(v, start[k])  # the first update already diverged: the starting weights are the last good
    logits = run_ort(r.model, batches(1)[0])[0]
    assert np.all(np.isfinite(logits))


def test_nan_loss_restores_weights_of_last_finite_step(teacher):
    student = perturbed(teacher)
    calls = {"n": 0}
    after_step = {}

    def loss(s_out, t_out, batch, default):
        calls["n"] += 1
        return default * math.nan if calls["n"] == 3 else default

    class Snapshot:
        def on_train_start(self, trainer):
            self.trainer = trainer

        def on_step_end(self, step, losses):
            after_step[step] = initializer_arrays(self.trainer.current_model())

    r = finetune(student, teacher, batches(4), epochs=1, lr=0.01, batch_size=16, loss=loss, callbacks=[Snapshot()],
                 progress=False)
    assert r.diverged and len(r.losses) == 2 and "NaN" in r.message
    final = initializer_arrays(r.model)
    # the NaN came from the weights after step 2; the last weights with a finite loss are those after step 1
    assert all(np.array_equal(final[k], v) for k, v in after_step[1].items())


# -- bad input ----------------------------------------------------------------------------------------------


def test_teacher_with_other_outputs_is_rejected(teacher):
    proto = small_cnn(seed=0)
    proto.graph.output[0].name = "probs"
    proto.graph.node[-1].output[0] = "probs"
    other = Model.from_onnx(proto)
    with pytest.raises(OnnxoptError, match="teacher's outputs \\(probs\\).*student's \\(logits\\)"):
        finetune(perturbed(teacher), other, batches(1), epochs=1, lr=1e-3, progress=False)


def test_teacher_with_other_output_shape_is_rejected(teacher):
    rng = np.random.default_rng(0)
    text = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 5] logits) {
  p = GlobalAveragePool (x)
  f = Flatten (p)
  logits = Gemm <transB = 1> (f, wf)
}
"""
    other = Model.from_onnx(parse_model(text, {"wf": rng.standard_normal((5, 3)).astype(np.float32)}))
    with pytest.raises(OnnxoptError, match="shape"):
        finetune(perturbed(teacher), other, batches(1), epochs=1, lr=1e-3, progress=False)


@pytest.mark.parametrize("batch,match", [
    ({"y": np.zeros((2, 3, 8, 8), np.float32), "z": np.zeros((2, 3, 8, 8), np.float32)}, "no array for model input"),
    ({"x": np.zeros((2, 3, 8, 8), np.float32), "labels": np.zeros(2, np.float32)}, "1-D integer"),
    ({"x": np.zeros((2, 3, 8, 8), np.float32), "labels": np.zeros((2, 10), np.int64)}, "1-D integer"),
    ({"x": np.zeros((2, 3, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "1-D integer"),
    ({"x": np.zeros((2, 3, 8, 8), np.float32), "labels": np.full(2, 12, np.int64)}, "class indices"),
])
def test_bad_batches_are_data_errors(teacher, batch, match):
    with pytest.raises(DataError, match=match):
        finetune(perturbed(teacher), teacher, [batch], epochs=1, lr=1e-3, progress=False)


def test_generator_for_several_epochs_is_rejected(teacher):
    with pytest.raises(DataError, match="one-shot"):
        finetune(perturbed(teacher), teacher, (b for b in batches(2)), epochs=2, lr=1e-3, progress=False)


def test_torch_dataloader_plugs_in(teacher):
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.from_numpy(np.concatenate([b["x"] for b in batches(2)]))
    y = torch.randint(0, 10, (len(x),))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    r = finetune(perturbed(teacher), teacher, loader, epochs=2, lr=1e-3, progress=False)
    assert r.steps == 2 * len(loader)


def test_masks_object_counts_zeros(teacher):
    student = perturbed(teacher)
    student.initializers()["bf"].values = np.zeros(10, np.float32)
    ex = GraphExecutor(student)
    masks = ZeroMasks(ex)
    assert masks.zeros == 10
    with torch.no_grad():
        ex.parameters_by_name()["bf"].add_(1.0)
    masks.apply()
    assert float(ex.parameters_by_name()["bf"].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["flatten_linear.dynamo-noopt.onnx", "mobilenetv2.torchscript.onnx"])
def test_exported_graph_fine_tunes(name):
    """A real exporter graph (shape subgraphs, Clip, depthwise convs...) trains and writes back unchanged in structure."""
    from conftest import ROOT

    path = ROOT / "tests" / "data" / "exported" / name
    if not path.exists():
        pytest.skip(f"{name} not exported")
    teacher = load_model(path)
    student = perturbed(teacher, scale=0.05)
    shape = tuple(d for d in teacher.graph.inputs[0].shape[1:])
    data = batches(3, batch=8, shape=shape, name="input")
    r = finetune(student, teacher, data, eval_data=data[:1], epochs=3, lr=3e-3, batch_size=8, progress=False)
    assert not r.diverged
    assert r.eval_after["eval_kl"] < r.eval_before["eval_kl"]
    assert structure(r.model) == structure(student)
    assert np.isfinite(run_ort(r.model, {"input": data[0]["input"]})[0]).all()
