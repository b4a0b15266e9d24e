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
   what onnxruntime actually fused;
6. with an accuracy budget (``max_drop``/``min_sqnr``), :mod:`~onnxopt.quantize.fallback`:
   the most sensitive nodes (:mod:`~onnxopt.quantize.sensitivity`) left float until it is met.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from onnxopt.errors import CheckFailed, DataError, UnsupportedError
from onnxopt.ir.model import Model
from onnxopt.quantize.calibrate import CalibrationStats, calibrate
from onnxopt.quantize.config import Activations, BiasCorrection, Method, QuantizeConfig, Target, Weights, parse_target
from onnxopt.quantize.fallback import Budget, FallbackReport, choose_reduce_range, meet_budget
from onnxopt.quantize.fusion import FusionReport, fusion_report
from onnxopt.quantize.placement import QuantPlan, plan_quantization
from onnxopt.quantize.qdq import InsertStats, insert_qdq, prepare_for_quantization
from onnxopt.quantize.ranges import Ranges
from onnxopt.quantize.sensitivity import (SQNR_SAMPLES, Measurement, OutputMeter, SensitivityResult,
                                          analyse_sensitivity, covering_ranges, pin_float_nodes)


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
    fallback: FallbackReport | None = None  # what the accuracy budget did (when there is one)
    bias_correction: dict | None = None  # per-layer corrections (BiasCorrectionStats.to_json) when switched on

    def to_json(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("fusion", "calibration", "insert", "fallback")}
        doc["insert"] = asdict(self.insert)
        doc["calibration"] = asdict(self.calibration) if self.calibration else None
        doc["fusion"] = self.fusion.to_json() if self.fusion else None
        doc["fallback"] = self.fallback.to_json() if self.fallback else None
        return doc


@dataclass
class QuantizeResult:
    model: Model
    ranges: Ranges
    report: QuantizeReport
    plan: QuantPlan = field(repr=False, default=None)
    config: QuantizeConfig | None = None            # resolved: every auto choice made
    #: the float model after cleanup and preparation, which ``plan`` and ``keep_float`` refer to
    float_model: Model | None = field(repr=False, default=None)
    #: node name -> why it was kept float (fusion check, accuracy fallback); ``plan_quantization``'s input
    keep_float: dict[str, str] = field(default_factory=dict)
    sensitivity: SensitivityResult | None = field(repr=False, default=None)
    #: the quantized / float model measured on the budget's or sensitivity's data (None when none was given)
    measurement: Measurement | None = None
    float_measurement: Measurement | None = None


def _validate(model: Model) -> onnx.ModelProto:
    proto = model.to_onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckFailed(f"the quantized model fails the ONNX checker: {first}") from exc
    return proto


class _Quantizer:
    """The quantize loop on one prepared float model, re-runnable with other configs and ``keep_float``.

    The first run calibrates (or checks the given ranges); later runs reuse
    those ranges, extended by :func:`~onnxopt.quantize.sensitivity.covering_ranges`
    so plans with more nodes float need no recalibration.
    """

    def __init__(self, work: Model, fingerprint: str, calib, ranges: Ranges | None, ops_before: dict[str, int], *,
                 progress: bool, check_fusion: bool):
        self.work, self.fingerprint, self.calib = work, fingerprint, calib
        self.ranges, self.stats = ranges, None
        self.ops_before, self.progress, self.check_fusion = ops_before, progress, check_fusion

    def run(self, config: QuantizeConfig, keep_float: dict[str, str] | None = None) -> QuantizeResult:
        config = config.resolved()
        result = _quantize_prepared(self.work, self.fingerprint, self.calib, config, self.ranges, self.stats,
                                    dict(keep_float or {}), self.ops_before, progress=self.progress,
                                    check_fusion=self.check_fusion)
        if self.stats is None:
            self.stats = result.report.calibration
        self.ranges = covering_ranges(result.ranges, result.plan)
        return result


def _quantize_prepared(work: Model, fingerprint: str, calib, config: QuantizeConfig, ranges: Ranges | None,
                       stats: CalibrationStats | None, keep_float: dict[str, str], ops_before: dict[str, int], *,
                       progress: bool, check_fusion: bool) -> QuantizeResult:
    """Plan, calibrate (unless ``ranges`` cover the plan), insert Q/DQ, check the fusion, retry without the
    unfused nodes; ``work`` (prepared, float) is not modified."""
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
        pinned = pin_float_nodes(candidate, [f.name for f in plan.float_nodes]) if config.target is Target.CPU else []
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
    result_model = candidate
    correction = None
    if config.bias_correction is not BiasCorrection.OFF:
        from onnxopt.quantize.bias_correction import correct_bias

        correction = correct_bias(work, result_model, calib, nodes=[n.name for n in plan.compute_nodes()],
                                  sequential=config.bias_correction is BiasCorrection.SEQUENTIAL,
                                  batch_size=config.batch_size, threads=config.threads)
        _validate(result_model)
    notes = list(dict.fromkeys(result_model.notes + list(config.notes)))
    n_unfused = sum(1 for why in keep_float.values() if why == UNFUSED_REASON)
    if n_unfused:
        notes.append(f"{n_unfused} Conv/Gemm/MatMul kept in float: onnxruntime did not fuse them into integer "
                     "kernels when quantized" + (SYMMETRIC_CPU_HINT if config.activations is Activations.SYMMETRIC
                                                 and config.target is Target.CPU else ""))
    if fusion is not None and config.activations is Activations.SYMMETRIC:
        acts = [i for i in fusion.islands if i["op"] in ("Relu", "Clip")]
        if acts:
            notes.append(f"symmetric activations on the CPU target: {len(acts)} Relu/Clip run in float between "
                         "DequantizeLinear and QuantizeLinear (a zero point of 0 cannot absorb them); asymmetric "
                         "activations avoid that and are faster on onnxruntime's CPU provider")
    if pinned:
        notes.append(f"{len(pinned)} float Conv/Gemm read their input through a per-channel DequantizeLinear: "
                     "onnxruntime would otherwise quantize their weights itself (per tensor) and run them as "
                     "integer kernels")
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
    result_model.notes = notes
    report = QuantizeReport(config.describe(), notes, fingerprint, ranges.method,
                            {k: [lo, hi] for k, (lo, hi) in sorted(ranges.tensors.items())}, quantized, float_nodes,
                            inserted, ops_before, result_model.op_histogram(), stats, fusion)
    if correction is not None:
        report.bias_correction = correction.to_json()
    return QuantizeResult(result_model, ranges, report, plan, config=config, float_model=work,
                          keep_float=dict(keep_float))


