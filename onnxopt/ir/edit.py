"""Small graph-editing helpers on gs graphs that every pass shares.

gs keeps producer/consumer links in sync only through item assignment, so
always edit ``node.inputs[i] = t`` (never slice assignment).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs


def replace_uses(old: gs.Tensor, new: gs.Tensor, *, skip: gs.Node | None = None) -> int:
    """Make every consumer of ``old`` (but ``skip``) read ``new``; returns the count."""
    n = 0
    for consumer in list(old.outputs):
        if consumer is skip:
            continue
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
                n += 1
    return n


def detach(node: gs.Node) -> None:
    """Disconnect a node; ``graph.cleanup()`` then drops it."""
    node.inputs.clear()
    node.outputs.clear()


def is_graph_io(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs) or any(t is tensor for t in graph.inputs)


def bypass(graph: gs.Graph, node: gs.Node, src: gs.Tensor | None = None) -> bool:
    """Remove a value-preserving node whose output equals ``src`` (default: input 0).

    Consumers are rewired to ``src``. When the node's output is a graph output,
    the producer of ``src`` is made to write the graph output instead, so graph
    output names never change. Returns False when that is impossible.
    """
    src = src if src is not None else node.inputs[0]
    dst = node.outputs[0]
    if any(t is dst for t in graph.outputs):
        if is_graph_io(graph, src) or isinstance(src, gs.Constant) or len(src.inputs) != 1:
            return False
        producer = src.inputs[0]
        replace_uses(src, dst, skip=node)
        detach(node)
        for i, t in enumerate(producer.outputs):
            if t is src:
                producer.outputs[i] = dst
        return True
    replace_uses(dst, src)
    detach(node)
    return True


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def single_consumer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


class FreshNames:
    """Unique names for new tensors and nodes of one graph: ``base``, else ``base_1``, ``base_2``, ...

    Names already in the graph (tensors and nodes) and every name handed out
    so far are taken, so several new names from one generator never collide.
    """

    def __init__(self, graph: gs.Graph):
        self.used = set(graph.tensors()) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name
