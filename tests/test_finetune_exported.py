"""Torch executor parity with onnxruntime on real exporter output and the reference models (issue 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, run_ort  # noqa: E402

from onnxopt.finetune.executor import GraphExecutor  # noqa: E402
from onnxopt.ir import load_model  # noqa: E402

torch.set_num_threads(1)  # at most 2 (shared machine); one thread avoids thread-sync stalls under load

PARITY = 1e-4
EXPORTED = ROOT / "tests" / "data" / "exported"
MODELS = ROOT / "models"


def _exported() -> list[Path]:
    index = EXPORTED / "index.json"
    if not index.exists():
        return []
    files = [EXPORTED / m["file"] for m in json.loads(index.read_text())["models"]]
    return [f for f in files if f.exists()]


def _reference() -> list[Path]:
    return sorted(MODELS.glob("*.onnx")) if MODELS.is_dir() else []


def parity(path: Path, batch: int = 2) -> float:
    model = load_model(path)
    inp = model.graph.inputs[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = run_ort(model, {inp.name: x})
    with torch.no_grad():
        got = list(GraphExecutor(model)(x).values())
    worst = 0.0
    for r, g in zip(ref, got):
        assert r.shape == tuple(g.shape)
        worst = max(worst, float(np.abs(r - g.numpy()).max() / max(1.0, float(np.abs(r).max()))))
    return worst


@pytest.mark.parametrize("path", _exported(), ids=lambda p: p.name)
def test_exported_graph_parity(path):
    assert parity(path) <= PARITY


@pytest.mark.parametrize("path", _reference(), ids=lambda p: p.name)
def test_reference_model_parity(path):
    assert parity(path) <= PARITY


def _qdq(src: Path, dst: Path, per_channel: bool) -> Path:
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantization.quantize_static(str(src), str(dst), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=per_channel, weight_type=quantization.QuantType.QInt8,
                                 activation_type=quantization.QuantType.QUInt8)
    return dst


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("family", ["resnet", "mobilenetv2"])
def test_onnxruntime_qdq_graph_parity(tmp_path, family, per_channel):
    """A QDQ graph from onnxruntime's quantizer (int8 weights, int32 biases, uint8 activations) runs identically."""
    src = EXPORTED / f"{family}.torchscript.onnx"
    if not src.exists():
        pytest.skip(f"{src.name} not exported")
    path = _qdq(src, tmp_path / "qdq.onnx", per_channel)
    model = load_model(path)
    ex = GraphExecutor(model)
    assert ex.quantized_weights, "int8 weights should train through float shadows"
    assert parity(path) <= PARITY
