"""Pipeline step ``quantize``: INT8 post-training quantization calibrated on the pipeline's calib data.

The same quantizer as ``onnxopt quantize`` (:func:`onnxopt.quantize.quantize`,
cleanup first, fusion-checked placement); the options are those of
:class:`~onnxopt.quantize.QuantizeConfig`. A ``distill`` step after this one
fine-tunes the QDQ model (quantization-aware training).
"""

from __future__ import annotations

from onnxopt.errors import OnnxoptError
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
                 percentile: float = 99.999, batch_size: int = 16, calib_limit: int | None = None):
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
        try:
            self.config = QuantizeConfig(method=method, activations=activations, weights=weights,
                                         reduce_range=reduce_range, target=parse_target(target),
                                         exclude=tuple(self.exclude), percentile=percentile, batch_size=batch_size)
        except OnnxoptError as exc:
            raise ValueError(str(exc)) from exc

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.CALIB,)

    def run(self, model: Model) -> PassResult:
        from onnxopt.quantize import quantize

        calib = self.ctx.dataset(DataRole.CALIB, model, self.name)
        if self.calib_limit is not None:
            calib = limited(calib, self.calib_limit)
        result = quantize(model, calib, self.config)
        report = result.report
        stats = {"quantized_nodes": len(result.plan.nodes) if result.plan is not None else len(report.quantized_nodes),
                 "float_nodes": len(report.float_nodes)}
        if report.fusion is not None:
            stats["integer_kernels"] = report.fusion.integer_count
        return PassResult(result.model, True, stats)


def limited(dataset, n: int):
    """The first ``n`` samples of ``dataset`` as a dataset."""
    from onnxopt.data import Dataset

    arrays = dataset.arrays(limit=n)
    return Dataset(lambda: iter([arrays]), dataset.specs, f"{dataset.description} (first {n})",
                   length=len(next(iter(arrays.values()))), has_labels="labels" in arrays)
