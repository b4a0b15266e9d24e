"""Training hooks for recovery runs: reshuffled in-memory batches, shift/flip augmentation, cosine schedule (issue 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import small_cnn  # noqa: E402

from onnxopt.data import Dataset, input_specs  # noqa: E402
from onnxopt.errors import DataError, OnnxoptError  # noqa: E402
from onnxopt.finetune import finetune  # noqa: E402
from onnxopt.finetune.augment import RandomShiftFlip  # noqa: E402
from onnxopt.finetune.batches import ShuffledBatches  # noqa: E402
from onnxopt.finetune.callbacks import CosineLR  # noqa: E402
from onnxopt.ir import Model  # noqa: E402

torch.set_num_threads(1)


def arrays(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32), "labels": np.arange(n, dtype=np.int64)}


def test_shuffled_batches_cover_every_sample_once_per_pass_in_a_new_order():
    data = ShuffledBatches(arrays(), 16, seed=3)
    assert len(data) == 4
    first = [b["labels"] for b in data]
    second = [b["labels"] for b in data]
    assert [len(b) for b in first] == [16, 16, 16, 2]
    for epoch in (first, second):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(50))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    # inputs stay paired with their labels
    src = arrays()
    for b in data:
        np.testing.assert_array_equal(b["x"], src["x"][b["labels"]])
    # the same seed gives the same sequence of epochs
    again = ShuffledBatches(arrays(), 16, seed=3)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in again]), np.concatenate(first))


def test_shuffled_batches_reject_mismatched_or_empty_arrays():
    with pytest.raises(DataError, match="share one sample count"):
        ShuffledBatches({"x": np.zeros((4, 1)), "labels": np.zeros(3)}, 2)
    with pytest.raises(DataError, match="no samples"):
        ShuffledBatches({"x": np.zeros((0, 1))}, 2)


def test_shift_flip_moves_content_by_at_most_pad_and_keeps_labels():
    img = np.zeros((64, 1, 12, 12), np.float32)
    img[:, 0, 5, 3] = 1.0  # one bright pixel at row 5, column 3
    out = RandomShiftFlip(pad=2)({"x": img, "labels": np.arange(64)}, np.random.default_rng(0))
    np.testing.assert_array_equal(out["labels"], np.arange(64))
    assert out["x"].shape == img.shape and out["x"].dtype == np.float32
    rows, cols = [], []
    for k in range(64):
        r, c = np.argwhere(out["x"][k, 0] == 1.0)[0]
        rows.append(r)
        cols.append(min(c, 11 - c))  # undo a possible flip
    assert set(rows) <= set(range(3, 8)) and len(set(rows)) > 1  # shifted by -2..2, and not always the same
    assert set(cols) <= set(range(1, 6))
    flipped = sum(np.argwhere(out["x"][k, 0] == 1.0)[0][1] > 5 for k in range(64))
    assert 0 < flipped < 64
    assert np.array_equal(RandomShiftFlip(pad=0, flip=False)({"x": img}, np.random.default_rng(0))["x"], img)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    sched = CosineLR(warmup=0.1, floor=0.0)
    sched.total = 100
    f = [sched.factor(s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01 and f[55] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(OnnxoptError, match="warm-up"):
        CosineLR(warmup=1.5)


def test_finetune_with_shuffle_augment_and_cosine_sets_the_learning_rate_it_reports():
    teacher = Model.from_onnx(small_cnn(seed=0))
    student = Model.from_onnx(small_cnn(seed=1))
    specs = input_specs(teacher)
    data = arrays(48)
    data["labels"] = data["labels"] % 4
    ds = Dataset(lambda: iter([data]), specs, "t", length=48, has_labels=True)
    sched = CosineLR(warmup=0.0)
    lrs = []

    class Spy:
        def on_step_end(self, step, losses):
            lrs.append(sched.optimizer.param_groups[0]["lr"])

    res = finetune(student, teacher, ds, epochs=2, lr=0.01, batch_size=16, augment="shift-flip",
                   callbacks=[sched, Spy()], progress=False)
    assert res.steps == 6 and all(math.isfinite(v) for v in res.losses)
    # after step k the rate for step k+1 is set: cosine over 6 steps
    assert lrs[0] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert lrs[-2] < lrs[0] and lrs == sorted(lrs, reverse=True)
    with pytest.raises(OnnxoptError, match="unknown learning-rate schedule"):
        finetune(student, teacher, ds, epochs=1, schedule="linear", progress=False)
    with pytest.raises(OnnxoptError, match="needs shuffle"):
        finetune(student, teacher, ds, epochs=1, augment="shift-flip", shuffle=False, progress=False)
