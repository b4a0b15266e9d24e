"""Empirical bias correction of a QDQ model (Nagel et al. 2019, section 4.2; AIMET's "empirical bias correction").

Quantizing a layer's weights shifts the mean of its outputs: with
``W~ = W + e``, ``E[W~ x] - E[W x] = e E[x]``, a per-output-channel bias
that rounding does not average away (a depthwise 3x3 kernel has only nine
weights per channel) and that the following layers amplify. Subtracting the
measured mean error from the layer's bias removes it.

Two ways to measure, both streaming (per-channel float64 sums of a batch at
a time; no activation is kept beyond its batch):

* one-shot (default, one pass over the data): each quantized Conv/Gemm gets
  a float "shadow" copy that reads the same dequantized input with the
  float model's weights and bias; the mean of ``quantized - shadow`` is the
  error the layer itself adds given the inputs it really sees. Measuring
  ``quantized - float model`` for every layer in the same pass would count
  an upstream layer's error again in every layer downstream of it, and
  correcting all at once overshoots (on the MobileNetV2 reference model
  that cost 14 dB of logit SQNR instead of gaining 1);
* ``sequential=True`` (one pass per layer): layer by layer in topological
  order, after the layers before it were corrected, the mean of ``quantized
  output - float model output`` (the float model on float inputs). This
  also removes the mean shift that activation quantization (clipping,
  rounding) brings in, which the one-shot form does not see.

The QDQ model runs with onnxruntime's basic optimizations (DequantizeLinear
-> float Conv -> QuantizeLinear, no integer fusion), since exposing a conv
output as a graph output prevents the fusion anyway; the float simulation
equals the integer kernel up to float32 accumulation error (and up to the
int16 saturation of full 8-bit weights in AVX2 kernels, which is why
``reduce_range`` is on for CPUs without VNNI).

The bias in a QDQ model is an int32 initializer behind a DequantizeLinear
with scale ``input scale x weight scale``: the corrected float value is
re-quantized at that scale. A layer without a bias gets one: int32 behind a
DequantizeLinear when its output feeds a QuantizeLinear (onnxruntime's
integer kernels take no float bias) or the model keeps its biases that way,
else a float constant (TensorRT-style graphs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.data import Dataset
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir.edit import FreshNames
from onnxopt.ir.model import Model, constant_array
from onnxopt.quantize.calibrate import augmented_proto, fixed_batch_size
from onnxopt.quantize.placement import name_nodes
from onnxopt.quantize.qdq import QParams, quantize_bias

#: ops whose bias is corrected (input 1 the weight, input 2 the bias, output channels on axis 1)
CORRECTABLE_OPS = ("Conv", "Gemm")
INT32_MAX = np.iinfo(np.int32).max
SHADOW_SUFFIX = "__bias_correction_float"
WEIGHT_MISMATCH = ("the float model's weight does not round to the quantized one (pass the float model after the "
                   "same cleanup quantize() ran: BatchNormalization folded)")


@dataclass
class LayerCorrection:
    """What correcting one layer did: the mean output error per channel it removed."""

    name: str
    op: str
    channels: int
    mean_abs_error: float  # mean over channels of |mean error| before the correction
    max_abs_error: float
    bias_added: bool = False
    values_clipped: int = 0  # int32 bias values that hit the int32 limit


@dataclass
class BiasCorrectionStats:
    sequential: bool
    samples: int
    batches: int
    passes: int  # passes over the data (QDQ model and float model together)
    seconds: float
    corrected: list[LayerCorrection] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node name -> why it was left alone

    def to_json(self) -> dict:
        return asdict(self)


# -- finding the layers ----------------------------------------------------------------------
def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 else None


def _dequantized_constant(t: gs.Tensor) -> gs.Node | None:
    """The DequantizeLinear that makes ``t`` from a constant integer tensor, else None."""
    dq = _producer(t)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = constant_array(dq.inputs[0])
    return dq if q is not None and q.dtype.kind in "iu" else None


def _has_input(node: gs.Node, i: int) -> bool:
    return len(node.inputs) > i and bool(node.inputs[i].name)


def _dq_float_value(dq: gs.Node) -> np.ndarray:
    """What a DequantizeLinear of constants outputs, in float64."""
    q = constant_array(dq.inputs[0]).astype(np.float64)
    scale = constant_array(dq.inputs[1]).astype(np.float64)
    zp = constant_array(dq.inputs[2]).astype(np.float64) if _has_input(dq, 2) else np.zeros_like(scale)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[int(dq.attrs.get("axis", 1)) % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def _float_constant(t: gs.Tensor) -> np.ndarray | None:
    arr = constant_array(t) if t.name else None
    return arr if arr is not None and arr.dtype.kind == "f" else None


@dataclass
class _Layer:
    """A quantized node of the QDQ model and the float node it came from."""

    node: gs.Node
    float_node: gs.Node

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def output(self) -> str:
        return self.node.outputs[0].name

    @property
    def float_output(self) -> str:
        return self.float_node.outputs[0].name


def _match_float(node: gs.Node, by_name: dict[str, gs.Node], by_output: dict[str, gs.Node]) -> gs.Node | None:
    cand = by_name.get(node.name)
    if cand is None or cand.op != node.op:
        cand = by_output.get(node.outputs[0].name)
    return cand if cand is not None and cand.op == node.op else None


def _quantizes_to(w: np.ndarray, dq: gs.Node) -> bool:
    """True if float weight ``w`` is within half a quantization step of what ``dq`` outputs.

    Catches a float model that is not the one that was quantized (e.g. before
    cleanup folded its BatchNormalization into the conv weights).
    """
    w_dq = _dq_float_value(dq)
    if w_dq.shape != w.shape:
        return False
    scale = constant_array(dq.inputs[1]).astype(np.float64)
    if scale.ndim == 1 and w.ndim > 1:
        shape = [1] * w.ndim
        shape[int(dq.attrs.get("axis", 1)) % w.ndim] = -1
        scale = scale.reshape(shape)
    return bool(np.all(np.abs(w.astype(np.float64) - w_dq) <= 0.5 * scale * (1 + 1e-3) + 1e-12))


def _named(float_model: Model) -> Model:
    """``float_model``, or a copy named the way quantize() names nodes when some node lacks a unique name."""
    names = [n.name for n in float_model.graph.nodes]
    if all(names) and len(set(names)) == len(names):
        return float_model
    work = float_model.copy()
    name_nodes(work)
    return work


def find_layers(float_model: Model, quant_model: Model, nodes: Sequence[str] | None
                ) -> tuple[list[_Layer], dict[str, str]]:
    """The quantized Conv/Gemm of ``quant_model`` (topological order) paired with ``float_model``'s; and the skipped."""
    quant_model.graph.toposort()
    qnodes = {n.name: n for n in quant_model.graph.nodes}
    if nodes is not None:
        unknown = [n for n in nodes if n not in qnodes]
        if unknown:
            raise OnnxoptError(f"bias correction: no node named {unknown[0]!r} in the quantized model")
    wanted = set(nodes) if nodes is not None else None
    float_model = _named(float_model)
    by_name = {n.name: n for n in float_model.graph.nodes if n.name}
    by_output = {n.outputs[0].name: n for n in float_model.graph.nodes if n.outputs}
    layers, skipped = [], {}
    for node in quant_model.graph.nodes:
        if wanted is not None and node.name not in wanted:
            continue
        if node.op not in CORRECTABLE_OPS:
            if wanted is not None:
                skipped[node.name] = f"{node.op} has no bias to correct (Conv and Gemm only)"
            continue
        if len(node.inputs) < 2 or _dequantized_constant(node.inputs[1]) is None:
            skipped[node.name] = "its weight is not quantized"
            continue
        fnode = _match_float(node, by_name, by_output)
        if fnode is None:
            skipped[node.name] = "no node of the same name (or output) and op in the float model"
            continue
        w = _float_constant(fnode.inputs[1]) if len(fnode.inputs) > 1 else None
        if w is None or not _quantizes_to(w, _producer(node.inputs[1])):
            skipped[node.name] = WEIGHT_MISMATCH
            continue
        if _has_input(fnode, 2) and _float_constant(fnode.inputs[2]) is None:
            skipped[node.name] = "the float model's bias is not a constant"
            continue
        why = _bias_problem(node)
        if why:
            skipped[node.name] = why
            continue
        layers.append(_Layer(node, fnode))
    return layers, skipped


