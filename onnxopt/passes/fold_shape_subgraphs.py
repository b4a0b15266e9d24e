"""Replace shape-computing subgraphs (Shape -> Gather -> Unsqueeze -> Concat -> ...) by constants.

Exporters compute shapes at run time even where they are known: the classic
flatten before a Gemm is ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))``.
With a symbolic batch dim ``N`` constant folding cannot touch it, because the
value really is ``[N, -1]``. But a Reshape can say "copy this dim of my input"
with a ``0``, so the shape becomes the constant ``[0, -1]``.

The pass evaluates each shape tensor symbolically: every element is an int, a
:class:`Dim` (dim ``axis`` of some tensor, maybe with a symbolic name from
shape inference), or unknown. Where a shape tensor leaves the shape subgraph
(is read by a non-shape op) it becomes

* a constant, when every element is an int;
* for a Reshape's shape input: a constant in which an element that is the
  same dim of the Reshape's own data input becomes ``0`` and at most one
  other unknown element becomes ``-1`` (exact: the element count fixes it).
  A Reshape with ``allowzero=1`` (dynamo writes it) is switched to
  ``allowzero=0`` for this when its shape holds no literal 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes.base import Pass, PassResult, register
from onnxopt.passes.fold_constants import constant_node_value

#: ops that compute on shape vectors and that :func:`evaluate` understands
SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity",
                       "Add", "Sub", "Mul", "Div", "Reshape"})
#: a shape vector is short; longer int tensors are data, not shapes
MAX_ELEMENTS = 64
#: folding a Reshape can make the shapes after it known; rounds of inference + folding, at most
MAX_ROUNDS = 8
_INT_ONNX_TYPES = {6, 7}  # TensorProto.INT32, INT64


@dataclass(frozen=True)
class Dim:
    """Dimension ``axis`` of ``tensor`` (compared by identity), ``symbol`` its dim_param if any."""

    tensor_id: int
    axis: int
    symbol: str | None


@dataclass
class ShapeValue:
    """A 0-D or 1-D int tensor whose elements are ints, Dims or None (unknown)."""

    elements: list
    scalar: bool = False

    def static(self) -> bool:
        return all(isinstance(e, int) for e in self.elements)


def _is_shape_op(node: gs.Node) -> bool:
    """Whether ``node`` may compute on a shape vector (a Reshape only does when its data is one)."""
    if node.op not in SHAPE_OPS:
        return False
    if node.op == "Cast":
        return node.attrs.get("to") in _INT_ONNX_TYPES
    return True


def _inside_shape_subgraph(node: gs.Node, memo: dict) -> bool:
    """A node computing a shape value: its inputs fold with its output, not on their own.

    ``Slice(data, starts, ends)`` or ``Add(x, Cast(Shape(...)))`` are shape ops
    by name but compute data: their shape inputs are folded where they enter.
    """
    return _is_shape_op(node) and bool(node.outputs) and evaluate(node.outputs[0], memo) is not None


def _ints(value: ShapeValue | None) -> list[int] | None:
    return list(value.elements) if value is not None and value.static() else None


def _axes(node: gs.Node, memo: dict) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an input from opset 13, an attribute before."""
    if len(node.inputs) > 1 and not node.inputs[1].is_empty():
        return _ints(evaluate(node.inputs[1], memo))
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _slice_param(node: gs.Node, index: int, attr: str, memo: dict) -> list[int] | None:
    if len(node.inputs) > 1:  # opset >= 10: inputs
        if len(node.inputs) > index and not node.inputs[index].is_empty():
            return _ints(evaluate(node.inputs[index], memo))
        return None
    val = node.attrs.get(attr)
    return None if val is None else [int(v) for v in val]


def _arith(op: str, a, b):
    if not (isinstance(a, int) and isinstance(b, int)):
        return None
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    if b == 0:
        return None
    q = abs(a) // abs(b)  # ONNX integer Div truncates toward zero
    return q if (a >= 0) == (b >= 0) else -q


