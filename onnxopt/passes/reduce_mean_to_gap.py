"""ReduceMean over all spatial axes (keepdims) -> GlobalAveragePool.

The dynamo exporter writes global average pooling as ``ReduceMean(axes=[-1,-2],
keepdims=1)``. GlobalAveragePool computes the same, and onnxruntime has an
integer kernel for it (QLinearGlobalAveragePool) where ReduceMean stays float
between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir.model import Model, constant_array
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes.base import Pass, PassResult, register


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        values = constant_array(node.inputs[1])
        return None if values is None else [int(a) for a in values.reshape(-1)]
    return None  # no axes: reduces everything (or nothing with noop_with_empty_axes)


def is_global_average(node: gs.Node) -> bool:
    """True when ``node`` is a keepdims ReduceMean over exactly the axes after N and C."""
    if node.op != "ReduceMean" or not int(node.attrs.get("keepdims", 1)):
        return False
    shape = node.inputs[0].shape
    axes = _axes(node)
    if shape is None or axes is None or len(shape) < 3:
        return False
    rank = len(shape)
    return sorted(a + rank if a < 0 else a for a in axes) == list(range(2, rank))


@register
class ReduceMeanToGlobalAveragePool(Pass):
    name = "reduce_mean_to_gap"
    summary = "ReduceMean over all spatial axes (keepdims) becomes GlobalAveragePool"

    def run(self, model: Model) -> PassResult:
        candidates = [n for n in model.graph.nodes if n.op == "ReduceMean"]
        if not candidates:
            return PassResult(model, False, {"rewritten": 0})
        infer_shapes(model)
        rewritten = 0
        for node in candidates:
            if not is_global_average(node):
                continue
            node.op = "GlobalAveragePool"
            node.attrs.clear()
            while len(node.inputs) > 1:
                node.inputs.pop()
            rewritten += 1
        if rewritten:
            model.graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, rewritten > 0, {"rewritten": rewritten})
