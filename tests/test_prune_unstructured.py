"""Magnitude and N:M masks, sparse_initializer storage (loaded by onnxruntime), the pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse_model, random_feeds, run_ort
from test_prune_graphs import residual

from onnxopt.errors import OnnxoptError
from onnxopt.ir import Model
from onnxopt.passes import create_pass
from onnxopt.prune.unstructured import (
    magnitude_prune,
    maskable_weights,
    nm_prune,
    parse_nm,
    sparse_bytes,
    to_sparse_initializers,
    zip_size,
)


def big_model(seed: int = 0) -> onnx.ModelProto:
    """Conv 16->32 (4608 weights), Gemm 32->64 (B not transposed), MatMul 64->10."""
    rng = np.random.default_rng(seed)
    return parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16, 6, 6] x) => (float[N, 10] y) {
      c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
      r = Relu (c)
      p = GlobalAveragePool (r)
      f = Flatten (p)
      h = Gemm (f, wg, bg)
      y = MatMul (h, wm)
    }""", {"w": rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "b": rng.standard_normal(32).astype(np.float32),
           "wg": rng.standard_normal((32, 64)).astype(np.float32), "bg": np.zeros(64, np.float32),
           "wm": rng.standard_normal((64, 10)).astype(np.float32)})


def weights(model: Model) -> dict[str, np.ndarray]:
    return {r.tensor.name: np.asarray(r.tensor.values) for r in maskable_weights(model)}


def test_per_layer_magnitude_zeroes_exactly_the_smallest():
    model = Model.from_onnx(big_model())
    before = weights(model)
    report = magnitude_prune(model, 0.6)
    after = weights(model)
    for name, w in after.items():
        k = int(np.floor(0.6 * w.size))
        assert int((w == 0).sum()) == k
        # every zeroed weight was no larger than every kept one
        old = np.abs(before[name])
        assert old[w == 0].max() <= old[w != 0].min()
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    assert report.sparsity == pytest.approx(sum(int(0.6 * w.size) for w in after.values()) /
                                            sum(w.size for w in after.values()))


def test_global_magnitude_uses_one_threshold():
    model = Model.from_onnx(big_model())
    before = weights(model)
    model.tensors()["wm"].values[:] *= 100  # the MatMul's weights are huge: a global ranking spares them
    before["wm"] = np.asarray(model.tensors()["wm"].values).copy()
    magnitude_prune(model, 0.5, global_ranking=True)
    after = weights(model)
    assert (after["wm"] == 0).mean() < 0.05  # per layer it would lose half
    zeroed = np.concatenate([np.abs(before[k])[after[k] == 0] for k in after])
    kept = np.concatenate([np.abs(before[k])[after[k] != 0] for k in after])
    assert zeroed.max() <= kept.min()  # one threshold over all layers
    total = sum(w.size for w in after.values())
    assert sum(int((w == 0).sum()) for w in after.values()) == int(0.5 * total)


def test_nm_keeps_n_of_every_m_along_input_channels():
    model = Model.from_onnx(big_model())
    before = weights(model)
    report = nm_prune(model, 2, 4)
    after = weights(model)
    conv = np.moveaxis(after["w"], 1, -1).reshape(-1, 4)
    assert ((conv != 0).sum(axis=1) == 2).all()
    old = np.abs(np.moveaxis(before["w"], 1, -1).reshape(-1, 4))
    kept_min = np.where(conv != 0, old, np.inf).min(axis=1)
    dropped_max = np.where(conv == 0, old, -np.inf).max(axis=1)
    assert (dropped_max <= kept_min).all()
    gemm = after["wg"].T.reshape(-1, 4)  # B is (K, N): K is the input axis
    assert ((gemm != 0).sum(axis=1) == 2).all()
    mm = after["wm"].T.reshape(-1, 4)
    assert ((mm != 0).sum(axis=1) == 2).all()
    assert report.sparsity == pytest.approx(0.5)


def test_nm_skips_layers_whose_channels_do_not_divide():
    model = Model.from_onnx(residual())  # the first conv has 3 input channels
    report = nm_prune(model, 2, 4)
    assert any("3 input channels" in n for n in report.notes)
    assert (np.asarray(model.tensors()["w0"].values) != 0).all()


@pytest.mark.parametrize("pattern", ["4:2", "2:2", "0:4", "2-4", "a:b", ""])
def test_bad_nm_patterns(pattern):
    with pytest.raises(OnnxoptError):
        parse_nm(pattern)


def test_sparse_initializers_load_in_onnxruntime_with_the_same_outputs():
    model = Model.from_onnx(big_model())
    magnitude_prune(model, 0.9)
    dense = model.to_onnx()
    sparse = model.to_onnx()
    moved = to_sparse_initializers(sparse)
    assert set(moved) == {"w", "wg"}  # wm has 640 elements: under the 1024 minimum
    assert len(sparse.graph.sparse_initializer) == 2
    onnx.checker.check_model(sparse)  # plain check passes; the full check's shape inference cannot see them
    feeds = random_feeds(dense)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as run_ort
    got = ort.InferenceSession(sparse.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = run_ort(dense, feeds)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    assert sparse.ByteSize() < dense.ByteSize()


def test_sparse_storage_only_when_smaller():
    model = Model.from_onnx(big_model())
    nm_prune(model, 2, 4)  # 50% zeros: 12 bytes per non-zero beats 4 bytes per weight only above ~67%
    proto = model.to_onnx()
    assert to_sparse_initializers(proto) == []
    w = np.asarray(model.tensors()["w"].values)
    assert sparse_bytes(w) > w.nbytes
    forced = model.to_onnx()
    assert set(to_sparse_initializers(forced, {"w"}, only_if_smaller=False)) == {"w"}


def test_zeros_compress():
    model = Model.from_onnx(big_model())
    dense = model.to_onnx().SerializeToString()
    magnitude_prune(model, 0.8)
    masked = model.to_onnx().SerializeToString()
    assert abs(len(masked) - len(dense)) < 64  # dense storage does not shrink
    assert zip_size(masked) < 0.6 * zip_size(dense)


def test_pass_from_the_registry_keeps_shapes():
    proto = big_model()
    res = create_pass("prune_unstructured", {"pattern": "2:4"})(Model.from_onnx(proto))
    assert res.modified and res.stats["sparsity"] == pytest.approx(0.5)
    assert any("CPU kernels" in n for n in res.model.notes)
    out = run_ort(res.model, random_feeds(proto))
    assert out[0].shape == (2, 10)
    with pytest.raises(OnnxoptError):
        create_pass("prune_unstructured", {"sparsity": 0.5, "pattern": "2:4"})
