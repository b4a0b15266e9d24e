"""Which Conv/Gemm/MatMul the quantized model's error comes from: per-node sensitivity, saved as JSON.

An analysis, not a pass: for every compute node of a quantization plan it
measures the model's outputs against the float model's (SQNR, dB, the worst
output; top-1 accuracy too on labelled data) in two variants:

* **only quantized**: this node alone is quantized, everything else float:
  the error this node brings on its own;
* **only float**: this node alone is left float, everything else quantized:
  what leaving it float would win back (the ranking
  :mod:`onnxopt.quantize.fallback` uses).

Variants are re-planned with ``keep_float`` (:func:`plan_quantization`) and
built with :func:`insert_qdq` from the ranges already calibrated for the full
plan, never recalibrated: a sub-plan quantizes a subset of the full plan's
tensors, but may take a tensor's scale from the tensor itself where the full
plan took it from a pass-through's input (a MaxPool left out of the
sub-plan); :func:`covering_ranges` gives every tensor of the full plan its
effective range, so the variant uses exactly the full quantization's scales.

A node left float must run float: :func:`pin_float_nodes` stops onnxruntime
from quantizing a float Conv/Gemm that reads a DequantizeLinear itself.

All variants run on the same samples (the first :data:`SQNR_SAMPLES` for SQNR
alone, the whole labelled set when accuracy is measured), against float
outputs computed once (:class:`OutputMeter`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.analysis.jsonfile import check_format, read_json
from onnxopt.data import Dataset
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir.edit import FreshNames
from onnxopt.ir.model import Model, constant_array
from onnxopt.quantize.config import QuantizeConfig
from onnxopt.quantize.placement import QuantPlan, plan_quantization
from onnxopt.quantize.qdq import insert_qdq
from onnxopt.quantize.quality import sqnr_db
from onnxopt.quantize.ranges import Ranges

#: samples the SQNR is measured on when no accuracy is asked for
SQNR_SAMPLES = 256
#: batch size of the measuring runs (a model with a fixed batch size uses its own)
EVAL_BATCH_SIZE = 64
FORMAT = "onnxopt-sensitivity"
VERSION = 1


# -- measuring outputs -------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """How close one model's outputs are to the float model's, on the meter's samples."""

    sqnr_db: float        # the worst output's SQNR against the float model (inf: identical)
    top1: float | None    # percent, first output, None without labels
    samples: int


class OutputMeter:
    """Runs models on one fixed set of samples and scores their outputs against the float model's.

    The float outputs are computed once. ``accuracy`` (default: when the data
    has labels) measures top-1 on the first output over all samples (at most
    ``accuracy_limit``); without it only the first ``samples`` are used.
    """

    def __init__(self, reference, data: Dataset, *, samples: int | None = SQNR_SAMPLES, accuracy: bool | None = None,
                 accuracy_limit: int | None = None, batch_size: int = EVAL_BATCH_SIZE, threads: int | None = None):
        from onnxopt.quantize.calibrate import fixed_batch_size

        accuracy = data.has_labels if accuracy is None else accuracy
        if accuracy and not data.has_labels:
            raise DataError(f"{data.description}: accuracy needs labels (key 'labels'), and this data has none")
        if samples is not None and samples < 1:
            raise OnnxoptError(f"the number of samples to measure must be >= 1, got {samples}")
        self.accuracy = accuracy
        self.threads = threads
        self.description = data.description
        reference = reference if isinstance(reference, Model) else Model.from_onnx(reference)
        fixed = fixed_batch_size(reference)
        arrays = data.arrays(limit=accuracy_limit if accuracy else samples)
        labels = arrays.pop("labels", None)
        n = len(next(iter(arrays.values())))
        step = fixed or batch_size
        if fixed:
            n -= n % fixed  # a fixed-batch model cannot run a short last batch
            if n == 0:
                raise DataError(f"{data.description}: fewer samples than the model's fixed batch size {fixed}")
        self.batches = [{k: v[i:i + step] for k, v in arrays.items()} for i in range(0, n, step)]
        self.labels = labels[:n] if (accuracy and labels is not None) else None
        self.samples = n
        self.reference_outputs = self._run(reference)
        first = self.reference_outputs[0]
        if self.labels is not None and (first.ndim != 2 or first.shape[1] < 2):
            raise DataError(f"accuracy needs a [batch, classes] first output; it has shape {list(first.shape)}")
        self.reference = Measurement(math.inf, self._top1(first), n)

    def _run(self, model) -> list[np.ndarray]:
        from onnxopt.runtime import make_session

        sess = make_session(model, "cpu", threads=self.threads, spin=False)
        names = [o.name for o in sess.get_outputs()]
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for batch in self.batches:
            try:
                outs = sess.run(names, batch)
            except Exception as exc:  # onnxruntime's own errors
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise OnnxoptError(f"onnxruntime failed to run the model on {self.description}: {msg}") from exc
            for p, o in zip(parts, outs):
                p.append(o)
        return [np.concatenate(p) for p in parts]

    def _top1(self, logits: np.ndarray) -> float | None:
        if self.labels is None:
            return None
        return 100.0 * float(np.mean(logits.argmax(axis=1) == self.labels))

    def measure(self, model) -> Measurement:
        """SQNR (worst output) and top-1 of ``model`` (a Model, proto, bytes or path) on the meter's samples."""
        outs = self._run(model)
        sqnr = min(sqnr_db(r, g) for r, g in zip(self.reference_outputs, outs))
        return Measurement(sqnr, self._top1(outs[0]), self.samples)


