"""Trained weights back into the ONNX graph, zero masks, and BatchNorm statistics.

* :func:`write_back`: a copy of the student with new initializer *values*
  only: same nodes, same initializer names, shapes and dtypes. Int8/int32
  weights of a QDQ graph are re-quantized from their float shadows with the
  DequantizeLinear's existing scale and zero point (learned scales are written
  too when ``learn_scales`` was on), clamped to the range the quantizer used
  (±127, ±64 for reduce_range, full int32 for biases).
* :class:`ZeroMasks`: every parameter element that is exactly 0 when training
  starts (pruned weights) is put back to 0 after each optimizer step.
  Quantized weights count as zero where their integer equals the zero point.
* :func:`reestimate_bn`: BatchNormalization running mean/variance recomputed
  on data (cumulative average over the batches, as torch does with
  ``momentum=None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from onnxopt.data import input_specs
from onnxopt.errors import OnnxoptError
from onnxopt.finetune.batches import BatchReader, iterate, open_data
from onnxopt.finetune.executor import GraphExecutor
from onnxopt.ir.model import Model


def write_back(executor: GraphExecutor, model: Model | None = None) -> Model:
    """A copy of ``model`` (default: the executor's source) holding the executor's current weights."""
    base = model if model is not None else executor.source
    out = base.copy()
    inits = out.initializers()
    for name, values in executor.initializer_values().items():
        c = inits.get(name)
        if c is None:
            raise OnnxoptError(f"write-back: the model has no initializer {name!r}; is it the executor's model?")
        old = c.values
        if tuple(old.shape) != tuple(values.shape):
            raise OnnxoptError(f"write-back: initializer {name!r} has shape {list(old.shape)} in the model but "
                               f"{list(values.shape)} in the executor")
        c.values = np.require(values.astype(old.dtype, copy=False), requirements="C")
    return out


class ZeroMasks:
    """Keep the exact zeros of the starting weights at zero (unstructured pruning survives fine-tuning)."""

    def __init__(self, executor: GraphExecutor):
        self.masks: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        for name, p in executor.parameters_by_name().items():
            keep = p.detach() != 0
            if not bool(keep.all()):
                self.masks[name] = (p, keep)

    @property
    def zeros(self) -> int:
        """How many elements are held at zero."""
        return int(sum(int((~keep).sum()) for _, keep in self.masks.values()))

    def apply(self) -> None:
        with torch.no_grad():
            for p, keep in self.masks.values():
                p.masked_fill_(~keep, 0.0)


@dataclass
class BNReport:
    """What :func:`reestimate_bn` did: nodes updated, nodes skipped with the reason, batches read."""

    updated: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    batches: int = 0


def reestimate_bn(executor: GraphExecutor, data, batches: int = 100, *, batch_size: int = 64) -> BNReport:
    """Recompute BatchNormalization running statistics over up to ``batches`` batches of ``data``.

    A node whose mean/variance are not initializers of their own (shared with
    another node, e.g. after initializer deduplication, or computed) keeps its
    statistics: writing them would change other nodes or the graph structure.
    """
    report = BNReport()
    if not executor.batchnorms:
        return report
    consumers = executor.source.consumers()
    contexts = executor.node_contexts()
    for node, mean, var in executor.batchnorms:
        why = None
        for stat in (mean, var):
            if stat not in executor.const_keys or stat in executor.quantized_weights or stat not in executor.source.initializers():
                why = f"statistic {stat!r} is not an initializer"
            elif len(consumers.get(stat, [])) > 1:
                why = f"statistic {stat!r} is shared with another node"
        ctx = contexts.get(node)
        if ctx is None:
            why = why or "the node was folded into a constant"
        if why:
            report.skipped[node] = why
            if ctx is not None:
                ctx.state["frozen"] = True
        else:
            report.updated.append(node)
    if not report.updated:
        return report
    data = open_data(data, executor.source)
    reader = BatchReader(input_specs(executor.source), "BatchNorm re-estimation data")
    try:
        with executor.bn_reestimation(), torch.no_grad():
            for batch in iterate(data, batch_size):
                if report.batches >= batches:
                    break
                feeds, _ = reader(batch)
                executor(**feeds)
                report.batches += 1
    finally:
        for ctx in contexts.values():
            ctx.state.pop("frozen", None)
    if report.batches == 0:
        raise OnnxoptError("BatchNorm re-estimation: the data holds no batches")
    return report
