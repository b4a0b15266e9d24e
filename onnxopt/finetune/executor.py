"""Differentiable execution of a :class:`~onnxopt.ir.Model`: the graph as a ``torch.nn.Module``.

:class:`GraphExecutor` runs the graph node by node in topological order with
the functions of :data:`onnxopt.finetune.ops.OPS`. What it holds:

* **parameters**: float initializers that reach a weight slot (Conv/Gemm
  weights and biases, BatchNorm scale and bias, per-channel Mul/Add...),
  possibly through pass-through ops (Identity, Transpose, Reshape, Cast,
  QuantizeLinear/DequantizeLinear). Each is an ``nn.Parameter`` mapped by its
  initializer name (:meth:`GraphExecutor.parameters_by_name`).
* **quantized weights**: an integer initializer read by a DequantizeLinear
  that feeds a weight slot gets a float *shadow* parameter, initialized to its
  dequantized value and fake-quantized in the forward pass (straight-through
  estimator) with the DequantizeLinear's own scale and zero point, so the
  forward pass equals the QDQ graph's and write-back can re-quantize with the
  same scales (:class:`QuantizedWeight`).
* **buffers**: every other initializer (shape constants, Clip bounds,
  quantization scales unless ``learn_scales``, BatchNorm running statistics).
* **folded values**: nodes whose inputs are all constant (Shape/Gather/Concat
  chains on constants, Constant nodes) are evaluated once when the executor is
  built, so the forward pass only runs what depends on the input or weights.

Floats are computed in float32 whatever the graph's float types (write-back
restores each initializer's own dtype). The input model is never modified; write-back (:mod:`onnxopt.finetune.writeback`)
makes a copy.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
import torch
from torch import nn

from onnxopt.errors import DataError, ModelLoadError, OnnxoptError
from onnxopt.finetune.ops import (
    ExecMode,
    NodeContext,
    OpSpec,
    as_tensor,
    op_spec,
    quantize_weight_step,
)
from onnxopt.ir.model import Model

#: symmetric int8 weights whose largest magnitude is at most this were quantized with reduce_range (7 bits)
REDUCED_RANGE_QMAX = 64
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class QuantizedWeight:
    """An integer weight initializer trained through a float shadow parameter."""

    name: str                # the integer initializer (also the shadow parameter's name)
    scale: str               # the DequantizeLinear's scale initializer
    zero_point: str | None   # its zero-point initializer, if any
    axis: int
    lo: int                  # the integer range re-quantization clamps to
    hi: int
    dtype: np.dtype


@dataclass
class _Step:
    fn: object
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    ctx: NodeContext


def topological_nodes(model: Model) -> list[gs.Node]:
    """The model's nodes in a topological order that keeps the file's order where it can (no mutation)."""
    view = model.nx_view()
    try:
        order = list(nx.lexicographical_topological_sort(view))
    except nx.NetworkXUnfeasible as exc:
        raise ModelLoadError("the graph has a cycle; it cannot be executed") from exc
    return [view.nodes[i]["node"] for i in order]


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None


def _weight_range(q: np.ndarray, zero_point: np.ndarray | None) -> tuple[int, int]:
    """Integer range for re-quantizing a trained weight, as the quantizer that made it would clamp."""
    if q.dtype == np.int32:
        return -INT32_MAX, INT32_MAX
    info = np.iinfo(q.dtype)
    symmetric = zero_point is None or not np.any(zero_point)
    if q.dtype == np.int8 and symmetric:
        bound = REDUCED_RANGE_QMAX if q.size and int(np.abs(q.astype(np.int32)).max()) <= REDUCED_RANGE_QMAX else 127
        return -bound, bound
    return int(info.min), int(info.max)


def _key(name: str, used: set[str]) -> str:
    """A torch-safe attribute name for an ONNX tensor name (no dots, unique)."""
    base = re.sub(r"\W", "_", name) or "t"
    if base[0].isdigit():
        base = "t_" + base
    key, i = base, 0
    while key in used:
        i += 1
        key = f"{base}_{i}"
    used.add(key)
    return key


class _Classifier:
    """Which initializers are trainable, which are quantized weights (see the module docstring)."""

    def __init__(self, nodes: list[gs.Node], specs: dict[int, OpSpec], learn_scales: bool):
        self.trainable: set[str] = set()
        self.quantized: dict[str, QuantizedWeight] = {}
        self.notes: list[str] = []
        for node in nodes:
            spec = specs[id(node)]
            for slot, t in enumerate(node.inputs):
                if slot in spec.weights or slot in spec.per_channel_weights:
                    self._trace(t, per_channel=slot not in spec.weights)
                if learn_scales and node.op in ("QuantizeLinear", "DequantizeLinear") and slot == 1:
                    if isinstance(t, gs.Constant) and t.values.dtype.kind == "f":
                        self.trainable.add(t.name)

    def _trace(self, t: gs.Tensor, per_channel: bool) -> None:
        through_dq: gs.Node | None = None
        seen = 0
        while not isinstance(t, gs.Constant):
            node = _producer(t)
            if node is None or not node.inputs or seen > 16:
                return
            if node.op not in _PASS_THROUGH:
                return
            if node.op == "DequantizeLinear":
                through_dq = node
            t = node.inputs[0]
            seen += 1
        values = t.values
        if per_channel and values.size <= 1:
            return
        if values.dtype.kind == "f":
            self.trainable.add(t.name)
        elif values.dtype.kind in "iu" and through_dq is not None and through_dq.inputs[0] is t:
            self._quantized(t, through_dq)

    def _quantized(self, t: gs.Constant, dq: gs.Node) -> None:
        if t.name in self.quantized:
            return
        scale = dq.inputs[1]
        zp = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
        if not isinstance(scale, gs.Constant) or (zp is not None and not isinstance(zp, gs.Constant)):
            self.notes.append(f"quantized weight {t.name!r} stays fixed: its scale or zero point is computed, "
                              "not an initializer")
            return
        lo, hi = _weight_range(t.values, zp.values if zp is not None else None)
        self.quantized[t.name] = QuantizedWeight(t.name, scale.name, zp.name if zp is not None else None,
                                                 int(dq.attrs.get("axis", 1)), lo, hi, t.values.dtype)


_PASS_THROUGH = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "CastLike",
                           "QuantizeLinear", "DequantizeLinear"})


class GraphExecutor(nn.Module):
    """Run an ONNX graph in torch with its float initializers as trainable parameters."""

    def __init__(self, model: Model, *, learn_scales: bool = False):
        super().__init__()
        self.source = model
        self.mode = ExecMode()
        self.notes: list[str] = []
        nodes = topological_nodes(model)
        specs = {id(n): op_spec(n.op, n.domain, n.name or n.op) for n in nodes}
        classes = _Classifier(nodes, specs, learn_scales)
        self.notes += classes.notes
        self.quantized_weights: dict[str, QuantizedWeight] = classes.quantized
        self.input_names = [t.name for t in model.graph.inputs if not isinstance(t, gs.Constant)]
        self.input_dtypes = {t.name: t.dtype for t in model.graph.inputs if not isinstance(t, gs.Constant)}
        self.output_names = [t.name for t in model.graph.outputs]

        used: set[str] = set()
        self.params = nn.ParameterDict()
        self.consts = nn.Module()  # buffers: fixed initializers and folded values
        self.param_keys: dict[str, str] = {}  # initializer name -> key in self.params
        self.const_keys: dict[str, str] = {}  # tensor name -> buffer key in self.consts
        self._lists: dict[str, list] = {}  # folded sequence values (SplitToSequence on constants)
        for name, c in model.initializers().items():
            values = c.values
            if name in classes.trainable:
                self._add_param(name, as_tensor(values.astype(np.float32)), used)
            else:
                self._add_buffer(name, as_tensor(values), used)
        for name, qw in self.quantized_weights.items():
            self._add_param(name, self._dequantized(qw), used)

        self.batchnorms: list[tuple[str, str, str]] = []  # (node name, mean initializer, var initializer)
        self._steps: list[_Step] = [self._shadow_step(qw) for qw in self.quantized_weights.values()]
        opset = model.opset
        seen_names: set[str] = set()
        for index, node in enumerate(nodes):
            label = node.name if node.name and node.name not in seen_names else f"{node.op}#{index}"
            seen_names.add(label)
            ctx = NodeContext(label, node.op, opset, len(node.outputs), self.mode)
            step = _Step(specs[id(node)].fn, tuple(t.name for t in node.inputs), tuple(t.name for t in node.outputs),
                         dict(node.attrs), ctx)
            if node.op == "BatchNormalization":
                self.batchnorms.append((ctx.name, node.inputs[3].name, node.inputs[4].name))
            if all(not n or self._is_fixed(n) for n in step.inputs):
                self._fold(step, used)
            else:
                self._steps.append(step)

    # -- construction helpers -------------------------------------------------------------------------------
    def _add_param(self, name: str, value: torch.Tensor, used: set[str]) -> None:
        key = _key(name, used)
        self.params[key] = nn.Parameter(value.float())
        self.param_keys[name] = key

    def _add_buffer(self, name: str, value: torch.Tensor, used: set[str], persistent: bool = True) -> None:
        key = _key(name, used)
        self.consts.register_buffer(key, value, persistent=persistent)
        self.const_keys[name] = key

    def _is_fixed(self, name: str) -> bool:
        return name in self._lists or (name in self.const_keys and name not in self.quantized_weights)

    def _dequantized(self, qw: QuantizedWeight) -> torch.Tensor:
        inits = self.source.initializers()
        q = inits[qw.name].values.astype(np.float64)
        scale = inits[qw.scale].values.astype(np.float64)
        zp = inits[qw.zero_point].values.astype(np.float64) if qw.zero_point else np.zeros_like(scale)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[qw.axis % q.ndim] = -1
        return torch.from_numpy(((q - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32))

    def _shadow_step(self, qw: QuantizedWeight) -> _Step:
        ctx = NodeContext(f"fake-quantize {qw.name}", "FakeQuantizeWeight", self.source.opset, 1, self.mode)
        return _Step(quantize_weight_step, (_shadow_name(qw.name), qw.scale, qw.zero_point or ""), (qw.name,),
                     {"axis": qw.axis, "lo": qw.lo, "hi": qw.hi}, ctx)

    def _fold(self, step: _Step, used: set[str]) -> None:
        """Evaluate a node whose inputs are all fixed, once, and keep its outputs as buffers."""
        env = {n: self._fixed_value(n) for n in step.inputs if n}
        with torch.no_grad():
            outs = self._run(step, env)
        for name, value in outs.items():
            if isinstance(value, list):
                self._lists[name] = value
            else:
                self._add_buffer(name, value, used, persistent=False)

    def _fixed_value(self, name: str):
        if name in self._lists:
            return self._lists[name]
        return getattr(self.consts, self.const_keys[name])

    @staticmethod
    def _run(step: _Step, env: dict) -> dict:
        ins = [env[n] if n else None for n in step.inputs]
        try:
            out = step.fn(ins, step.attrs, step.ctx)
        except OnnxoptError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise OnnxoptError(f"{step.ctx.op} node {step.ctx.name!r} failed in the torch executor: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        outs = out if isinstance(out, list) else [out]  # a list is the node's outputs; a sequence is a list in it
        return {name: v for name, v in zip(step.outputs, outs) if name}

    # -- running ---------------------------------------------------------------------------------------------
    def feeds(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """Inputs by name (positional arguments in graph-input order), as torch tensors of the input dtype."""
        named = dict(zip(self.input_names, args))
        named.update(kwargs)
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise DataError(f"no value for model input(s) {', '.join(missing)} (inputs: {', '.join(self.input_names)})")
        device = next(iter(self.params.values())).device if len(self.params) else torch.device("cpu")
        out = {}
        for name in self.input_names:
            v = named[name]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            want = self.input_dtypes.get(name)
            if want is not None:
                want = np.dtype(np.float32) if np.dtype(want).kind == "f" else want  # floats run in float32
                t = t.to(torch.from_numpy(np.empty(0, dtype=want)).dtype)
            out[name] = t.to(device)
        return out

    def forward(self, *args, extra_outputs=(), **kwargs) -> dict[str, torch.Tensor]:
        """Outputs by name (graph outputs first, then ``extra_outputs``: intermediate tensors by name)."""
        env: dict = {name: getattr(self.consts, key) for name, key in self.const_keys.items()}
        env.update(self._lists)
        for name, key in self.param_keys.items():
            env[_shadow_name(name) if name in self.quantized_weights else name] = self.params[key]
        env.update(self.feeds(args, kwargs))
        for step in self._steps:
            env.update(self._run(step, env))
        names = list(self.output_names) + [n for n in extra_outputs if n not in self.output_names]
        missing = [n for n in names if n not in env]
        if missing:
            raise OnnxoptError(f"the model has no tensor {missing[0]!r}")
        return {n: env[n] for n in names}

    # -- access for training and write-back -------------------------------------------------------------------
    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """Initializer name -> trainable parameter (quantized weights: their float shadow)."""
        return {name: self.params[key] for name, key in self.param_keys.items()}

    def buffer(self, name: str) -> torch.Tensor:
        return getattr(self.consts, self.const_keys[name])

    def tensor_names(self) -> set[str]:
        return set(self.source.tensors())

    def initializer_values(self) -> dict[str, np.ndarray]:
        """Current values of the initializers training can change, in their original dtypes.

        Float parameters, BatchNorm running statistics, and quantized weights
        re-quantized from their shadows with the (possibly learned) scales.
        """
        inits = self.source.initializers()
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, p in self.parameters_by_name().items():
                if name in self.quantized_weights:
                    continue
                out[name] = p.detach().cpu().numpy().astype(inits[name].values.dtype)
            for _node, mean, var in self.batchnorms:
                for name in (mean, var):
                    if name in self.const_keys and name not in out:
                        out[name] = self.buffer(name).detach().cpu().numpy().astype(inits[name].values.dtype)
            for name, qw in self.quantized_weights.items():
                env = {_shadow_name(name): self.params[self.param_keys[name]],
                       qw.scale: self._scale_value(qw.scale),
                       **({qw.zero_point: self.buffer(qw.zero_point)} if qw.zero_point else {})}
                q = self._run(self._shadow_step(qw), env)[name]
                out[name] = q.cpu().numpy().astype(qw.dtype)
        return out

    def _scale_value(self, name: str) -> torch.Tensor:
        if name in self.param_keys:
            return self.params[self.param_keys[name]]
        return self.buffer(name)

    def node_contexts(self) -> dict[str, NodeContext]:
        """Node name -> its context, for nodes that run in the forward pass (not folded ones)."""
        return {step.ctx.name: step.ctx for step in self._steps}

    @contextmanager
    def bn_reestimation(self):
        """Within: BatchNormalization normalizes with batch statistics and averages them into its running ones."""
        self.mode.bn_reestimate = True
        for step in self._steps:
            step.ctx.state.pop("count", None)
        try:
            yield self
        finally:
            self.mode.bn_reestimate = False


def _shadow_name(name: str) -> str:
    """Environment name of a quantized weight's float shadow (not a valid ONNX name, so no clash)."""
    return name + "\x00float"