# -- building the variants ---------------------------------------------------------
def covering_ranges(ranges: Ranges, plan: QuantPlan) -> Ranges:
    """``ranges`` plus, for every tensor ``plan`` quantizes, the range its scale came from.

    Any sub-plan of ``plan`` (more nodes kept float) then finds a range for
    each tensor it calibrates, equal to the scale the full plan gave that
    tensor: sub-plans need no recalibration.
    """
    tensors = dict(ranges.tensors)
    for name, root in plan.tensors.items():
        if name not in tensors and root in ranges:
            tensors[name] = ranges[root]
    return Ranges(tensors, ranges.method, ranges.activations, ranges.fingerprint, ranges.samples, dict(ranges.extra))


#: ops onnxruntime's WeightBiasQuantization quantizes when their input comes from a per-tensor DequantizeLinear
ORT_SELF_QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm")


def pin_float_nodes(model: Model, names) -> list[str]:
    """Make the float Conv/ConvTranspose/Gemm ``names`` stay float in onnxruntime; returns those changed.

    onnxruntime's WeightBiasQuantization (a basic-level optimization, on
    whenever QDQ handling is) quantizes the float weight of such a node
    itself, symmetric int8 per tensor, when its input comes from a
    DequantizeLinear with a scalar scale; with a QuantizeLinear after it the
    node then becomes a QLinearConv: a node planned float silently runs as a
    worse-quantized integer kernel. Its DequantizeLinear gets the same scale
    and zero point per channel (axis 1) instead: the same values, and the
    node keeps its float kernel.
    """
    wanted = set(names)
    changed = []
    for node in list(model.graph.nodes):
        if node.name not in wanted or node.op not in ORT_SELF_QUANTIZED_OPS or not node.inputs:
            continue
        x = node.inputs[0]
        dq = x.inputs[0] if len(x.inputs) == 1 else None
        if dq is None or dq.op != "DequantizeLinear" or len(dq.inputs) < 3:
            continue
        scale, zero_point = (constant_array(t) for t in dq.inputs[1:3])
        channels = x.shape[1] if x.shape is not None and len(x.shape) > 1 else None
        if scale is None or zero_point is None or scale.size != 1 or not isinstance(channels, int) or channels < 1:
            continue
        fresh = FreshNames(model.graph)
        per_axis = gs.Node("DequantizeLinear", fresh(dq.name + "_per_channel"), {"axis": 1},
                           [dq.inputs[0], gs.Constant(fresh(dq.inputs[1].name + "_per_channel"),
                                                      np.full([channels], scale.reshape(()), scale.dtype)),
                            gs.Constant(fresh(dq.inputs[2].name + "_per_channel"),
                                        np.full([channels], zero_point.reshape(()), zero_point.dtype))],
                           [gs.Variable(fresh(x.name + "_per_channel"), dtype=np.float32, shape=x.shape)])
        model.graph.nodes.append(per_axis)
        for i, t in enumerate(node.inputs):
            if t is x:
                node.inputs[i] = per_axis.outputs[0]
        changed.append(node.name)
    if changed:
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return changed


def build_variant(float_model: Model, config: QuantizeConfig, ranges: Ranges, keep_float: Mapping[str, str]) -> Model:
    """A copy of the prepared ``float_model`` quantized with ``keep_float`` nodes left float (no fusion check)."""
    plan = plan_quantization(float_model, config, keep_float)
    variant = float_model.copy()
    if not plan.is_empty():
        insert_qdq(variant, plan, ranges, config)
        pin_float_nodes(variant, [f.name for f in plan.float_nodes])
    return variant


# -- the analysis --------------------------------------------------------------------
@dataclass
class NodeSensitivity:
    """One compute node's two variants (None where a variant was not measured)."""

    name: str
    op: str
    sqnr_only_quantized: float | None = None
    sqnr_only_float: float | None = None
    top1_only_quantized: float | None = None
    top1_only_float: float | None = None


