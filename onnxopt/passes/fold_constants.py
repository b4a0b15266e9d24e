"""Evaluate subgraphs that depend only on constants, once, and store the results as initializers.

``gs.Graph.fold_constants`` does the evaluating (onnxruntime on the constant
part of the graph; with ``fold_shapes`` also ``Shape`` of statically shaped
tensors). This pass adds what a model optimizer needs around it:

* Constant *nodes* become ``gs.Constant`` initializers first, with the dtypes
  ONNX gives them (gs's own lowering makes ``value_float`` a float64), so later
  passes only ever see ``gs.Constant``.
* Large tensors are handled sensibly: a node folds only if every output is no
  bigger than ``max(size_limit_bytes, bytes of its inputs)``. Transposing or
  reshaping a big weight therefore folds (nothing grows), but an Expand, Tile or
  ConstantOfShape that blows a small constant up into a huge initializer stays
  a node and runs at inference time.
* ``CastLike(constant, x)`` folds although x is not constant: only x's dtype matters.
* QuantizeLinear/DequantizeLinear never fold: the QDQ passes rely on a weight's
  DequantizeLinear staying a node. Random ops never fold either.

If/Loop bodies are not folded (a branch with a constant condition is still
inlined by gs).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes.base import Pass, PassResult, register

#: ops whose folded output would change how the model is deployed or what it computes,
#: or that produce sequences/optionals (an initializer holds only a tensor)
NEVER_FOLD = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "SplitToSequence", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "Optional",
})

#: ops that can produce far more data than they read; when their output size is unknown they stay nodes
GROWING_OPS = frozenset({
    "Expand", "Tile", "ConstantOfShape", "Range", "Pad", "Resize", "Upsample", "OneHot", "EyeLike",
    "Loop", "Scan",
})

DEFAULT_DOMAINS = ("", "ai.onnx", None)

#: Constant-node attributes and the (dtype, rank) ONNX defines for them
_CONSTANT_ATTRS = {
    "value_float": (np.float32, 0),
    "value_floats": (np.float32, 1),
    "value_int": (np.int64, 0),
    "value_ints": (np.int64, 1),
}


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The value of a Constant node as ONNX defines it, or None for forms kept as nodes (strings, sparse)."""
    if node.op != "Constant" or len(node.attrs) != 1:
        return None
    attr, val = next(iter(node.attrs.items()))
    if attr == "value" and isinstance(val, gs.Constant):
        return np.asarray(val.values)
    if attr in _CONSTANT_ATTRS and not isinstance(val, gs.Node.AttributeRef):
        dtype, rank = _CONSTANT_ATTRS[attr]
        arr = np.asarray(val, dtype=dtype)
        return arr.reshape(-1) if rank == 1 else arr.reshape(())
    return None


def lower_constant_nodes(graph: gs.Graph) -> int:
    """Turn the graph's Constant nodes into gs.Constant initializers; returns how many."""
    lowered = 0
    for node in list(graph.nodes):
        if len(node.outputs) != 1:
            continue
        value = constant_node_value(node)
        if value is None:
            continue
        out = node.outputs[0]
        out.to_constant(np.require(value, requirements="C"))  # keeps 0-d values 0-d
        out.inputs.clear()  # detaches the Constant node
        graph.nodes.remove(node)
        lowered += 1
    return lowered


def overridable_initializers(graph: gs.Graph) -> frozenset[str]:
    """Initializers that are also graph inputs: a caller may feed other values, so they are not constant."""
    return frozenset(t.name for t in graph.inputs if isinstance(t, gs.Constant))


def resolve_castlike(graph: gs.Graph) -> int:
    """CastLike(constant, x) is a constant: it reads only x's dtype (gs would wait for x's values)."""
    resolved = 0
    overridable = overridable_initializers(graph)
    for node in list(graph.nodes):
        if node.op != "CastLike" or len(node.inputs) != 2 or not isinstance(node.inputs[0], gs.Constant) \
                or node.inputs[0].name in overridable:
            continue
        try:
            target = np.dtype(node.inputs[1].dtype)
        except TypeError:
            continue  # dtype unknown, or one numpy cannot hold (bfloat16, float8)
        out = node.outputs[0]
        out.to_constant(np.require(np.asarray(node.inputs[0].values).astype(target), requirements="C"))
        out.inputs.clear()
        graph.nodes.remove(node)
        resolved += 1
    return resolved


def tensor_nbytes(tensor: gs.Tensor) -> int | None:
    """Size in bytes from the (inferred) static shape and dtype, or None if unknown."""
    if isinstance(tensor, gs.Constant):
        return int(tensor.values.nbytes)
    shape, dtype = tensor.shape, tensor.dtype
    if shape is None or dtype is None or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


class SizeGuard:
    """``should_exclude_node`` for gs: keeps nodes that must not fold, or would grow too much."""

    def __init__(self, size_limit_bytes: int, overridable: frozenset[str] = frozenset()):
        self.size_limit_bytes = size_limit_bytes
        #: names of initializers that are also graph inputs (see overridable_initializers)
        self.overridable = overridable

    def __call__(self, node: gs.Node) -> bool:
        if node.op in NEVER_FOLD or node.domain not in DEFAULT_DOMAINS:
            return True  # custom-domain ops: onnxruntime may not know them, and one failure folds nothing
        if any(t.name in self.overridable for t in node.inputs):
            return True
        in_sizes = [tensor_nbytes(t) for t in node.inputs if not t.is_empty()]
        budget = max(self.size_limit_bytes, sum(s for s in in_sizes if s is not None))
        for out in node.outputs:
            size = tensor_nbytes(out)
            if size is None:
                if node.op in GROWING_OPS:
                    return True
            elif size > budget:
                return True
        return False


@register
class FoldConstants(Pass):
    name = "fold_constants"
    summary = "precompute constant subgraphs (onnxruntime via gs), keeping Q/DQ and blow-ups as nodes"

    def __init__(self, size_limit_bytes: int = 1 << 20, fold_shapes: bool = True):
        if size_limit_bytes < 0:
            raise ValueError("size_limit_bytes must be >= 0")
        self.size_limit_bytes = int(size_limit_bytes)
        self.fold_shapes = bool(fold_shapes)

    def run(self, model: Model) -> PassResult:
        g = model.graph
        nodes_before = len(g.nodes)
        lowered = lower_constant_nodes(g)
        infer_shapes(model)
        cast_likes = resolve_castlike(g)
        if cast_likes:
            infer_shapes(model)  # shapes behind the CastLike (an Expand's output) are now known
        outputs_of = {id(n): [t for t in n.outputs if not t.is_empty()] for n in g.nodes}
        candidates = [n for n in g.nodes if n.op != "Constant" and outputs_of[id(n)]]
        overridable = overridable_initializers(g)
        g.toposort(recurse_subgraphs=False, recurse_functions=False)
        g.fold_constants(fold_shapes=self.fold_shapes, recurse_subgraphs=False, error_ok=True,
                         flatten_subgraphs=True, should_exclude_node=SizeGuard(self.size_limit_bytes, overridable),
                         recurse_functions=False)
        folded = cast_likes + sum(1 for n in candidates
                                  if all(isinstance(t, gs.Constant) for t in outputs_of[id(n)]))
        lowered += lower_constant_nodes(g)  # those an inlined If branch brought in
        g.cleanup(remove_unused_graph_inputs=False)
        modified = folded > 0 or lowered > 0 or len(g.nodes) != nodes_before
        return PassResult(model, modified, {"nodes_folded": folded, "constant_nodes_lowered": lowered})
