"""onnxopt: a framework-agnostic ONNX optimizer for CNNs.

The public surface is small and lazy: importing :mod:`onnxopt` does not import
onnxruntime or torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxopt.errors import CheckFailed, OnnxoptError  # noqa: E402
from onnxopt.ir import Model, load_model, save_model  # noqa: E402

__all__ = ["Model", "load_model", "save_model", "OnnxoptError", "CheckFailed", "__version__"]