def _measure_data(config: QuantizeConfig, calib, eval_data, sensitivity: bool):
    """The data the budget and the sensitivity are measured on (None when nothing is measured)."""
    if config.max_drop is not None:
        if eval_data is None:
            raise DataError("max_drop needs labelled eval data (--eval DATA) to measure top-1 accuracy")
        if not eval_data.has_labels:
            raise DataError(f"max_drop needs labels in the eval data; {eval_data.description} has none "
                            "(min_sqnr needs no labels)")
    if not (config.has_budget or sensitivity):
        return None
    data = eval_data if eval_data is not None else calib
    if data is None:
        what = "min_sqnr" if config.min_sqnr is not None else "the sensitivity analysis"
        raise DataError(f"{what} needs data to compare the outputs on: eval data (--eval) or calibration data")
    return data


def quantize(model: Model, calib=None, config: QuantizeConfig | None = None, *, ranges: Ranges | None = None,
             eval_data=None, sensitivity: bool = False, samples: int | None = SQNR_SAMPLES, progress: bool = False,
             cleanup: bool = True, check_fusion: bool = True) -> QuantizeResult:
    """Quantize a float ``model`` to a QDQ graph; the input model is not modified.

    ``calib``: a :class:`onnxopt.data.Dataset` of calibration inputs, or None
    when ``ranges`` (e.g. :meth:`Ranges.load`) are given instead.

    ``eval_data``: labelled data for ``config.max_drop``; ``config.min_sqnr``
    and ``sensitivity`` measure on it too (on ``calib`` without it): top-1
    over all its samples when it has labels, else the SQNR on the first
    ``samples``. With a budget, the fallback (:mod:`onnxopt.quantize.fallback`)
    leaves the most sensitive nodes float until it is met
    (``result.report.fallback`` says what it did and whether the budget is
    met); ``sensitivity=True`` also runs the full per-node analysis
    (``result.sensitivity``), budget or not.
    """
    config = config or QuantizeConfig()
    if calib is None and ranges is None:
        raise DataError("quantization needs calibration data or saved ranges")
    if calib is None and config.bias_correction is not BiasCorrection.OFF:
        raise DataError("bias correction measures on calibration data; give --calib (saved ranges alone "
                        "are not enough)")
    measure_on = _measure_data(config, calib, eval_data, sensitivity)
    ops_before = model.op_histogram()
    work = model.copy()
    from onnxopt.passes import create_pass

    if cleanup:
        work = create_pass("cleanup")(work).model
    if config.equalize:
        eq = create_pass("equalize_cross_layer")(work)
        work = eq.model
        work.notes.append(f"cross-layer equalization: {eq.stats.get('pairs', 0)} Conv pair(s) rescaled"
                          + (f", {eq.stats['relu6_pairs_skipped']} skipped (ReLU6 between them is not "
                             "scale-equivariant)" if eq.stats.get("relu6_pairs_skipped") else ""))
    work, fingerprint = prepare_for_quantization(work)
    quantizer = _Quantizer(work, fingerprint, calib, ranges, ops_before, progress=progress, check_fusion=check_fusion)
    if measure_on is None:
        return quantizer.run(config)
    meter = OutputMeter(work, measure_on, samples=samples,
                        accuracy=measure_on is eval_data and eval_data.has_labels, threads=config.threads)
    choice = measured = None
    if config.wants_reduce_range_ab():
        result, choice, measured = choose_reduce_range(quantizer.run, config, meter)
    else:
        result = quantizer.run(config)
    sens = None
    if sensitivity:
        measured = measured or meter.measure(result.model)
        sens = analyse_sensitivity(result, meter=meter, progress=progress, baseline=measured)
    fallback = None
    budget = Budget.from_config(config)
    if budget:
        chosen = result.config
        result, fallback, sens = meet_budget(result, budget, meter, lambda keep: quantizer.run(chosen, keep),
                                             before=measured, sensitivity=sens, progress=progress)
        fallback.reduce_range = choice
        measured = fallback.after
    if choice is not None:
        result.report.notes.append(choice.note(meter.description))
    if fallback is not None:
        result.report.notes.append(fallback.note)
    result.sensitivity = sens
    result.report.fallback = fallback
    result.measurement = measured or meter.measure(result.model)
    result.float_measurement = meter.reference
    return result


__all__ = ["Activations", "Budget", "CalibrationStats", "FallbackReport", "FusionReport", "Measurement", "Method",
           "OutputMeter", "QuantizeConfig", "QuantizeReport", "QuantizeResult", "Ranges", "SensitivityResult",
           "Target", "Weights", "analyse_sensitivity", "calibrate", "fusion_report", "parse_target",
           "plan_quantization", "quantize"]
