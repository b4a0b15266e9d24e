"""Pipeline step ``check``: the current model against the input model on the eval data.

Both run in onnxruntime (CPU) on the same batches: top-1 of each (with
labels), how often their top-1 predictions agree, and the largest absolute
difference of the first output. ``max_drop`` is an accuracy budget in
percentage points of top-1: exceeding it fails the pipeline (exit 1). The
failure is raised when the pipeline ends, so a ``report`` step after this one
still writes its evidence; the optimized model is then not written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError
from onnxopt.ir.model import Model
from onnxopt.passes.base import PassResult, register
from onnxopt.pipeline.context import DataRole
from onnxopt.pipeline.step import PipelineStep
from onnxopt.runtime.compare import sample_batches
from onnxopt.runtime.session import make_session


@dataclass
class Agreement:
    samples: int
    top1_reference: float | None   # percent; None without labels
    top1: float | None
    agreement: float               # percent of samples with the same top-1 prediction
    max_abs_diff: float

    @property
    def drop(self) -> float | None:
        """Top-1 lost against the reference, in percentage points (negative: gained)."""
        if self.top1 is None or self.top1_reference is None:
            return None
        return self.top1_reference - self.top1


def compare_predictions(reference: Model, candidate: Model, dataset: Dataset, *, batch_size: int = 64,
                        limit: int | None = None, threads: int | None = 2) -> Agreement:
    """Run both models over ``dataset`` (first output = logits [batch, classes])."""
    ref = make_session(reference, threads=threads)
    got = make_session(candidate, threads=threads)
    ref_out, got_out = ref.get_outputs()[0].name, got.get_outputs()[0].name
    feeds_ref = {i.name for i in ref.get_inputs()}
    feeds_got = {i.name for i in got.get_inputs()}
    n = hits_ref = hits = same = labelled = 0
    max_diff = 0.0
    for batch in sample_batches(dataset, input_specs(candidate), preferred=batch_size, limit=limit):
        a = ref.run([ref_out], {k: v for k, v in batch.items() if k in feeds_ref})[0]
        b = got.run([got_out], {k: v for k, v in batch.items() if k in feeds_got})[0]
        if a.shape != b.shape or a.ndim != 2:
            raise DataError(f"check compares [batch, classes] logits; got {list(a.shape)} from the input model "
                            f"and {list(b.shape)} from the optimized one")
        pa, pb = a.argmax(axis=1), b.argmax(axis=1)
        same += int((pa == pb).sum())
        max_diff = max(max_diff, float(np.abs(a.astype(np.float64) - b).max()))
        labels = batch.get("labels")
        if labels is not None:
            hits_ref += int((pa == labels).sum())
            hits += int((pb == labels).sum())
            labelled += len(labels)
        n += len(pa)
    if n == 0:
        raise DataError(f"{dataset.description}: no samples to check")
    has = labelled == n
    return Agreement(n, 100.0 * hits_ref / n if has else None, 100.0 * hits / n if has else None,
                     100.0 * same / n, max_diff)


@register
class CheckStep(PipelineStep):
    """Compare with the input model on eval data; fail (exit 1) when top-1 drops more than ``max_drop``."""

    name = "check"
    summary = "compare with the input model on the eval data (top-1, agreement); max_drop fails the run"
    changes_model = False

    def __init__(self, max_drop: float | None = None, batch_size: int = 64, limit: int | None = None,
                 threads: int | None = 2):
        if max_drop is not None and (math.isnan(max_drop) or max_drop < 0):
            raise ValueError(f"max_drop is a top-1 budget in percentage points >= 0, got {max_drop}")
        self.max_drop = max_drop
        self.batch_size = batch_size
        self.limit = limit
        self.threads = threads

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.EVAL,)

    def run(self, model: Model) -> PassResult:
        data = self.ctx.dataset(DataRole.EVAL, model, self.name)
        if self.max_drop is not None and not data.has_labels:
            raise DataError(f"step 'check': max_drop needs labels in the eval data ({data.description} has none)")
        a = compare_predictions(self.ctx.teacher(), model, data, batch_size=self.batch_size, limit=self.limit,
                                threads=self.threads)
        stats = {"samples": a.samples, "agreement_pct": round(a.agreement, 2), "max_abs_diff": a.max_abs_diff}
        if a.drop is not None:
            stats.update({"top1_input": round(a.top1_reference, 2), "top1": round(a.top1, 2),
                          "drop_points": round(a.drop, 2)})
        if self.max_drop is not None and a.drop > self.max_drop:
            stats["failed"] = 1
            self.ctx.failures.append(
                f"check: top-1 dropped {a.drop:.2f} points ({a.top1_reference:.2f}% -> {a.top1:.2f}% on "
                f"{a.samples} eval samples), more than max_drop {self.max_drop:g}")
        return PassResult(model, False, stats)