def _bias_problem(node: gs.Node) -> str | None:
    if node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 0.0:
        return "Gemm with beta 0 ignores its bias"
    if not _has_input(node, 2):
        return None
    t = node.inputs[2]
    if _dequantized_constant(t) is None and _float_constant(t) is None:
        return "its bias is neither a constant nor a DequantizeLinear of one"
    return None


# -- streaming means --------------------------------------------------------------------------
def channel_sums(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel (axis 1) float64 sums over every other axis, and how many values each sum holds."""
    moved = np.moveaxis(np.asarray(arr), 1, 0).reshape(arr.shape[1], -1)
    return moved.sum(axis=1, dtype=np.float64), moved.shape[1]


class ChannelMeans:
    """Running per-channel sums of named tensors (or of differences of two tensors)."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, arr: np.ndarray) -> None:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"bias correction: tensor {key!r} holds NaN or Inf on the calibration data")
        s, n = channel_sums(arr)
        if key in self.sums:
            self.sums[key] += s
            self.counts[key] += n
        else:
            self.sums[key], self.counts[key] = s, n

    def mean(self, key: str) -> np.ndarray:
        return self.sums[key] / max(self.counts[key], 1)


class _Feeder:
    """Calibration batches cut to the model's fixed batch size (if any), up to ``max_samples``."""

    def __init__(self, model: Model, data: Dataset, max_samples: int, batch_size: int):
        self.fixed = fixed_batch_size(model)
        self.batch_size = self.fixed or batch_size
        self.data, self.max_samples = data, max_samples
        self.input_names = [t.name for t in model.graph.inputs]
        self.samples = self.batches = 0

    def __call__(self) -> Iterator[dict[str, np.ndarray]]:
        self.samples = self.batches = 0
        for batch in self.data.batches(self.batch_size, limit=self.max_samples):
            feed = {k: batch[k] for k in self.input_names if k in batch}
            n = len(next(iter(feed.values()))) if feed else 0
            if self.fixed and n != self.fixed:
                continue
            self.samples += n
            self.batches += 1
            yield feed
        if self.batches == 0:
            raise DataError(f"{self.data.description}: no calibration batch for bias correction")


def _run(session, outputs: list[str], feeder: _Feeder) -> Iterator[dict[str, np.ndarray]]:
    for feed in feeder():
        try:
            values = session.run(outputs, feed)
        except Exception as exc:  # onnxruntime's own error: the data does not fit the model
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"onnxruntime failed on the bias-correction data: {msg}") from exc
        yield dict(zip(outputs, values))