@dataclass
class SensitivityResult:
    """Per-node sensitivity of one quantization (see the module docs); :meth:`save` writes it as JSON."""

    nodes: list[NodeSensitivity]
    quantized_sqnr: float              # every node of the plan quantized
    quantized_top1: float | None
    float_top1: float | None
    samples: int
    data: str
    config: dict
    fingerprint: str = ""
    seconds: float = 0.0

    def sqnr_gain(self, node: NodeSensitivity) -> float | None:
        """dB the outputs gain when only ``node`` is left float."""
        if node.sqnr_only_float is None:
            return None
        if math.isinf(node.sqnr_only_float) and math.isinf(self.quantized_sqnr):
            return 0.0
        return node.sqnr_only_float - self.quantized_sqnr

    def top1_gain(self, node: NodeSensitivity) -> float | None:
        """Top-1 points won back when only ``node`` is left float."""
        if node.top1_only_float is None or self.quantized_top1 is None:
            return None
        return node.top1_only_float - self.quantized_top1

    def ranked(self, by_accuracy: bool = False) -> list[NodeSensitivity]:
        """Most sensitive first: by the "only float" top-1 gain (ties by SQNR gain) or by the SQNR gain alone."""
        def key(n: NodeSensitivity):
            s = self.sqnr_gain(n)
            s = -math.inf if s is None else s
            if by_accuracy:
                t = self.top1_gain(n)
                return (-math.inf if t is None else t, s)
            return (s,)

        return sorted(self.nodes, key=key, reverse=True)

    def to_json(self) -> dict:
        from onnxopt.cli.report import to_jsonable

        doc = {"format": FORMAT, "version": VERSION, **asdict(self)}
        for row, node in zip(doc["nodes"], self.nodes):
            row["sqnr_gain"] = self.sqnr_gain(node)
            row["top1_gain"] = self.top1_gain(node)
        return to_jsonable(doc)

    def save(self, path) -> Path:
        from onnxopt.cli.report import write_json

        write_json(self.to_json(), path)
        return Path(path)

    @classmethod
    def from_json(cls, doc: dict, where: str = "sensitivity") -> SensitivityResult:
        check_format(doc, FORMAT, VERSION, where, "sensitivity")
        try:
            nodes = [NodeSensitivity(str(n["name"]), str(n["op"]),
                                     *(_number(n.get(k)) for k in ("sqnr_only_quantized", "sqnr_only_float",
                                                                   "top1_only_quantized", "top1_only_float")))
                     for n in doc["nodes"]]
            return cls(nodes, _number(doc["quantized_sqnr"]), _number(doc.get("quantized_top1")),
                       _number(doc.get("float_top1")), int(doc["samples"]), str(doc.get("data", "")),
                       dict(doc.get("config") or {}), str(doc.get("fingerprint", "")),
                       float(doc.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed sensitivity file ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def load(cls, path) -> SensitivityResult:
        return cls.from_json(read_json(path, "sensitivity"), str(path))


def _number(v) -> float | None:
    """A JSON number, or the strings write_json uses for non-finite floats."""
    return None if v is None else float(v)


def analyse_sensitivity(result, data: Dataset | None = None, *, meter: OutputMeter | None = None,
                        only_quantized: bool = True, samples: int | None = SQNR_SAMPLES,
                        accuracy: bool | None = None, threads: int | None = None, progress: bool = False,
                        baseline: Measurement | None = None) -> SensitivityResult:
    """Per-node sensitivity of a :class:`~onnxopt.quantize.QuantizeResult`.

    Measures on ``meter`` if given (its float outputs are reused), else on a
    new :class:`OutputMeter` over ``data``. ``only_quantized=False`` skips the
    "only this node quantized" variants (the fallback needs only the other
    half, at half the cost). ``baseline``: ``meter``'s measurement of
    ``result.model`` when the caller already has it.
    """
    from onnxopt.cli.report import progress as progress_bar

    if result.float_model is None:
        raise OnnxoptError("sensitivity needs the QuantizeResult of onnxopt.quantize.quantize (with its float model)")
    start = time.perf_counter()
    if meter is None:
        if data is None:
            raise DataError("sensitivity analysis needs data to run the model on")
        meter = OutputMeter(result.float_model, data, samples=samples, accuracy=accuracy, threads=threads)
    config, float_model = result.config, result.float_model
    ranges = covering_ranges(result.ranges, result.plan)
    base = dict(result.keep_float)
    compute = [(n.name, n.op) for n in result.plan.compute_nodes()]
    full = baseline or meter.measure(result.model)
    rows = []
    bar = progress_bar(len(compute) * (2 if only_quantized else 1), "sensitivity", quiet=not progress, unit="model")
    try:
        for name, op in compute:
            row = NodeSensitivity(name, op)
            alone_float = build_variant(float_model, config, ranges, {**base, name: "sensitivity: only this float"})
            m = meter.measure(alone_float)
            row.sqnr_only_float, row.top1_only_float = m.sqnr_db, m.top1
            bar.update(1)
            if only_quantized:
                others = {other: "sensitivity: only another node quantized" for other, _ in compute if other != name}
                m = meter.measure(build_variant(float_model, config, ranges, {**base, **others}))
                row.sqnr_only_quantized, row.top1_only_quantized = m.sqnr_db, m.top1
                bar.update(1)
            rows.append(row)
    finally:
        bar.close()
    return SensitivityResult(rows, full.sqnr_db, full.top1, meter.reference.top1, meter.samples, meter.description,
                             config.describe(), result.report.fingerprint if result.report else "",
                             time.perf_counter() - start)


__all__ = ["EVAL_BATCH_SIZE", "Measurement", "NodeSensitivity", "OutputMeter", "SQNR_SAMPLES", "SensitivityResult",
           "analyse_sensitivity", "build_variant", "covering_ranges", "pin_float_nodes"]
