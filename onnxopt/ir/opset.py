"""Opset handling: upgrade old models with onnx's version converter."""

from __future__ import annotations

import onnx

from onnxopt.errors import OpsetError
from onnxopt.ir.model import Model


def upgrade_opset(model: Model, target: int) -> Model:
    """Return a model at default-domain opset ``target`` (or fail clearly)."""
    if model.opset >= target:
        return model
    old = model.opset
    try:
        proto = onnx.version_converter.convert_version(model.to_onnx(), target)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Assertion" in first:  # onnx's C++ assertion text: keep the readable tail
            first = first.split("Assertion", 1)[1].strip(" `:")
        raise OpsetError(f"model is at opset {old}; upgrading to opset {target} failed: {first}") from exc
    upgraded = Model.from_onnx(proto, model.source)
    meta = model.meta
    meta.opset_imports[""] = target
    meta.ir_version = max(meta.ir_version, proto.ir_version)
    upgraded.meta = meta
    upgraded.notes = model.notes + [f"upgraded the model from opset {old} to opset {target} (onnx version converter)"]
    return upgraded


def ensure_opset(model: Model, minimum: int, *, who: str, allow_upgrade: bool = True) -> Model:
    """Make sure ``model`` is at least at ``minimum``; upgrade and say so, or fail."""
    if model.opset >= minimum:
        return model
    if not allow_upgrade:
        raise OpsetError(f"{who} needs opset >= {minimum}, the model is at opset {model.opset}")
    return upgrade_opset(model, minimum)