def _session(proto, threads: int | None):
    from onnxopt.runtime import make_session

    return make_session(proto, "cpu", threads=threads, optimization="basic", spin=False)


# -- measuring ----------------------------------------------------------------------------------
def _with_shadows(quant_model: Model, layers: list[_Layer]) -> tuple[Model, dict[str, str]]:
    """A copy of the QDQ model where each layer has a float twin on the same input; layer name -> twin output."""
    work = quant_model.copy()
    nodes = {n.name: n for n in work.graph.nodes}
    shadows = {}
    fresh = FreshNames(work.graph)
    for layer in layers:
        node = nodes[layer.name]
        out_name, w_name, b_name, node_name = map(fresh, [layer.output + SHADOW_SUFFIX,
                                                          f"{layer.output}{SHADOW_SUFFIX}_W",
                                                          f"{layer.output}{SHADOW_SUFFIX}_B", layer.name + SHADOW_SUFFIX])
        inputs = [node.inputs[0], gs.Constant(w_name, np.require(constant_array(layer.float_node.inputs[1]),
                                                                 requirements="C"))]
        if _has_input(layer.float_node, 2):
            inputs.append(gs.Constant(b_name, np.require(constant_array(layer.float_node.inputs[2]), requirements="C")))
        out = gs.Variable(out_name, dtype=np.float32)
        work.graph.nodes.append(gs.Node(node.op, node_name, dict(node.attrs), inputs, [out]))
        shadows[layer.name] = out_name
    work.graph.toposort()
    return work, shadows


def measure_one_shot(quant_model: Model, layers: list[_Layer], feeder: _Feeder,
                     threads: int | None) -> dict[str, np.ndarray]:
    """Mean per-channel (quantized - float twin) error of every layer, in one pass."""
    work, shadows = _with_shadows(quant_model, layers)
    outputs = list(dict.fromkeys([t for layer in layers for t in (layer.output, shadows[layer.name])]))
    sess = _session(augmented_proto(work, outputs), threads)
    means = ChannelMeans()
    for values in _run(sess, outputs, feeder):
        for layer in layers:
            diff = values[layer.output].astype(np.float64) - values[shadows[layer.name]]
            means.add(layer.name, diff)
    return {layer.name: means.mean(layer.name) for layer in layers}


def float_means(float_model: Model, layers: list[_Layer], feeder: _Feeder, threads: int | None) -> ChannelMeans:
    outputs = list(dict.fromkeys(layer.float_output for layer in layers))
    sess = _session(augmented_proto(float_model, outputs), threads)
    means = ChannelMeans()
    for values in _run(sess, outputs, feeder):
        for name, arr in values.items():
            means.add(name, arr)
    return means


