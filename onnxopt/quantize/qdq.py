"""Apply a :class:`~onnxopt.quantize.placement.QuantPlan` and ranges: insert QuantizeLinear/DequantizeLinear.

* each quantized activation gets exactly one QuantizeLinear, and each
  consumer its own DequantizeLinear (onnxruntime's QDQ selectors match one
  node unit per DQ); a graph output keeps its name on a final DQ. Int8
  (symmetric) activations on the CPU target get one Q per DQ instead:
  onnxruntime on x86 converts an int8 Q/DQ pair to uint8 only when the Q has
  a single consumer;
* weights are stored as int8 initializers (symmetric, zero point 0, per
  output channel or per tensor; 7-bit with ``reduce_range``) read through a
  DequantizeLinear, never as float weights with a Q->DQ pair;
* biases are int32 with scale = input scale x weight scale, zero point 0;
* pass-through ops reuse their input's scale/zero point initializers, so
  onnxruntime can drop the Q/DQ pair around them.

Registered as the ``insert_qdq`` pass, which reads ranges from a file saved
by ``onnxopt quantize --save-ranges`` (passes never see calibration data).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import OnnxoptError
from onnxopt.ir.edit import FreshNames
from onnxopt.ir.model import Model, constant_array
from onnxopt.ir.opset import ensure_opset
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes.base import Pass, PassResult, register
from onnxopt.quantize.config import Activations, QuantizeConfig
from onnxopt.quantize.placement import QuantPlan, name_nodes, plan_quantization
from onnxopt.quantize.ranges import Ranges, model_fingerprint

#: QuantizeLinear with a per-channel ``axis`` needs opset 13
QDQ_MIN_OPSET = 13
INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray       # float32, scalar or 1-D
    zero_point: np.ndarray  # uint8/int8/int32, same shape as scale
    axis: int | None = None


def activation_qparams(lo: float, hi: float, activations: Activations) -> QParams:
    """uint8 with a zero point over [min(lo,0), max(hi,0)], or int8 symmetric with zero point 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if activations is Activations.SYMMETRIC:
        amax = max(-lo, hi)
        scale = amax / 127.0 if amax > 0 else 1.0
        return QParams(np.array(scale, np.float32), np.array(0, np.int8))
    scale = (hi - lo) / 255.0
    if scale <= np.finfo(np.float32).tiny:
        return QParams(np.array(1.0, np.float32), np.array(0, np.uint8))
    scale32 = np.float32(scale)
    zp = int(np.clip(round(-lo / float(scale32)), 0, 255))
    return QParams(np.array(scale32, np.float32), np.array(zp, np.uint8))


def quantize_weight(w: np.ndarray, axis: int | None, reduce_range: bool) -> tuple[np.ndarray, QParams]:
    """Symmetric int8 weights: per channel along ``axis`` or per tensor; qmax 64 with ``reduce_range`` (as ORT)."""
    qmax = 64.0 if reduce_range else 127.0
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.array(np.abs(w).max() if w.size else 0.0, dtype=np.float64)
    else:
        other = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=other).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, QParams(scale, np.zeros(scale.shape, np.int8), axis)


def quantize_bias(b: np.ndarray, input_scale: np.ndarray, weight: QParams) -> tuple[np.ndarray, QParams, int]:
    """int32 bias with scale input_scale x weight_scale; returns (values, params, number clipped)."""
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    scale = (np.float64(input_scale) * weight.scale.astype(np.float64)).astype(np.float32)
    q = np.round(b / scale.astype(np.float64))
    clipped = int(np.sum(np.abs(q) > INT32_MAX))
    q = np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32)
    axis = 0 if scale.ndim == 1 else None
    return q, QParams(scale, np.zeros(scale.shape, np.int32), axis), clipped


@dataclass
class InsertStats:
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    weights: int = 0
    biases: int = 0
    bias_values_clipped: int = 0


