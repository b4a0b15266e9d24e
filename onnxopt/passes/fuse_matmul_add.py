"""Fuse ``MatMul(x, W) + b`` into ``Gemm(x, W, b)`` for 2-D ``x`` and constant ``W``, ``b``.

Classifier heads exported from PyTorch often come out as MatMul + Add; Gemm
is one kernel and is what the quantizer and the pruner recognise as a linear
layer. Only exact cases are fused: ``x`` of rank 2 (checked by shape
inference; a symbolic batch is fine), ``W`` a constant ``[K, N]`` and ``b`` a
constant ``[N]`` or ``[1, N]`` on either side of the Add. Batched (3-D+)
MatMuls stay. The Gemm writes the Add's output tensor, so its name survives.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir.edit import detach
from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes._conv_affine import float_constant, foldable_output
from onnxopt.passes.base import Pass, PassResult, register

#: Gemm broadcasts C (unidirectionally) from opset 7 on
_MIN_GEMM_OPSET = 7


def _candidate(graph: gs.Graph, add: gs.Node) -> tuple[gs.Node, gs.Constant] | None:
    """``(matmul, bias)`` when ``add`` adds a fitting constant bias to a constant-weight MatMul."""
    if len(add.inputs) != 2 or len(add.outputs) != 1:
        return None
    for side in (0, 1):
        y, bias_t = add.inputs[side], add.inputs[1 - side]
        mm = y.inputs[0] if len(y.inputs) == 1 else None
        if mm is None or mm.op != "MatMul" or not foldable_output(graph, mm, add) or bias_t is y:
            continue
        w, bias = float_constant(mm.inputs[1]), float_constant(bias_t)
        if w is None or bias is None or w.ndim != 2 or bias.dtype != w.dtype:
            continue
        if bias.shape in ((w.shape[1],), (1, w.shape[1])):
            return mm, bias_t
    return None


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


@register
class FuseMatMulAdd(Pass):
    name = "fuse_matmul_add"
    summary = "fuse MatMul(2-D x, const W) + const bias into Gemm"

    def run(self, model: Model) -> PassResult:
        g = model.graph
        if model.opset < _MIN_GEMM_OPSET:
            return PassResult(model, False, {"fused": 0})
        candidates = [(add, *m) for add in list(g.nodes) if add.op == "Add" for m in [_candidate(g, add)] if m]
        if any(_rank(mm.inputs[0]) is None for _, mm, _ in candidates):
            infer_shapes(model)  # only pay for inference when some rank is unknown
        fused = 0
        for add, mm, bias in candidates:
            x, w = mm.inputs[0], mm.inputs[1]
            if _rank(x) != 2:
                continue
            out = add.outputs[0]
            position = next(i for i, n in enumerate(g.nodes) if n is add)  # keeps the order topological
            detach(add)
            detach(mm)
            g.nodes[position] = gs.Node("Gemm", name=mm.name or f"{out.name}_gemm", inputs=[x, w, bias],
                                        outputs=[out])
            fused += 1
        if fused:
            g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, fused > 0, {"fused": fused})
