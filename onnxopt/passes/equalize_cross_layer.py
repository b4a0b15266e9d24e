"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.1).

For two convolutions in a chain, ``Conv1 -> f -> Conv2`` with ``f``
positive-homogeneous per channel (``f(x / s) = f(x) / s`` for ``s > 0``:
Relu, LeakyRelu, PRelu, MaxPool, AveragePool, or nothing), dividing output
channel ``i`` of Conv1 (weight row and bias) by ``s_i`` and multiplying the
weights that read input channel ``i`` of Conv2 by ``s_i`` leaves the
function unchanged. Choosing

    s_i = sqrt(r1_i / r2_i)        (the paper's ``(1 / r2_i) sqrt(r1_i r2_i)``)

with ``r1_i = max |W1[i]|`` (output channel ``i`` of Conv1) and
``r2_i = max |W2[:, i]|`` (input channel ``i`` of Conv2) makes both ranges
``sqrt(r1_i r2_i)``: each channel's weight range becomes the same in both
layers, which is the optimum of the paper's per-tensor precision objective.
Chains (``A -> B -> C``) are swept pair by pair until no scale moves by more
than ``tolerance`` (or ``max_iterations`` sweeps).

Conv2 may be grouped or depthwise (input channel ``i`` is then read by the
output channels of its group only) and Conv1 any convolution; Conv1's output
must feed nothing but Conv2 (through single-consumer ``f`` nodes), and be no
graph output.

ReLU6 (``Clip(0, 6)``) is not homogeneous: ``clip(x / s, 0, 6) != clip(x, 0,
6) / s`` wherever the clip bites, and ONNX Clip takes scalar bounds only, so
the equalized form of the clip cannot be written as a Clip. By default such
pairs are left alone (exact). ``relu6_as_relu=True`` does what AIMET does
for MobileNetV2: the Clip(0, hi) nodes inside the pairs become Relu, which
changes the float function wherever an activation exceeded ``hi``; measure
the accuracy (``tools/bench/quant_tools.py`` does) before keeping it.

High-bias absorption (the paper's other data-free step) is not done here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir.edit import detach, is_graph_io, single_consumer
from onnxopt.ir.model import Model, constant_array
from onnxopt.passes._conv_affine import _set_constant_input, float_constant, has_input
from onnxopt.passes.base import Pass, PassResult, register

#: ops with f(x * s) = f(x) * s for a positive per-channel s (only their first output may be used)
HOMOGENEOUS_OPS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool")
#: a weight range below this is treated as a dead channel and left unscaled
TINY_RANGE = 1e-12


@dataclass
class EqualizationPair:
    """``first`` -> ``between`` (homogeneous or, with relu6_as_relu, Clip(0, hi)) -> ``second``."""

    first: gs.Node
    between: list[gs.Node]
    second: gs.Node

    @property
    def clips(self) -> list[gs.Node]:
        return [n for n in self.between if n.op == "Clip"]


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip with constant bounds (absent = -inf/+inf), from inputs (opset 11+) or attributes."""
    bounds = []
    for slot, attr, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if has_input(node, slot):
            value = constant_array(node.inputs[slot])
            if value is None or np.size(value) != 1:
                return None
            bounds.append(float(np.asarray(value).reshape(())))
        else:
            bounds.append(float(node.attrs.get(attr, default)))
    lo, hi = bounds
    lo = -np.inf if lo <= -np.finfo(np.float32).max else lo
    hi = np.inf if hi >= np.finfo(np.float32).max else hi
    return lo, hi


def is_homogeneous(node: gs.Node) -> bool:
    """True if ``node`` commutes with a positive per-channel scale (Clip only as Relu or identity)."""
    if node.op == "Clip":
        bounds = clip_bounds(node)
        return bounds is not None and bounds[0] in (0.0, -np.inf) and bounds[1] == np.inf
    return node.op in HOMOGENEOUS_OPS


def is_relu6_like(node: gs.Node) -> bool:
    """Clip(0, hi) with a finite hi > 0: ReLU6 and its kin."""
    if node.op != "Clip":
        return False
    bounds = clip_bounds(node)
    return bounds is not None and bounds[0] == 0.0 and 0.0 < bounds[1] < np.inf


def _conv_weight(node: gs.Node) -> np.ndarray | None:
    if node.op != "Conv" or len(node.inputs) < 2:
        return None
    w = float_constant(node.inputs[1])
    if w is None or w.ndim < 3:
        return None
    if has_input(node, 2) and float_constant(node.inputs[2]) is None:
        return None  # a bias we cannot rescale
    return w


def _passes_through(graph: gs.Graph, node: gs.Node) -> bool:
    """The node's only used output is its first, read by exactly one node and no graph output."""
    if any(t.outputs or is_graph_io(graph, t) for t in node.outputs[1:]):
        return False
    out = node.outputs[0]
    return single_consumer(out) is not None and not is_graph_io(graph, out)


def find_pair(graph: gs.Graph, first: gs.Node, relu6_as_relu: bool) -> tuple[EqualizationPair | None, str | None]:
    """The pair starting at Conv ``first``, or (None, why-not) with why-not ``"relu6"`` or None."""
    if _conv_weight(first) is None or len(first.outputs) != 1 or not _passes_through(graph, first):
        return None, None
    between: list[gs.Node] = []
    has_relu6 = False
    tensor = first.outputs[0]
    node = single_consumer(tensor)
    while node is not None and node.op != "Conv":
        if node.inputs[0] is not tensor or any(t is tensor for t in node.inputs[1:]):
            return None, None
        if not is_homogeneous(node):
            if not is_relu6_like(node):
                return None, None
            has_relu6 = True
        if not _passes_through(graph, node):
            return None, None
        between.append(node)
        tensor = node.outputs[0]
        node = single_consumer(tensor)
    if node is None or node.inputs[0] is not tensor or any(t is tensor for t in node.inputs[1:]):
        return None, None
    w1, w2 = _conv_weight(first), _conv_weight(node)
    if w2 is None or w2.ndim != w1.ndim:
        return None, None
    group = int(node.attrs.get("group", 1))
    if w2.shape[0] % group or w2.shape[1] * group != w1.shape[0]:
        return None, None
    if has_relu6 and not relu6_as_relu:
        return None, "relu6"
    return EqualizationPair(first, between, node), None


# -- the math: plain numpy on weight arrays -------------------------------------------------
def output_channel_ranges(w: np.ndarray) -> np.ndarray:
    """max |w| per output channel of a conv weight [Cout, Cin/g, k...]."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def input_channel_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """max |w| per input channel of a conv weight [Cout, Cin/g, k...] with ``group`` groups (length Cin)."""
    cout, cin_g = w.shape[:2]
    grouped = np.abs(w).reshape(group, cout // group, cin_g, -1)
    return grouped.max(axis=(1, 3)).reshape(-1)


def scale_input_channels(w: np.ndarray, group: int, scale: np.ndarray) -> np.ndarray:
    """``w`` with the weights reading input channel ``i`` multiplied by ``scale[i]``."""
    cout, cin_g = w.shape[:2]
    grouped = w.reshape(group, cout // group, cin_g, -1) * scale.reshape(group, 1, cin_g, 1)
    return grouped.reshape(w.shape)


def equalizing_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """s with r1 / s == r2 * s == sqrt(r1 r2); 1 where either range is (near) zero."""
    live = (r1 > TINY_RANGE) & (r2 > TINY_RANGE)
    return np.where(live, np.sqrt(np.where(live, r1, 1.0) / np.where(live, r2, 1.0)), 1.0)


def equalize_pair(model: Model, pair: EqualizationPair) -> float:
    """Rescale one pair in place; returns max |log s| (0 when already equalized)."""
    first, second = pair.first, pair.second
    w1 = constant_array(first.inputs[1])
    w2 = constant_array(second.inputs[1])
    group = int(second.attrs.get("group", 1))
    w1_64, w2_64 = w1.astype(np.float64), w2.astype(np.float64)
    s = equalizing_scales(output_channel_ranges(w1_64), input_channel_ranges(w2_64, group))
    if np.all(s == 1.0):
        return 0.0
    base1, base2 = first.name or first.outputs[0].name, second.name or second.outputs[0].name
    _set_constant_input(model, first, 1, (w1_64 / s.reshape((-1,) + (1,) * (w1.ndim - 1))).astype(w1.dtype),
                        f"{base1}_W")
    if has_input(first, 2):
        b1 = constant_array(first.inputs[2])
        _set_constant_input(model, first, 2, (b1.astype(np.float64) / s).astype(b1.dtype), f"{base1}_B")
    _set_constant_input(model, second, 1, scale_input_channels(w2_64, group, s).astype(w2.dtype), f"{base2}_W")
    return float(np.max(np.abs(np.log(s))))


def clip_to_relu(graph: gs.Graph, clip: gs.Node) -> gs.Node:
    """Replace ``clip`` by a Relu on its first input, writing the same output tensor."""
    x, y = clip.inputs[0], clip.outputs[0]
    name = clip.name
    detach(clip)
    relu = gs.Node("Relu", name, inputs=[x], outputs=[y])
    graph.nodes.append(relu)
    return relu


@register
class EqualizeCrossLayer(Pass):
    """Cross-layer equalization of Conv -> (Relu/LeakyRelu/...) -> Conv pairs, before INT8 quantization.

    ``relu6_as_relu``: also equalize pairs with a Clip(0, hi) between them by
    replacing that Clip with Relu (an approximation: changes the outputs
    wherever the clip was active). ``tolerance``: stop sweeping once no
    channel scale changes by more than this factor (relative). ``max_iterations``:
    at most this many sweeps over all pairs.
    """

    name = "equalize_cross_layer"
    summary = "cross-layer weight equalization (Nagel et al. 2019) of Conv -> Relu -> Conv pairs"

    def __init__(self, relu6_as_relu: bool = False, tolerance: float = 1e-4, max_iterations: int = 100):
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.relu6_as_relu = bool(relu6_as_relu)
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)

    def find_pairs(self, model: Model) -> tuple[list[EqualizationPair], int]:
        """Pairs in topological order, and how many were passed over for a ReLU6 between them."""
        g = model.graph
        g.toposort()
        pairs, relu6_skipped = [], 0
        for node in g.nodes:
            if node.op != "Conv":
                continue
            pair, why = find_pair(g, node, self.relu6_as_relu)
            if pair is not None:
                pairs.append(pair)
            relu6_skipped += why == "relu6"
        return pairs, relu6_skipped

    def run(self, model: Model) -> PassResult:
        g = model.graph
        pairs, relu6_skipped = self.find_pairs(model)
        replaced = 0
        for pair in pairs:
            for clip in pair.clips:
                if not is_homogeneous(clip):  # Clip(0, hi): the approximation the option asks for
                    idx = pair.between.index(clip)
                    pair.between[idx] = clip_to_relu(g, clip)
                    replaced += 1
        iterations, changed = 0, False
        while pairs and iterations < self.max_iterations:
            iterations += 1
            moved = max(equalize_pair(model, p) for p in pairs)
            changed |= moved > 0.0
            if moved <= np.log1p(self.tolerance):
                break
        if replaced or changed:
            g.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(model, bool(replaced or changed),
                          {"pairs": len(pairs), "iterations": iterations, "relu6_replaced": replaced,
                           "relu6_pairs_skipped": relu6_skipped})
