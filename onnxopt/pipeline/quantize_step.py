"""Pipeline step ``quantize``: INT8 post-training quantization calibrated on the pipeline's calib data.

The same quantizer as ``onnxopt quantize`` (:func:`onnxopt.quantize.quantize`,
cleanup first, fusion-checked placement); the options are those of
:class:`~onnxopt.quantize.QuantizeConfig`. A ``distill`` step after this one
fine-tunes the QDQ model (quantization-aware training).

``max_drop`` (top-1 points, on the pipeline's labelled ``eval`` data) and
``min_sqnr`` (dB, on the eval data when there is some, else the calib data)
are the accuracy budget of :mod:`onnxopt.quantize.fallback`: the most
sensitive Conv/Gemm/MatMul are left float until it is met. A budget that
cannot be met is a check failure: the pipeline goes on (with the most
accurate model tried) and fails at its end, after the report.
"""

from __future__ import annotations

from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir.model import Model
from onnxopt.passes.base import PassResult, register
from onnxopt.pipeline.context import DataRole
from onnxopt.pipeline.step import PipelineStep


@register
class QuantizeStep(PipelineStep):
    """INT8 QDQ quantization with ranges calibrated on ``calib`` data."""

    name = "quantize"
    summary = "INT8 post-training quantization (QDQ) calibrated on the calib data"

    def __init__(self, method: str = "minmax", activations: str | None = None, weights: str = "per-channel",
                 reduce_range: bool | None = None, target: str = "cpu", exclude: list[str] | None = None,
                 percentile: float = 99.999, batch_size: int = 16, calib_limit: int | None = None,
                 max_drop: float | None = None, min_sqnr: float | None = None, equalize: bool = False,
                 bias_correction: str = "off"):
        from onnxopt.quantize.config import QuantizeConfig, parse_target

        self.method = method
        self.activations = activations
        self.weights = weights
        self.reduce_range = reduce_range
        self.target = target
        self.exclude = list(exclude or [])
        self.percentile = percentile
        self.batch_size = batch_size
        if calib_limit is not None and calib_limit < 1:
            raise ValueError(f"calib_limit must be >= 1, got {calib_limit}")
        self.calib_limit = calib_limit
        self.max_drop = max_drop
        self.min_sqnr = min_sqnr
        self.equalize = equalize
        self.bias_correction = bias_correction
        try:
            self.config = QuantizeConfig(method=method, activations=activations, weights=weights,
                                         reduce_range=reduce_range, target=parse_target(target),
                                         exclude=tuple(self.exclude), percentile=percentile, batch_size=batch_size,
                                         max_drop=max_drop, min_sqnr=min_sqnr, equalize=equalize,
                                         bias_correction=bias_correction)
        except OnnxoptError as exc:
            raise ValueError(str(exc)) from exc

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.CALIB, DataRole.EVAL) if self.max_drop is not None else (DataRole.CALIB,)

    def _eval_data(self, model: Model):
        """The eval data the budget measures on: required by max_drop, used by min_sqnr when the pipeline has it."""
        if self.max_drop is not None or (self.min_sqnr is not None and self.ctx.data.get(DataRole.EVAL) is not None):
            data = self.ctx.dataset(DataRole.EVAL, model, self.name)
            if self.max_drop is not None and not data.has_labels:
                raise DataError(f"step {self.name!r}: max_drop needs labels in the eval data ({data.description} "
                                "has none)")
            return data
        return None

    def run(self, model: Model) -> PassResult:
        from onnxopt.quantize import quantize

        calib = self.ctx.dataset(DataRole.CALIB, model, self.name)
        if self.calib_limit is not None:
            calib = limited(calib, self.calib_limit)
        result = quantize(model, calib, self.config, eval_data=self._eval_data(model))
        report = result.report
        stats = {"quantized_nodes": len(result.plan.nodes) if result.plan is not None else len(report.quantized_nodes),
                 "float_nodes": len(report.float_nodes)}
        if report.fusion is not None:
            stats["integer_kernels"] = report.fusion.integer_count
        fallback = report.fallback
        if fallback is not None:
            stats["left_float_by_budget"] = len(fallback.left_float)
            if fallback.after.top1 is not None:
                stats["top1"] = round(fallback.after.top1, 2)
                stats["drop_points"] = round(fallback.float_top1 - fallback.after.top1, 2)
            stats["output_sqnr_db"] = round(fallback.after.sqnr_db, 2)
            if not fallback.met:
                stats["failed"] = 1
                self.ctx.failures.append(f"quantize: {fallback.message}")
        return PassResult(result.model, True, stats)


def limited(dataset, n: int):
    """The first ``n`` samples of ``dataset`` as a dataset."""
    from onnxopt.data import Dataset

    arrays = dataset.arrays(limit=n)
    return Dataset(lambda: iter([arrays]), dataset.specs, f"{dataset.description} (first {n})",
                   length=len(next(iter(arrays.values()))), has_labels="labels" in arrays)