def _evaluate_node(node: gs.Node, out_index: int, memo: dict) -> ShapeValue | None:
    op = node.op
    if out_index != 0:
        return None
    if op == "Shape":
        t = node.inputs[0]
        if t.shape is None:
            return None
        rank = len(t.shape)
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        axes = list(range(rank))[start:(rank if end is None else int(end))]
        return ShapeValue([t.shape[i] if isinstance(t.shape[i], int) and t.shape[i] >= 0
                           else Dim(id(t), i, t.shape[i] if isinstance(t.shape[i], str) else None)
                           for i in axes])
    if op in ("Identity", "Cast"):
        return evaluate(node.inputs[0], memo)
    if op == "Gather":
        data, idx = evaluate(node.inputs[0], memo), evaluate(node.inputs[1], memo)
        if data is None or data.scalar or int(node.attrs.get("axis", 0)) not in (0, -1) or _ints(idx) is None:
            return None
        n = len(data.elements)
        if any(not -n <= i < n for i in idx.elements):
            return None
        return ShapeValue([data.elements[i] for i in idx.elements], scalar=idx.scalar)
    if op == "Unsqueeze":
        data, axes = evaluate(node.inputs[0], memo), _axes(node, memo)
        if data is None or not data.scalar or axes not in ([0], [-1]):
            return None
        return ShapeValue(list(data.elements))
    if op == "Squeeze":
        data, axes = evaluate(node.inputs[0], memo), _axes(node, memo)
        if data is None or data.scalar or len(data.elements) != 1 or axes not in (None, [0], [-1]):
            return None
        return ShapeValue(list(data.elements), scalar=True)
    if op == "Concat":
        parts = [evaluate(t, memo) for t in node.inputs]
        if int(node.attrs.get("axis", 0)) not in (0, -1) or any(p is None or p.scalar for p in parts):
            return None
        return ShapeValue([e for p in parts for e in p.elements])
    if op == "Slice":
        data = evaluate(node.inputs[0], memo)
        starts, ends = _slice_param(node, 1, "starts", memo), _slice_param(node, 2, "ends", memo)
        axes = _slice_param(node, 3, "axes", memo) or [0]
        steps = _slice_param(node, 4, "steps", memo) or [1]
        if data is None or data.scalar or not starts or not ends or axes not in ([0], [-1]) or steps[0] <= 0:
            return None
        return ShapeValue(data.elements[starts[0]:ends[0]:steps[0]])
    if op == "Reshape":
        data, shape = evaluate(node.inputs[0], memo), _ints(evaluate(node.inputs[1], memo))
        if data is None or shape is None or len(shape) > 1:
            return None
        n = len(data.elements)
        if shape == [] and n == 1:
            return ShapeValue(list(data.elements), scalar=True)
        if shape in ([-1], [n]) or (shape == [0] and not data.scalar and not node.attrs.get("allowzero", 0)):
            return ShapeValue(list(data.elements))
        return None
    if op in ("Add", "Sub", "Mul", "Div"):
        a, b = evaluate(node.inputs[0], memo), evaluate(node.inputs[1], memo)
        if a is None or b is None:
            return None
        n = max(len(a.elements), len(b.elements))
        if {len(a.elements), len(b.elements)} - {1, n}:
            return None
        ea = a.elements * n if len(a.elements) == 1 else a.elements
        eb = b.elements * n if len(b.elements) == 1 else b.elements
        return ShapeValue([_arith(op, x, y) for x, y in zip(ea, eb)], scalar=a.scalar and b.scalar)
    return None


def _constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        return constant_node_value(tensor.inputs[0])
    return None


