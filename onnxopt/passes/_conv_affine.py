"""Folding a per-output-channel affine map ``y * scale + shift`` into a linear layer.

Three passes share this: ``fold_batchnorm`` (BN after Conv/ConvTranspose/Gemm),
``fuse_scale_into_conv`` (Mul/Add/Sub/Div by a constant after a Conv) and
``fuse_conv_add_bias`` (Add/Sub of a constant bias after a Conv). Each finds an
``(scale, shift)`` pair of 1-D vectors over the layer's output channels; the
math that rewrites the weight and bias lives here once. The float math runs in
float64 and is cast back to the weight dtype. A weight read by other nodes too
is never changed in place: the layer gets its own copy.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir.edit import bypass, is_graph_io, single_consumer
from onnxopt.ir.model import Model, constant_array
from onnxopt.passes.base import Pass, PassResult

#: ops whose output channels are rows/columns of a constant weight we can rescale
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")


def float_constant(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant floating-point tensor, else None (absent inputs included)."""
    if not tensor.name:
        return None
    arr = constant_array(tensor)
    if arr is None or not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
        return None
    return arr


def has_input(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and bool(node.inputs[index].name)


def foldable_output(graph: gs.Graph, layer: gs.Node, reader: gs.Node) -> bool:
    """True when ``reader`` is the only reader of ``layer``'s output and that is no graph output."""
    out = layer.outputs[0]
    return len(layer.outputs) == 1 and single_consumer(out) is reader and not is_graph_io(graph, out)


def output_channels(layer: gs.Node) -> int | None:
    """Number of output channels of a Conv/ConvTranspose/Gemm with a constant weight, else None."""
    if layer.op not in LINEAR_OPS or len(layer.inputs) < 2:
        return None
    w = float_constant(layer.inputs[1])
    if w is None:
        return None
    if layer.op == "Conv":
        return int(w.shape[0]) if w.ndim >= 3 else None
    if layer.op == "ConvTranspose":
        return int(w.shape[1]) * int(layer.attrs.get("group", 1)) if w.ndim >= 3 else None
    if w.ndim != 2:
        return None
    return int(w.shape[0] if layer.attrs.get("transB", 0) else w.shape[1])


def output_rank(layer: gs.Node) -> int:
    """Rank of the layer's output: a conv's output has its weight's rank, Gemm's is 2."""
    return 2 if layer.op == "Gemm" else constant_array(layer.inputs[1]).ndim


def per_channel_vector(values: np.ndarray, channels: int, out_rank: int) -> np.ndarray | None:
    """``values`` as a float64 vector over channels if it broadcasts along axis 1 only.

    Accepts a scalar, ``[1]``, ``[C, 1, 1]`` and ``[1, C, 1, 1]`` (for a rank-4
    output); refuses anything that varies along batch or spatial axes or would
    grow the output's rank (``[C]`` against a rank-4 output is along width).
    """
    if values.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - values.ndim) + tuple(values.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values.astype(np.float64).reshape(-1), (channels,)).copy()


def _set_constant_input(model: Model, node: gs.Node, index: int, values: np.ndarray, name: str) -> None:
    """Make input ``index`` of ``node`` a constant holding ``values``.

    The existing initializer is updated in place only when ``node`` is its sole
    reader (names stay stable); a shared one, a Constant-node output or a
    missing input gets a fresh initializer.
    """
    current = node.inputs[index] if has_input(node, index) else None
    if (isinstance(current, gs.Constant) and len(current.outputs) == 1
            and not is_graph_io(model.graph, current)):
        current.values = np.ascontiguousarray(values)
        return
    fresh = model.add_constant(current.name if current is not None else name, values)
    if index < len(node.inputs):
        node.inputs[index] = fresh
    else:
        node.inputs.append(fresh)


