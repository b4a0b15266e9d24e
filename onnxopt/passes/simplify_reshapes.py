"""Remove redundant Reshape/Transpose/Squeeze/Unsqueeze/Flatten chains.

Exporters leave layout ops that cancel or collapse; each one is a copy at run
time and an obstacle for the fusion passes. Rewrites (all exact):

* a reshape-like op (Reshape, Flatten, Squeeze, Unsqueeze) followed by a
  Reshape to a constant shape: only the last Reshape is needed (unless its
  shape has a ``0``, which would copy a dim of the intermediate);
* Transpose -> Transpose: one Transpose with the composed perm, or nothing
  when the composition is the identity; a lone identity Transpose goes too;
* Squeeze -> Unsqueeze and Unsqueeze -> Squeeze on the same axes cancel
  (axes are an input from opset 13, an attribute before);
* Reshape/Flatten whose output shape is its input's own shape are dropped
  (symbolic dims count when a Reshape copies them with ``0``).

An intermediate is folded only when it has a single consumer and is not a
graph output; graph output names never change.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir.edit import bypass, producer
from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes, static_shape
from onnxopt.passes.base import Pass, PassResult, register
from onnxopt.passes.fold_constants import constant_node_value

RESHAPE_LIKE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
MAX_ROUNDS = 10


def const_ints(tensor: gs.Tensor) -> list[int] | None:
    """A small int constant (initializer or Constant node) as a list, else None."""
    if isinstance(tensor, gs.Constant):
        arr = tensor.values
    elif len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        arr = constant_node_value(tensor.inputs[0])
    else:
        return None
    if arr is None or arr.dtype.kind not in "iu" or arr.ndim > 1:
        return None
    return [int(v) for v in arr.reshape(-1)]


def rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def axes_of(node: gs.Node) -> list[int] | None:
    """Squeeze/Unsqueeze axes (input from opset 13, attribute before); None if absent or not constant."""
    if len(node.inputs) > 1 and not node.inputs[1].is_empty():
        return const_ints(node.inputs[1])
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def normalized(axes: list[int], r: int | None) -> set[int] | None:
    if any(a < 0 for a in axes):
        if r is None:
            return None
        axes = [a + r if a < 0 else a for a in axes]
    return set(axes)


def transpose_perm(node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    r = rank(node.inputs[0])
    return None if r is None else list(reversed(range(r)))


def foldable_intermediate(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The producer of ``tensor`` if it may be folded away: one consumer, not a graph output."""
    if len(tensor.outputs) != 1 or any(o is tensor for o in graph.outputs):
        return None
    return producer(tensor)


def reshape_is_identity(node: gs.Node) -> bool:
    """Whether Reshape/Flatten ``node`` returns its input unchanged."""
    x, y = node.inputs[0], node.outputs[0]
    if static_shape(x) is not None and static_shape(x) == static_shape(y):
        return True
    if x.shape is None:
        return False
    if node.op == "Flatten":
        return len(x.shape) == 2 and int(node.attrs.get("axis", 1)) in (1, -1)
    target = const_ints(node.inputs[1])
    if target is None or len(target) != len(x.shape):
        return False
    allowzero = bool(node.attrs.get("allowzero", 0))
    for want, have in zip(target, x.shape):
        if want == -1 or (want == 0 and not allowzero):
            continue
        if want != have:
            return False
    return target.count(-1) <= 1


class Simplifier:
    """One sweep over the graph's nodes; ``changed`` counts rewrites."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.changed = 0

    def sweep(self) -> int:
        for node in list(self.graph.nodes):
            if not node.inputs or not node.outputs or node.inputs[0].is_empty():
                continue  # detached earlier in this sweep
            handler = getattr(self, f"_{node.op.lower()}", None)
            if handler is not None and node.domain in ("", "ai.onnx", None) and handler(node):
                self.changed += 1
        return self.changed

    def _drop(self, node: gs.Node, src: gs.Tensor) -> bool:
        return bypass(self.graph, node, src)

    def _reshape(self, node: gs.Node) -> bool:
        if len(node.inputs) < 2:
            return False  # opset < 5 (shape attribute)
        if reshape_is_identity(node):
            return self._drop(node, node.inputs[0])
        target = const_ints(node.inputs[1])
        prev = foldable_intermediate(self.graph, node.inputs[0])
        if target is None or prev is None or prev.op not in RESHAPE_LIKE or prev.inputs[0].is_empty():
            return False
        if 0 in target and not node.attrs.get("allowzero", 0):
            return False  # 0 copies a dim of the intermediate
        node.inputs[0] = prev.inputs[0]
        return True

    def _flatten(self, node: gs.Node) -> bool:
        return reshape_is_identity(node) and self._drop(node, node.inputs[0])

    def _transpose(self, node: gs.Node) -> bool:
        perm = transpose_perm(node)
        if perm is None:
            return False
        if perm == list(range(len(perm))):
            return self._drop(node, node.inputs[0])
        prev = foldable_intermediate(self.graph, node.inputs[0])
        if prev is None or prev.op != "Transpose":
            return False
        first = transpose_perm(prev)
        if first is None or len(first) != len(perm):
            return False
        composed = [first[p] for p in perm]
        if composed == list(range(len(composed))):
            return self._drop(node, prev.inputs[0])
        node.inputs[0] = prev.inputs[0]
        node.attrs["perm"] = composed
        return True

    def _squeeze_unsqueeze_pair(self, node: gs.Node, first_op: str) -> bool:
        prev = foldable_intermediate(self.graph, node.inputs[0])
        if prev is None or prev.op != first_op:
            return False
        a1, a2 = axes_of(prev), axes_of(node)
        if not a1 or not a2:
            return False
        # both axis lists refer to the larger rank: Squeeze's input = Unsqueeze's output
        big = prev.inputs[0] if first_op == "Squeeze" else node.inputs[0]
        r = rank(big)
        n1, n2 = normalized(a1, r), normalized(a2, r)
        if n1 is None or n1 != n2:
            return False
        return self._drop(node, prev.inputs[0])

    def _unsqueeze(self, node: gs.Node) -> bool:
        return self._squeeze_unsqueeze_pair(node, "Squeeze")

    def _squeeze(self, node: gs.Node) -> bool:
        return self._squeeze_unsqueeze_pair(node, "Unsqueeze")


@register
class SimplifyReshapes(Pass):
    name = "simplify_reshapes"
    summary = "collapse Reshape chains, compose Transposes, cancel Squeeze/Unsqueeze, drop no-op reshapes"

    def run(self, model: Model) -> PassResult:
        g = model.graph
        if not any(n.op in RESHAPE_LIKE or n.op == "Transpose" for n in g.nodes):
            return PassResult(model, False, {"nodes_removed": 0})
        infer_shapes(model)
        before = len(g.nodes)
        rewrites = 0
        for _ in range(MAX_ROUNDS):
            changed = Simplifier(g).sweep()
            if not changed:
                break
            rewrites += changed
            g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, rewrites > 0, {"nodes_removed": before - len(g.nodes)})
