"""INT8 post-training quantization to QDQ graphs that onnxruntime fuses into integer kernels.

>>> from onnxopt.quantize import QuantizeConfig, quantize
>>> result = quantize(model, calib_dataset, QuantizeConfig(method="percentile"))
>>> result.report.fusion.integer_count, result.ranges.save("ranges.json")

The steps, each its own module:

1. cleanup (``create_pass("cleanup")``): BatchNorm folding and friends must
   come first, or BN stays float between DequantizeLinear and the next op;
2. :mod:`~onnxopt.quantize.placement`: which nodes and tensors to quantize
   (data tables per target);
3. :mod:`~onnxopt.quantize.calibrate`: streaming activation ranges
   (:class:`~onnxopt.quantize.ranges.Ranges`, saveable), or given ranges;
4. :mod:`~onnxopt.quantize.qdq`: insert QuantizeLinear/DequantizeLinear;
5. validation (onnx checker, onnxruntime) and :mod:`~onnxopt.quantize.fusion`:
   what onnxruntime actually fused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from onnxopt.errors import CheckFailed, DataError, UnsupportedError
from onnxopt.ir.model import Model
from onnxopt.quantize.calibrate import CalibrationStats, calibrate
from onnxopt.quantize.config import Activations, Method, QuantizeConfig, Target, Weights, parse_target
from onnxopt.quantize.fusion import FusionReport, fusion_report
from onnxopt.quantize.placement import QuantPlan, plan_quantization
from onnxopt.quantize.qdq import InsertStats, insert_qdq, prepare_for_quantization
from onnxopt.quantize.ranges import Ranges


#: quantize, check the fusion, keep unfused compute nodes float, and retry: at most this many rounds
MAX_FUSION_ATTEMPTS = 3
UNFUSED_REASON = "onnxruntime does not fuse it into an integer kernel here (quantizing it only adds Q/DQ work)"
SYMMETRIC_CPU_HINT = ("; with symmetric activations onnxruntime on x86 converts an int8 Q/DQ pair to uint8 only when "
                      "the Q has a single consumer, so tensors read by several ops stay int8 and their consumers "
                      "float: use asymmetric activations for the CPU")


@dataclass
class QuantizeReport:
    config: dict
    notes: list[str]
    fingerprint: str
    ranges_method: str
    ranges: dict[str, list[float]]
    quantized_nodes: list[dict]
    float_nodes: list[dict]
    insert: InsertStats
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    calibration: CalibrationStats | None = None
    fusion: FusionReport | None = None

    def to_json(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("fusion", "calibration", "insert")}
        doc["insert"] = asdict(self.insert)
        doc["calibration"] = asdict(self.calibration) if self.calibration else None
        doc["fusion"] = self.fusion.to_json() if self.fusion else None
        return doc


@dataclass
class QuantizeResult:
    model: Model
    ranges: Ranges
    report: QuantizeReport
    plan: QuantPlan = field(repr=False, default=None)


def _validate(model: Model) -> onnx.ModelProto:
    proto = model.to_onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckFailed(f"the quantized model fails the ONNX checker: {first}") from exc
    return proto


def quantize(model: Model, calib=None, config: QuantizeConfig | None = None, *, ranges: Ranges | None = None,
             progress: bool = False, cleanup: bool = True, check_fusion: bool = True) -> QuantizeResult:
    """Quantize a float ``model`` to a QDQ graph; the input model is not modified.

    ``calib``: a :class:`onnxopt.data.Dataset` of calibration inputs, or None
    when ``ranges`` (e.g. :meth:`Ranges.load`) are given instead.
    """
    config = (config or QuantizeConfig()).resolved()
    if calib is None and ranges is None:
        raise DataError("quantization needs calibration data or saved ranges")
    ops_before = model.op_histogram()
    work = model.copy()
    if cleanup:
        from onnxopt.passes import create_pass

        work = create_pass("cleanup")(work).model
    work, fingerprint = prepare_for_quantization(work)
    keep_float: dict[str, str] = {}
    stats = None
    for attempt in range(1, MAX_FUSION_ATTEMPTS + 1):
        plan = plan_quantization(work, config, keep_float)
        if plan.is_empty():
            raise UnsupportedError(f"nothing to quantize: the model has no Conv/Gemm/MatMul that target "
                                   f"{config.target.value} can run as an integer kernel")
        if ranges is None or (stats is not None and not all(t in ranges for t in plan.calibration_tensors())):
            if calib is None:
                raise DataError("the saved ranges do not cover this plan; recalibrate with data")
            if stats is None:
                calib.check_finite()
            ranges, stats = calibrate(work, plan.calibration_tensors(), calib, config, fingerprint=fingerprint,
                                      progress=progress)
        elif stats is None:
            ranges.check_applies_to(fingerprint, plan.calibration_tensors())
            if ranges.method != Method.MINMAX.value and ranges.activations != config.activations.value:
                raise DataError(f"the ranges were calibrated for {ranges.activations} activations, the config "
                                f"asks for {config.activations.value}; recalibrate or match --activations")
        candidate = work.copy()
        inserted = insert_qdq(candidate, plan, ranges, config)
        _validate(candidate)
        fusion = None
        if not (check_fusion and config.target is Target.CPU):
            break
        try:
            fusion = fusion_report(candidate, planned=[n.name for n in plan.compute_nodes()])
        except CheckFailed as exc:
            raise CheckFailed(f"the quantized model does not load in onnxruntime: {exc}") from exc
        unfused = fusion.unfused_nodes
        if not unfused or attempt == MAX_FUSION_ATTEMPTS:
            break
        # quantized but run in float: Q/DQ work for nothing; keep them float and plan again
        for name in unfused:
            keep_float[name] = UNFUSED_REASON
    work = candidate
    notes = list(dict.fromkeys(work.notes + list(config.notes)))
    if keep_float:
        notes.append(f"{len(keep_float)} Conv/Gemm/MatMul kept in float: onnxruntime did not fuse them into integer "
                     "kernels when quantized" + (SYMMETRIC_CPU_HINT if config.activations is Activations.SYMMETRIC
                                                 and config.target is Target.CPU else ""))
    if fusion is not None and config.activations is Activations.SYMMETRIC:
        acts = [i for i in fusion.islands if i["op"] in ("Relu", "Clip")]
        if acts:
            notes.append(f"symmetric activations on the CPU target: {len(acts)} Relu/Clip run in float between "
                         "DequantizeLinear and QuantizeLinear (a zero point of 0 cannot absorb them); asymmetric "
                         "activations avoid that and are faster on onnxruntime's CPU provider")
    if stats is not None and stats.skipped_samples:
        notes.append(f"{stats.skipped_samples} calibration sample(s) left out: they do not fill a batch of the "
                     "model's fixed batch size")
    if inserted.bias_values_clipped:
        notes.append(f"{inserted.bias_values_clipped} bias value(s) exceeded int32 at their scale and were clipped")
    float_nodes = [asdict(f) for f in plan.float_nodes]
    if fusion is not None:
        ops = {n.name: n.op for n in plan.compute_nodes()}
        for name in fusion.unfused_nodes:
            float_nodes.append({"name": name, "op": ops[name],
                                "reason": "quantized, but onnxruntime did not fuse it into an integer kernel"})
    quantized = [{"name": n.name, "op": n.op,
                  "weights": None if n.weight is None else ("per-channel" if n.weight_axis is not None else "per-tensor"),
                  "absorbed": n.absorbed} for n in plan.nodes.values()]
    work.notes = notes
    report = QuantizeReport(config.describe(), notes, fingerprint, ranges.method,
                            {k: [lo, hi] for k, (lo, hi) in sorted(ranges.tensors.items())}, quantized, float_nodes,
                            inserted, ops_before, work.op_histogram(), stats, fusion)
    return QuantizeResult(work, ranges, report, plan)


__all__ = ["Activations", "CalibrationStats", "FusionReport", "Method", "QuantizeConfig", "QuantizeReport",
           "QuantizeResult", "Ranges", "Target", "Weights", "calibrate", "fusion_report", "parse_target",
           "plan_quantization", "quantize"]
