"""Remove nodes whose outputs reach no graph output, and the initializers only they used.

gs's ``Graph.cleanup`` does the work: it walks back from the graph outputs,
counts a tensor an If/Loop body reads from the outer scope as used, and drops
everything else (Constant nodes included). Graph inputs are never removed, so
their names and order stay the interface the user knows. Unused *node outputs*
are kept: gs removes them by position, which would shift the meaning of a
later output of a multi-output node (LSTM's Y_h, Y_c).

Initializers that nothing referenced in the file are already dropped by the gs
import (``Model.from_onnx``); this pass counts those its own cleanup makes unused.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.ir.model import Model
from onnxopt.passes.base import Pass, PassResult, register


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """The graph and every subgraph nested in it (If/Loop/Scan bodies)."""
    return [graph, *graph.subgraphs(recursive=True)]


def count_nodes(graph: gs.Graph) -> int:
    return sum(len(g.nodes) for g in all_graphs(graph))


def used_initializers(graph: gs.Graph) -> set[int]:
    """Identities of the gs.Constant tensors some node (at any depth) or graph output reads."""
    used = set()
    for g in all_graphs(graph):
        for node in g.nodes:
            used.update(id(t) for t in node.inputs if isinstance(t, gs.Constant))
        used.update(id(t) for t in g.outputs if isinstance(t, gs.Constant))
    return used


@register
class RemoveDeadCode(Pass):
    name = "remove_dead_code"
    summary = "drop nodes, Constant nodes and initializers that no graph output depends on"

    def run(self, model: Model) -> PassResult:
        g = model.graph
        nodes_before = count_nodes(g)
        inits_before = used_initializers(g)
        g.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
        nodes_removed = nodes_before - count_nodes(g)
        initializers_removed = len(inits_before - used_initializers(g))
        modified = nodes_removed > 0 or initializers_removed > 0
        return PassResult(model, modified,
                          {"nodes_removed": nodes_removed, "initializers_removed": initializers_removed})