def _truncated(model: Model, output: str) -> Model:
    """A copy of ``model`` computing only ``output`` (and what it needs)."""
    work = model.copy()
    t = work.graph.tensors()[output]
    if t.dtype is None:
        t.dtype = np.float32
    work.graph.outputs = [t]
    work.graph.cleanup(remove_unused_graph_inputs=False)
    return work


def measure_layer(quant_model: Model, layer: _Layer, feeder: _Feeder, threads: int | None) -> np.ndarray:
    """Mean per-channel output of one layer of the QDQ model as it is now."""
    work = _truncated(quant_model, layer.output)
    sess = _session(work.to_onnx(), threads)
    means = ChannelMeans()
    for values in _run(sess, [layer.output], feeder):
        means.add(layer.output, values[layer.output])
    return means.mean(layer.output)


# -- correcting -----------------------------------------------------------------------------------
def _own_constant(graph: gs.Graph, consumer: gs.Node, slot: int, values: np.ndarray) -> None:
    """Set input ``slot`` of ``consumer`` to ``values``: in place when it alone reads the constant."""
    t = consumer.inputs[slot]
    if isinstance(t, gs.Constant) and len(t.outputs) == 1:
        t.values = np.require(values, requirements="C")
    else:
        consumer.inputs[slot] = gs.Constant(FreshNames(graph)(t.name), np.require(values, requirements="C"))


def _model_keeps_int32_biases(graph: gs.Graph) -> bool:
    for n in graph.nodes:
        if n.op in CORRECTABLE_OPS and _has_input(n, 2):
            dq = _dequantized_constant(n.inputs[2])
            if dq is not None and constant_array(dq.inputs[0]).dtype == np.int32:
                return True
    return False


def _output_quantized(node: gs.Node) -> bool:
    """The node's output goes into a QuantizeLinear (maybe through a Relu/Clip): onnxruntime's QLinearConv/QGemm
    pattern, which takes an int32 bias behind a DequantizeLinear only."""
    readers = list(node.outputs[0].outputs)
    if len(readers) == 1 and readers[0].op in ("Relu", "Clip"):
        readers = list(readers[0].outputs[0].outputs)
    return bool(readers) and all(r.op == "QuantizeLinear" for r in readers)


def _input_scale(node: gs.Node) -> np.ndarray | None:
    dq = _producer(node.inputs[0])
    if dq is None or dq.op != "DequantizeLinear":
        return None
    s = constant_array(dq.inputs[1])
    return s if s is not None and s.size == 1 else None


def apply_correction(model: Model, node: gs.Node, error: np.ndarray) -> tuple[bool, int]:
    """Subtract ``error`` (per output channel) from ``node``'s bias; returns (bias added, int32 values clipped)."""
    g = model.graph
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    shift = error.astype(np.float64) / beta  # Gemm adds beta * C
    if _has_input(node, 2):
        t = node.inputs[2]
        dq = _dequantized_constant(t)
        if dq is not None:
            scale = constant_array(dq.inputs[1]).astype(np.float64)
            zp = constant_array(dq.inputs[2]).astype(np.float64) if _has_input(dq, 2) else 0.0
            q_old = constant_array(dq.inputs[0])
            new = _dq_float_value(dq).reshape(-1) - shift
            q = np.round(new / np.broadcast_to(scale, new.shape) + np.broadcast_to(zp, new.shape))
            info = np.iinfo(q_old.dtype)
            clipped = int(np.sum((q < info.min) | (q > info.max)))
            q = np.clip(q, max(info.min, -INT32_MAX), info.max).astype(q_old.dtype).reshape(q_old.shape)
            _own_constant(g, dq, 0, q)
            return False, clipped
        b = constant_array(t)
        new = np.broadcast_to(b.astype(np.float64).reshape(-1), shift.shape) - shift
        _own_constant(g, node, 2, new.astype(b.dtype))
        return False, 0
    # no bias yet: add one, int32 behind a DequantizeLinear where an integer kernel needs it or the model keeps its
    # biases that way (TensorRT-style graphs keep float biases)
    base = node.name or node.outputs[0].name
    in_scale = _input_scale(node)
    wdq = _producer(node.inputs[1])
    if in_scale is not None and (_output_quantized(node) or _model_keeps_int32_biases(g)):
        w_scale = constant_array(wdq.inputs[1]).astype(np.float32)
        axis = int(wdq.attrs.get("axis", 1)) if w_scale.ndim == 1 else None
        q, p, clipped = quantize_bias(-shift, in_scale, QParams(w_scale, np.zeros(w_scale.shape, np.int8), axis))
        fresh = FreshNames(g)
        qname, sname, zname, oname, dqname = (fresh(f"{base}_bias_{what}") for what in (
            "quantized", "scale", "zero_point", "dequantized", "DequantizeLinear"))
        attrs = {"axis": int(p.axis)} if p.axis is not None else {}
        out = gs.Variable(oname, dtype=np.float32, shape=[q.size])
        g.nodes.append(gs.Node("DequantizeLinear", dqname, attrs,
                               [gs.Constant(qname, q), gs.Constant(sname, np.require(p.scale, requirements="C")),
                                gs.Constant(zname, np.require(p.zero_point, requirements="C"))], [out]))
        added = out
    else:
        clipped = 0
        added = gs.Constant(FreshNames(g)(f"{base}_bias"), (-shift).astype(np.float32))
    if len(node.inputs) == 2:
        node.inputs.append(added)
    else:
        node.inputs[2] = added
    g.toposort()
    return True, clipped