class _Inserter:
    def __init__(self, model: Model, plan: QuantPlan, ranges: Ranges, config: QuantizeConfig):
        self.model, self.plan, self.ranges = model, plan, ranges
        self.config = config.resolved()
        self.graph = model.graph
        self.names = FreshNames(self.graph)
        self.stats = InsertStats()
        self.act_params: dict[str, tuple[QParams, gs.Constant, gs.Constant]] = {}
        self.weight_cache: dict[tuple[str, int | None], tuple[gs.Constant, gs.Constant, gs.Constant, QParams]] = {}

    def _dq(self, src: gs.Tensor, scale: gs.Constant, zp: gs.Constant, out: gs.Variable, axis: int | None,
            base: str) -> gs.Node:
        attrs = {"axis": int(axis)} if axis is not None else {}
        node = gs.Node("DequantizeLinear", self.names(base + "_DequantizeLinear"), attrs, [src, scale, zp], [out])
        self.graph.nodes.append(node)
        self.stats.dequantize_nodes += 1
        return node

    def _const(self, base: str, values: np.ndarray) -> gs.Constant:
        # np.require, not np.ascontiguousarray: that turns 0-d scales into shape [1], and onnxruntime's
        # QLinearAdd/QLinearMul fusion wants scalar scales and zero points
        return gs.Constant(self.names(base), np.require(values, requirements="C"))

    def params_for(self, root: str) -> tuple[QParams, gs.Constant, gs.Constant]:
        if root not in self.act_params:
            lo, hi = self.ranges[root]
            p = activation_qparams(lo, hi, self.config.activations)
            self.act_params[root] = (p, self._const(root + "_scale", p.scale), self._const(root + "_zero_point", p.zero_point))
        return self.act_params[root]

    # -- activations -------------------------------------------------------------
    def _q(self, src: gs.Tensor, scale: gs.Constant, zp: gs.Constant, name: str, shape) -> gs.Variable:
        out = gs.Variable(self.names(name + "_quantized"), dtype=zp.values.dtype, shape=shape)
        self.graph.nodes.append(gs.Node("QuantizeLinear", self.names(name + "_QuantizeLinear"), {}, [src, scale, zp], [out]))
        self.stats.quantize_nodes += 1
        return out

    def quantize_tensor(self, name: str, quantized_readers: dict[int, set[int]]) -> None:
        """One Q for ``name`` and one DQ per consumer (per consumer a Q/DQ pair where the plan says so)."""
        t = self.graph.tensors()[name]
        params, scale, zp = self.params_for(self.plan.tensors[name])
        is_output = any(o is t for o in self.graph.outputs)
        is_input = any(i is t for i in self.graph.inputs)
        readers = []  # (consumer, input slots to rewire)
        for consumer in list(t.outputs):
            slots = [i for i, x in enumerate(consumer.inputs) if x is t]
            if not self.plan.dq_for_float_consumers:
                slots = [i for i in slots if i in quantized_readers.get(id(consumer), set())]
            if slots:
                readers.append((consumer, slots))
        src = t
        rename_output = is_output and self.plan.dq_for_float_consumers and not is_input and len(t.inputs) == 1
        if rename_output:
            producer = t.inputs[0]
            src = gs.Variable(self.names(name + "_float"), dtype=t.dtype, shape=t.shape)
            for i, o in enumerate(producer.outputs):
                if o is t:
                    producer.outputs[i] = src
        n_dq = len(readers) + (1 if rename_output else 0)
        if self.plan.q_per_consumer and n_dq > 1:
            # each Q its own zero-point initializer: with a shared one onnxruntime's common-subexpression
            # elimination merges the Qs again (it compares inputs by name)
            make_q = lambda: self._q(src, scale, self._const(name + "_zero_point", params.zero_point),
                                     name, t.shape)
        else:
            shared = self._q(src, scale, zp, name, t.shape)
            make_q = lambda: shared
        for consumer, slots in readers:
            out = gs.Variable(self.names(f"{name}_dequantized"), dtype=np.float32, shape=t.shape)
            self._dq(make_q(), scale, zp, out, None, name)
            for i in slots:
                consumer.inputs[i] = out
        if rename_output:
            self._dq(make_q(), scale, zp, t, None, name)  # the graph output keeps its name

    # -- weights and biases --------------------------------------------------------
    def quantize_weight_input(self, node: gs.Node, slot: int, axis: int | None) -> QParams:
        wt = node.inputs[slot]
        key = (wt.name, axis)
        if key not in self.weight_cache:
            q, p = quantize_weight(constant_array(wt), axis, bool(self.config.reduce_range))
            self.weight_cache[key] = (self._const(wt.name + "_quantized", q), self._const(wt.name + "_scale", p.scale),
                                      self._const(wt.name + "_zero_point", p.zero_point), p)
            self.stats.weights += 1
        qc, sc, zc, p = self.weight_cache[key]
        out = gs.Variable(self.names(wt.name + "_dequantized"), dtype=np.float32, shape=list(qc.values.shape))
        self._dq(qc, sc, zc, out, axis, wt.name)
        node.inputs[slot] = out
        return p

    def quantize_bias_input(self, node: gs.Node, slot: int, input_scale: np.ndarray, wparams: QParams) -> None:
        bt = node.inputs[slot]
        q, p, clipped = quantize_bias(constant_array(bt), input_scale, wparams)
        self.stats.bias_values_clipped += clipped
        out = gs.Variable(self.names(bt.name + "_dequantized"), dtype=np.float32, shape=[q.size])
        self._dq(self._const(bt.name + "_quantized", q), self._const(bt.name + "_scale", p.scale),
                 self._const(bt.name + "_zero_point", p.zero_point), out, p.axis, bt.name)
        node.inputs[slot] = out
        self.stats.biases += 1

    def run(self) -> InsertStats:
        nodes = {n.name: n for n in self.graph.nodes}
        # weights and biases first: the bias scale needs the input's activation scale
        for qn in self.plan.nodes.values():
            if qn.weight is None:
                continue
            node = nodes[qn.name]
            wparams = self.quantize_weight_input(node, qn.weight, qn.weight_axis)
            if qn.bias is not None and qn.activations:
                root = self.plan.tensors[node.inputs[qn.activations[0]].name]
                self.quantize_bias_input(node, qn.bias, self.params_for(root)[0].scale, wparams)
        readers: dict[int, set[int]] = {}
        for qn in self.plan.nodes.values():
            readers.setdefault(id(nodes[qn.name]), set()).update(qn.activations)
        for name in self.plan.tensors:
            self.quantize_tensor(name, readers)
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return self.stats


