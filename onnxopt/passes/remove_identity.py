"""Remove Identity nodes, and Dropout nodes in inference mode (their mask output unused)."""

from __future__ import annotations

from onnxopt.ir.edit import bypass
from onnxopt.ir.model import Model, constant_array
from onnxopt.passes.base import Pass, PassResult, register


def _dropout_is_inference(node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is consumed: keep it
    if len(node.inputs) >= 3 and node.inputs[2].name:
        training = constant_array(node.inputs[2])
        return training is not None and not bool(training)
    return True  # opset < 12 (is_test) or training_mode absent: inference


@register
class RemoveIdentity(Pass):
    name = "remove_identity"
    summary = "drop Identity nodes and inference-mode Dropout"

    def run(self, model: Model) -> PassResult:
        g = model.graph
        removed = 0
        for node in list(g.nodes):
            if not node.inputs or not node.inputs[0].name:
                continue
            if node.op == "Identity" or (node.op == "Dropout" and _dropout_is_inference(node)):
                if bypass(g, node):
                    removed += 1
        if removed:
            g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, removed > 0, {"removed": removed})