def _bias_fits(node: gs.Node, channels: int) -> bool:
    """A present bias holds one value per output channel (a float one may also be a single broadcast value)."""
    if not _has_input(node, 2):
        return True
    dq = _dequantized_constant(node.inputs[2])
    if dq is not None:
        return constant_array(dq.inputs[0]).size == channels
    return constant_array(node.inputs[2]).size in (1, channels)


def _correct(model: Model, layer: _Layer, error: np.ndarray, stats: BiasCorrectionStats) -> None:
    if not _bias_fits(layer.node, error.size):
        stats.skipped[layer.name] = "its bias is not one value per output channel"
        return
    added, clipped = apply_correction(model, layer.node, error)
    stats.corrected.append(_record(layer, error, added, clipped))


def _record(layer: _Layer, error: np.ndarray, added: bool, clipped: int) -> LayerCorrection:
    err = np.abs(error)
    return LayerCorrection(layer.name, layer.node.op, int(error.size), float(err.mean()), float(err.max()), added,
                           clipped)


def correct_bias(float_model: Model, quant_model: Model, calib: Dataset, *, nodes: Sequence[str] | None = None,
                 max_samples: int = 256, batch_size: int = 16, sequential: bool = False,
                 threads: int | None = None) -> BiasCorrectionStats:
    """Correct the biases of ``quant_model``'s quantized Conv/Gemm in place; ``float_model`` is not changed.

    ``float_model``: the float model ``quant_model`` was quantized from, after
    the same cleanup (layers are matched by node name, else by output name,
    and must have the same op and weight shape). ``nodes``: names of the
    layers to correct (default: every quantized Conv/Gemm). ``max_samples``:
    calibration samples to average over. ``sequential``: measure and correct
    one layer at a time against the float model's outputs (one pass over
    the data per layer) instead of all layers from one pass.
    """
    if max_samples < 1:
        raise DataError(f"bias correction needs max_samples >= 1, got {max_samples}")
    t0 = time.perf_counter()
    layers, skipped = find_layers(float_model, quant_model, nodes)
    if not layers and WEIGHT_MISMATCH in skipped.values():
        raise DataError(f"bias correction: {WEIGHT_MISMATCH}")
    stats = BiasCorrectionStats(sequential, 0, 0, 0, 0.0, [], skipped)
    if not layers:
        stats.seconds = time.perf_counter() - t0
        return stats
    feeder = _Feeder(quant_model, calib, max_samples, batch_size)
    if sequential:
        reference = float_means(float_model, layers, feeder, threads)
        stats.passes = 1
        for layer in layers:
            error = measure_layer(quant_model, layer, feeder, threads) - reference.mean(layer.float_output)
            stats.passes += 1
            _correct(quant_model, layer, error, stats)
    else:
        errors = measure_one_shot(quant_model, layers, feeder, threads)
        stats.passes = 1
        for layer in layers:
            _correct(quant_model, layer, errors[layer.name], stats)
    stats.samples, stats.batches = feeder.samples, feeder.batches
    quant_model.notes.append(f"bias correction ({'sequential' if sequential else 'one-shot'}) adjusted the biases "
                             f"of {len(stats.corrected)} layer(s) from {stats.samples} calibration sample(s)")
    stats.seconds = time.perf_counter() - t0
    return stats
