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
