"""Merge initializers that hold the same data into one.

Exporters often write the same tensor several times (shared scales and zero
points after quantization, repeated shape constants, tied weights): each copy
costs file size and memory. Initializers with equal dtype, shape and bytes
merge into the first one seen; every consumer (subgraph bodies included) is
rewired. Candidates are grouped by a hash of their bytes and compared exactly
before merging, so a hash collision can never merge different data.

Initializers that are graph inputs (overridable at run time) or graph outputs
keep their identity.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir.edit import replace_uses
from onnxopt.ir.model import Model, constant_array
from onnxopt.passes.base import Pass, PassResult, register


def initializer_key(values: np.ndarray) -> tuple:
    """What must be equal for two initializers to merge (the bytes by digest)."""
    data = np.ascontiguousarray(values).tobytes()
    return values.dtype.str, tuple(values.shape), hashlib.blake2b(data, digest_size=16).digest()


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included), unlike ``np.array_equal``."""
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def mergeable_initializers(graph: gs.Graph) -> list[gs.Constant]:
    """Initializers read by any node (outer graph first), in first-use order, minus graph inputs/outputs.

    gs writes a Constant as an initializer of every (sub)graph that reads it,
    so rewiring a body's read to an equal Constant is always in scope.
    """
    graphs = [graph, *graph.subgraphs(recursive=True)]
    protected = {id(t) for g in graphs for t in [*g.inputs, *g.outputs]}
    seen: dict[int, gs.Constant] = {}
    for g in graphs:
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and t.name and id(t) not in protected:
                    seen.setdefault(id(t), t)
    return list(seen.values())


@register
class MergeDuplicateInitializers(Pass):
    name = "merge_duplicate_initializers"
    summary = "initializers with identical dtype, shape and bytes become one"

    def run(self, model: Model) -> PassResult:
        groups: dict[tuple, list[gs.Constant]] = {}
        merged = bytes_saved = 0
        by_layout: dict[tuple, list[gs.Constant]] = {}
        for tensor in mergeable_initializers(model.graph):  # only same dtype+shape can be equal: read those only
            by_layout.setdefault((np.dtype(tensor.dtype).str, tuple(tensor.shape)), []).append(tensor)
        candidates = [t for same in by_layout.values() if len(same) > 1 for t in same]
        for tensor in candidates:
            values = np.asarray(constant_array(tensor))
            bucket = groups.setdefault(initializer_key(values), [])
            keep = next((k for k in bucket if same_bytes(np.asarray(constant_array(k)), values)), None)
            if keep is None:
                bucket.append(tensor)
                continue
            replace_uses(tensor, keep)
            merged += 1
            bytes_saved += int(values.nbytes)
        return PassResult(model, merged > 0, {"merged": merged, "bytes_saved": bytes_saved})
