"""Shared fixtures: tiny graphs from onnx.parser text, and onnxruntime comparisons."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from onnxopt.ir import Model  # noqa: E402


def parse_model(text: str, initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A ModelProto from onnx.parser text, with numpy initializers appended."""
    proto = onnx.parser.parse_model(text)
    for name, arr in (initializers or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def as_proto(m) -> onnx.ModelProto:
    return m.to_onnx() if isinstance(m, Model) else m


def run_ort(model, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(as_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    proto = as_proto(model)
    init = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in init:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(before, after, feeds=None, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Outputs of two models agree within ``rtol`` relative to each output's scale."""
    feeds = feeds if feeds is not None else random_feeds(before)
    ref = run_ort(before, feeds)
    got = run_ort(after, feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape, (r.shape, g.shape)
        scale = max(float(np.abs(r).max()), 1.0) if r.size else 1.0
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol + rtol * scale)


def count_ops(model, op: str | None = None):
    proto = as_proto(model)
    if op is None:
        return len(proto.graph.node)
    return sum(1 for n in proto.graph.node if n.op_type == op)


@pytest.fixture
def tmp_model_path(tmp_path):
    def _write(proto: onnx.ModelProto, name: str = "model.onnx") -> Path:
        p = tmp_path / name
        onnx.save_model(proto, str(p))
        return p

    return _write


SMALL_CNN = """
<ir_version: 8, opset_import: ["" : 17], producer_name: "onnxopt-tests", producer_version: "1.0">
cnn (float[BATCH, 3, 8, 8] x) => (float[BATCH, 10] logits) {
  c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
  n1 = BatchNormalization (c1, bn_scale, bn_bias, bn_mean, bn_var)
  r1 = Relu (n1)
  c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
  id2 = Identity (c2)
  res = Add (id2, r1)
  r2 = Relu (res)
  pool = GlobalAveragePool (r2)
  flat = Flatten (pool)
  logits = Gemm <transB = 1> (flat, wf, bf)
}
"""


def small_cnn(batch: str | int = "N", seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu, Conv + residual Add, GlobalAveragePool, Flatten, Gemm (10 classes); ``batch`` symbolic or fixed."""
    rng = np.random.default_rng(seed)

    def r(*shape, positive=False):
        a = rng.standard_normal(shape).astype(np.float32)
        return np.abs(a) + 0.5 if positive else a

    inits = {"w1": r(4, 3, 3, 3), "b1": r(4), "bn_scale": r(4, positive=True), "bn_bias": r(4), "bn_mean": r(4),
             "bn_var": r(4, positive=True), "w2": r(4, 4, 3, 3), "b2": r(4), "wf": r(10, 4), "bf": r(10)}
    return parse_model(SMALL_CNN.replace("BATCH", str(batch)), inits)