def insert_qdq(model: Model, plan: QuantPlan, ranges: Ranges, config: QuantizeConfig) -> InsertStats:
    """Rewrite ``model`` in place following ``plan``, with scales from ``ranges``."""
    if model.opset < QDQ_MIN_OPSET:
        raise OnnxoptError(f"QDQ insertion needs opset >= {QDQ_MIN_OPSET}; upgrade the model first")
    ranges.check_applies_to("", plan.calibration_tensors())
    return _Inserter(model, plan, ranges, config).run()


def prepare_for_quantization(model: Model) -> tuple[Model, str]:
    """Opset >= 13, fingerprint (for ranges files), unique node names, dtypes/shapes, topological order."""
    model = ensure_opset(model, QDQ_MIN_OPSET, who="INT8 quantization (per-channel QuantizeLinear)")
    fingerprint = model_fingerprint(model)
    name_nodes(model)
    infer_shapes(model)
    model.graph.toposort()
    return model, fingerprint


@register
class InsertQDQ(Pass):
    """Quantize with ranges saved by ``onnxopt quantize --save-ranges`` (no data needed)."""

    name = "insert_qdq"
    summary = "insert QuantizeLinear/DequantizeLinear (INT8) using a saved ranges file"
    min_opset = QDQ_MIN_OPSET

    def __init__(self, ranges: str, activations: str | None = None, weights: str = "per-channel",
                 reduce_range: bool | None = None, target: str = "cpu", exclude: list[str] | None = None):
        self.ranges = ranges
        self.activations = activations
        self.weights = weights
        self.reduce_range = reduce_range
        self.target = target
        self.exclude = list(exclude or [])
        self.config = QuantizeConfig(activations=activations, weights=weights, reduce_range=reduce_range,
                                     target=target, exclude=tuple(self.exclude))

    def run(self, model: Model) -> PassResult:
        ranges = Ranges.load(self.ranges)
        model, fingerprint = prepare_for_quantization(model)
        config = self.config
        if config.activations is None and ranges.activations in (a.value for a in Activations):
            config = replace(config, activations=Activations(ranges.activations))
        plan = plan_quantization(model, config)
        if plan.is_empty():
            return PassResult(model, False, {"quantized_nodes": 0})
        ranges.check_applies_to(fingerprint, plan.calibration_tensors(), where=f"ranges in {self.ranges}")
        stats = insert_qdq(model, plan, ranges, config)
        model.notes.extend(config.resolved().notes)
        return PassResult(model, True, {"quantized_nodes": len(plan.nodes), "quantize_nodes": stats.quantize_nodes,
                                        "dequantize_nodes": stats.dequantize_nodes, "weights": stats.weights})

