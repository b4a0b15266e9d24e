"""A networkx DiGraph *view* of a Model, for analyses only (never the store).

Nodes of the DiGraph are the gs nodes' indices in ``model.graph.nodes``; each
carries ``op`` and ``node`` (the gs.Node). An edge u->v exists when v reads a
tensor that u writes; the edge keeps the tensor names in ``tensors``.
"""

from __future__ import annotations

import networkx as nx


def to_networkx(model) -> nx.DiGraph:
    g = nx.DiGraph()
    producer: dict[str, int] = {}
    for i, node in enumerate(model.graph.nodes):
        g.add_node(i, op=node.op, name=node.name, node=node)
        for t in node.outputs:
            producer[t.name] = i
    for j, node in enumerate(model.graph.nodes):
        for t in node.inputs:
            i = producer.get(t.name)
            if i is None:
                continue
            if g.has_edge(i, j):
                g.edges[i, j]["tensors"].append(t.name)
            else:
                g.add_edge(i, j, tensors=[t.name])
    return g
