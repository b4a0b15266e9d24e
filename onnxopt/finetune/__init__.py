"""Fine-tuning an ONNX student with distillation from a teacher, in torch (the optional ``finetune`` extra).

* :mod:`~onnxopt.finetune.ops` / :mod:`~onnxopt.finetune.executor`: the ONNX
  graph as a differentiable ``torch.nn.Module`` (:class:`GraphExecutor`).
* :mod:`~onnxopt.finetune.writeback`: trained values back into the same graph
  (:func:`write_back`), zero masks (:class:`ZeroMasks`), BatchNorm statistics
  (:func:`reestimate_bn`).
* :mod:`~onnxopt.finetune.distill`: :func:`finetune`, the distillation loop.
* :mod:`~onnxopt.finetune.callbacks`: :class:`EarlyStopping`, :class:`Checkpoint`.

torch is imported here and only here; the rest of onnxopt never needs it.
"""

from __future__ import annotations

from onnxopt.errors import OnnxoptError

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise OnnxoptError("fine-tuning needs torch: pip install 'onnxopt[finetune]'") from exc

from onnxopt.finetune.callbacks import Callback, Checkpoint, EarlyStopping
from onnxopt.finetune.distill import FinetuneResult, distillation_loss, finetune
from onnxopt.finetune.executor import GraphExecutor, QuantizedWeight
from onnxopt.finetune.writeback import ZeroMasks, reestimate_bn, write_back

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "FinetuneResult",
    "GraphExecutor",
    "QuantizedWeight",
    "ZeroMasks",
    "distillation_loss",
    "finetune",
    "reestimate_bn",
    "write_back",
]