def _scaled_weight(layer: gs.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w`` (float64) with every output channel multiplied by its ``scale``."""
    if layer.op == "Conv":  # [Cout, Cin/g, k...]
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if layer.op == "ConvTranspose":  # [Cin, Cout/g, k...]; output channel = group * Cout/g + j
        group = int(layer.attrs.get("group", 1))
        grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])
        s = scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        return (grouped * s).reshape(w.shape)
    # Gemm: B is [K, N], or [N, K] with transB
    return w * (scale[:, None] if layer.attrs.get("transB", 0) else scale[None, :])


def fold_channel_affine(model: Model, layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """Rewrite ``layer`` so its output becomes ``output * scale + shift`` (per output channel).

    ``layer`` must have passed :func:`output_channels`; a missing bias is added.
    """
    w = constant_array(layer.inputs[1])
    dtype = w.dtype
    base = layer.name or layer.outputs[0].name
    _set_constant_input(model, layer, 1, _scaled_weight(layer, w.astype(np.float64), scale).astype(dtype),
                        f"{base}_W")
    bias = float_constant(layer.inputs[2]) if has_input(layer, 2) else None
    if layer.op == "Gemm":
        # Y = alpha*A*B + beta*C: fold beta into the new C, which broadcasts as before
        beta = float(layer.attrs.get("beta", 1.0))
        new_bias = shift if bias is None else beta * bias.astype(np.float64) * scale + shift
        layer.attrs["beta"] = 1.0
    else:
        new_bias = shift if bias is None else bias.astype(np.float64) * scale + shift
    _set_constant_input(model, layer, 2, new_bias.astype(dtype), f"{base}_B")


def bias_is_foldable(layer: gs.Node) -> bool:
    """A present bias must be a float constant too (Conv bias is [C]; Gemm's C broadcasts)."""
    return not has_input(layer, 2) or float_constant(layer.inputs[2]) is not None


# -- Conv followed by an elementwise op with a per-channel constant ---------------------------
def elementwise_affine(node: gs.Node, channels: int, out_rank: int, layer_out: gs.Tensor
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, shift)`` equivalent to ``node`` (Mul/Add/Sub/Div with one constant), or None.

    Mul/Add take the constant on either side; Sub and Div only as ``y - c`` and
    ``y / c`` (Div refuses a zero in ``c``).
    """
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = node.inputs
    if (a is layer_out) == (b is layer_out):
        return None  # the layer's output must be exactly one operand
    side = 1 if a is layer_out else 0  # where the constant is
    if node.op in ("Sub", "Div") and side != 1:
        return None
    values = float_constant(node.inputs[side])
    if values is None:
        return None
    c = per_channel_vector(values, channels, out_rank)
    if c is None:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "Mul":
        return c, zeros
    if node.op == "Add":
        return ones, c
    if node.op == "Sub":
        return ones, -c
    if node.op == "Div" and np.all(c != 0):
        return 1.0 / c, zeros
    return None


class ConvElementwiseFusion(Pass):
    """Base for passes that fold a Conv's following elementwise-by-constant op into it.

    Subclasses choose the ops in ``fused_ops``; matching and rewriting are shared.
    """

    fused_ops: ClassVar[tuple[str, ...]] = ()

    def run(self, model: Model) -> PassResult:
        g = model.graph
        fused = 0
        for node in list(g.nodes):
            if node.op not in self.fused_ops or not node.outputs:
                continue
            match = self._match(g, node)
            if match is None:
                continue
            conv, scale, shift = match
            fold_channel_affine(model, conv, scale, shift)
            bypass(g, node, src=conv.outputs[0])  # cannot refuse: the conv output is internal
            fused += 1
        if fused:
            g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, fused > 0, {"fused": fused})

    def _match(self, graph: gs.Graph, node: gs.Node):
        for t in node.inputs:
            conv = t.inputs[0] if len(t.inputs) == 1 else None
            if conv is None or conv.op != "Conv" or not foldable_output(graph, conv, node):
                continue
            channels = output_channels(conv)
            if channels is None or not bias_is_foldable(conv):
                continue
            affine = elementwise_affine(node, channels, output_rank(conv), t)
            if affine is not None:
                return conv, *affine
        return None
