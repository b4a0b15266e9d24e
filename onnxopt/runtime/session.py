"""onnxruntime sessions, created one way everywhere, with clear errors.

A requested provider that onnxruntime does not have is an error, never a
silent fall-back to CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from onnxopt.errors import CheckFailed, OnnxoptError, UnsupportedError
from onnxopt.runtime.providers import ProviderInfo, available_providers, provider_info


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise OnnxoptError("onnxruntime is not installed: pip install 'onnxopt[cpu]' (or [gpu])") from exc
    return ort


def make_session(model, provider: str | ProviderInfo = "cpu", *, threads: int | None = None,
                 optimization: str = "all", optimized_model_path: str | Path | None = None,
                 spin: bool = True):
    """An InferenceSession for a path, bytes, ModelProto or :class:`onnxopt.ir.Model`.

    ``optimization``: "disable", "basic", "extended" or "all".
    ``spin``: allow intra-op threads to spin; turn off when timing several
    sessions on a small machine (an idle spinning session stalls the others).
    """
    ort = _ort()
    info = provider if isinstance(provider, ProviderInfo) else provider_info(provider)
    if info.ort_name not in available_providers():
        raise CheckFailed(f"execution provider {info.short} ({info.ort_name}) is not available in this onnxruntime "
                          f"(available: {', '.join(available_providers())})")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    source = model
    if hasattr(model, "to_onnx"):
        model = model.to_onnx()
    if hasattr(model, "SerializeToString"):
        source = model.SerializeToString()
    elif isinstance(model, Path):
        source = str(model)
    try:
        sess = ort.InferenceSession(source, so, providers=[info.ort_name])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckFailed(f"onnxruntime ({info.short}) cannot load the model: {msg}") from exc
    if info.ort_name not in sess.get_providers():
        raise CheckFailed(f"onnxruntime did not use provider {info.short} (session providers: {sess.get_providers()})")
    return sess


def run_batches(sess, batches: Iterable[dict[str, np.ndarray]], output_names: list[str] | None = None):
    """Yield (batch, outputs dict) for each batch; the ``labels`` key is not fed."""
    names = output_names or [o.name for o in sess.get_outputs()]
    feed_names = {i.name for i in sess.get_inputs()}
    for batch in batches:
        feed = {k: v for k, v in batch.items() if k in feed_names}
        try:
            outs = sess.run(names, feed)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0]
            raise OnnxoptError(f"onnxruntime failed to run the model on the data: {msg}") from exc
        yield batch, dict(zip(names, outs))


def require_provider_installed(name: str) -> None:
    info = provider_info(name)
    if info.ort_name not in available_providers():
        raise UnsupportedError(f"provider {name} is not available in this onnxruntime build")