def evaluate(tensor: gs.Tensor, memo: dict) -> ShapeValue | None:
    """The symbolic value of a shape tensor, or None when it is not one this pass understands."""
    key = id(tensor)
    if key in memo:
        return memo[key]
    memo[key] = None  # guards against cycles in a malformed graph
    value = None
    arr = _constant_value(tensor)
    if arr is not None:
        if arr.dtype.kind in "iu" and arr.ndim <= 1 and arr.size <= MAX_ELEMENTS:
            value = ShapeValue([int(v) for v in arr.reshape(-1)], scalar=arr.ndim == 0)
    elif len(tensor.inputs) == 1 and _is_shape_op(tensor.inputs[0]):
        node = tensor.inputs[0]
        value = _evaluate_node(node, node.outputs.index(tensor), memo)
        if value is not None and len(value.elements) > MAX_ELEMENTS:
            value = None
    memo[key] = value
    return value


def reshape_target(value: ShapeValue, data: gs.Tensor) -> list[int] | None:
    """The constant shape for ``Reshape(data, value)`` (allowzero=0), or None if not expressible."""
    if value.scalar:
        return None
    data_shape = data.shape or []
    target = []
    for j, e in enumerate(value.elements):
        if isinstance(e, int):
            target.append(e)
        elif isinstance(e, Dim) and j < len(data_shape) and (
                (e.tensor_id == id(data) and e.axis == j)
                or (e.symbol is not None and data_shape[j] == e.symbol)):
            target.append(0)  # the same dim of Reshape's own input: copy it
        else:
            target.append(-1)
    return target if target.count(-1) <= 1 else None


def _shape_dtype(tensor: gs.Tensor):
    try:
        dt = np.dtype(tensor.dtype)
    except TypeError:
        return np.int64
    return dt if dt.kind == "i" else np.int64


def forget_symbolic_shapes(graph: gs.Graph) -> None:
    """Clear the shapes of inner tensors that are not fully static, so inference derives them afresh."""
    io = {id(t) for t in [*graph.inputs, *graph.outputs]}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io and t.shape is not None \
                and any(not isinstance(d, int) for d in t.shape):
            t.shape = None


def fold_round(model: Model) -> int:
    """Fold every shape tensor where it leaves the shape subgraph; returns how many."""
    g = model.graph
    memo: dict = {}
    outputs = {id(t) for t in g.outputs}
    folded = 0
    for node in list(g.nodes):
        if _inside_shape_subgraph(node, memo):
            continue  # fold where a shape leaves the shape subgraph, not inside it
        for i, t in enumerate(list(node.inputs)):
            if len(t.inputs) != 1 or not _is_shape_op(t.inputs[0]) or id(t) in outputs:
                continue  # constants, Constant nodes, graph inputs, data tensors
            value = evaluate(t, memo)
            if value is None:
                continue
            if value.static():
                arr = np.array(value.elements, dtype=_shape_dtype(t)).reshape(() if value.scalar else (-1,))
            elif node.op == "Reshape" and i == 1:
                target = reshape_target(value, node.inputs[0])
                if target is None:
                    continue
                if node.attrs.get("allowzero", 0):
                    # allowzero=1 reads 0 as a literal size; the copy-0s need allowzero=0,
                    # which means the same as long as the shape holds no literal 0
                    if any(e == 0 for e in value.elements if isinstance(e, int)):
                        continue
                    node.attrs["allowzero"] = 0
                arr = np.array(target, dtype=_shape_dtype(t))
            else:
                continue
            node.inputs[i] = model.add_constant(f"{t.name}_folded", arr)
            folded += 1
    return folded


@register
class FoldShapeSubgraphs(Pass):
    name = "fold_shape_subgraphs"
    summary = "Shape->Gather->Concat->Reshape chains become constant shapes ([0, -1] for a dynamic batch)"

    def run(self, model: Model) -> PassResult:
        folded = 0
        for round_ in range(MAX_ROUNDS):
            if not any(n.op == "Shape" for n in model.graph.nodes):
                break
            if round_:
                # a folded Reshape lets inference name the dims after it (``batch``, not ``unk__0``);
                # onnx keeps the old annotations, so drop the non-static ones first
                forget_symbolic_shapes(model.graph)
            infer_shapes(model)
            done = fold_round(model)
            if not done:
                break
            folded += done
            model.graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, folded > 0, {"subgraphs_folded": folded})
