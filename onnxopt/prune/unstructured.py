"""Unstructured pruning: zero single weights (magnitude) or N of every M (N:M, e.g. 2:4).

Masks are applied to the constant weights of Conv (axis 1 is the input
channel), Gemm (the K axis of B) and MatMul (axis 0 of a 2-D constant B).
Shapes never change, so a dense file does not shrink and onnxruntime's CPU
kernels do not run any faster: they multiply the zeros like any other value.
What zeros do buy:

* a smaller *compressed* file (zip/gzip squeeze runs of zeros);
* an actually smaller file when weights are stored as ONNX
  ``sparse_initializer`` (values + int64 linear indices: 12 bytes per non-zero
  float32, so it only pays above ~67% sparsity). onnxruntime loads sparse
  initializers (it densifies them at session creation); onnx's full checker
  does not, because its shape inference cannot see through them, so a sparse
  file is checked with the plain checker plus an onnxruntime session;
* 2:4 patterns along the input channels are what sparse tensor cores
  (TensorRT with sparsity enabled, Ampere and later GPUs) accelerate.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import OnnxoptError
from onnxopt.ir.model import Model
from onnxopt.prune.dependency import param_value
from onnxopt.passes.base import Pass, PassResult, register

CPU_SPEED_NOTE = ("unstructured zeros do not make onnxruntime's CPU kernels faster (dense kernels multiply the "
                  "zeros too); the gain is a smaller compressed or sparse-stored file, and 2:4 patterns can run "
                  "faster only on sparse tensor cores (e.g. TensorRT with sparsity on Ampere+ GPUs)")
#: bytes of one int64 index in a sparse initializer (onnx requires int64 indices)
INDEX_BYTES = 8


@dataclass
class WeightRef:
    """A constant weight that masks apply to: the node reading it, the input slot, its input-channel axis."""

    node: gs.Node
    index: int
    in_axis: int

    @property
    def tensor(self) -> gs.Tensor:
        return self.node.inputs[self.index]


@dataclass
class LayerSparsity:
    tensor: str
    op: str
    elements: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


@dataclass
class UnstructuredReport:
    layers: list[LayerSparsity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        total = sum(layer.elements for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); refuses anything but N:M with 0 < N < M."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m:
        raise OnnxoptError(f"N:M pattern must look like 2:4, got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise OnnxoptError(f"N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, mm


def check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0) or np.isnan(sparsity):
        raise OnnxoptError(f"sparsity must be in [0, 1), got {sparsity}")


def maskable_weights(model: Model, ignore=()) -> list[WeightRef]:
    """Constant float weights of Conv, Gemm and MatMul (each tensor once)."""
    ignore = set(ignore)
    refs: list[WeightRef] = []
    seen: set[int] = set()
    for node in model.graph.nodes:
        if node.name in ignore or any(o.name in ignore for o in node.outputs):
            continue
        if node.op == "Conv":
            ref = WeightRef(node, 1, 1)
        elif node.op == "Gemm":
            ref = WeightRef(node, 1, 1 if int(node.attrs.get("transB", 0)) else 0)
        elif node.op == "MatMul":
            ref = WeightRef(node, 1, 0)
        else:
            continue
        arr = param_value(ref.tensor) if len(node.inputs) > 1 else None
        if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.floating):
            continue
        if node.op == "MatMul" and np.ndim(arr) != 2:
            continue
        if id(ref.tensor) in seen:
            continue
        seen.add(id(ref.tensor))
        refs.append(ref)
    return refs


def _set(ref: WeightRef, values: np.ndarray) -> None:
    t = ref.tensor
    if isinstance(t, gs.Constant):
        t.values = values
    else:  # a Constant node's output: becomes an initializer with the same readers
        new = gs.Constant(f"{t.name}_masked", values)
        for reader in list(t.outputs):
            for i, inp in enumerate(reader.inputs):
                if inp is t:
                    reader.inputs[i] = new


def magnitude_prune(model: Model, sparsity: float, *, global_ranking: bool = False, ignore=()) -> UnstructuredReport:
    """Zero the smallest-magnitude weights (in place): ``sparsity`` of each layer, or of all weights together."""
    check_sparsity(sparsity)
    refs = maskable_weights(model, ignore)
    arrays = [np.array(param_value(r.tensor), copy=True) for r in refs]
    if global_ranking and arrays:
        flat = np.concatenate([np.abs(a).reshape(-1) for a in arrays])
        k = int(np.floor(sparsity * flat.size))
        mask = np.ones(flat.size, bool)
        if k:
            mask[np.argpartition(flat, k - 1)[:k]] = False
        offset = 0
        for a in arrays:
            a.reshape(-1)[~mask[offset:offset + a.size]] = 0
            offset += a.size
    else:
        for a in arrays:
            k = int(np.floor(sparsity * a.size))
            if k:
                a.reshape(-1)[np.argpartition(np.abs(a).reshape(-1), k - 1)[:k]] = 0
    report = UnstructuredReport()
    for r, a in zip(refs, arrays):
        _set(r, a)
        report.layers.append(LayerSparsity(r.tensor.name, r.node.op, a.size, int((a == 0).sum())))
    return report


def nm_prune(model: Model, n: int, m: int, *, ignore=()) -> UnstructuredReport:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input-channel axis (in place)."""
    report = UnstructuredReport()
    for ref in maskable_weights(model, ignore):
        w = np.array(param_value(ref.tensor), copy=True)
        cin = w.shape[ref.in_axis]
        if cin % m:
            report.notes.append(f"{ref.node.op} {ref.node.name or ref.tensor.name}: {cin} input channels per group "
                                f"is not a multiple of {m}; left dense")
            continue
        moved = np.moveaxis(w, ref.in_axis, -1)
        blocks = moved.reshape(-1, m)
        drop = np.argsort(np.abs(blocks), axis=1, kind="stable")[:, : m - n]
        np.put_along_axis(blocks, drop, 0, axis=1)
        w = np.moveaxis(blocks.reshape(moved.shape), -1, ref.in_axis)
        _set(ref, np.ascontiguousarray(w))
        report.layers.append(LayerSparsity(ref.tensor.name, ref.node.op, w.size, int((w == 0).sum())))
    return report


# -- storage --------------------------------------------------------------------------------
def sparse_bytes(values: np.ndarray) -> int:
    nnz = int(np.count_nonzero(values))
    return nnz * (values.dtype.itemsize + INDEX_BYTES)


def to_sparse_initializers(proto: onnx.ModelProto, names: set[str] | None = None, *, min_elements: int = 1024,
                           only_if_smaller: bool = True) -> list[str]:
    """Move float initializers into ``sparse_initializer`` (in place); returns the names moved.

    Candidates: top-level initializers (only ``names`` when given) that are not
    graph inputs and have at least ``min_elements`` elements; with
    ``only_if_smaller`` just those whose sparse form takes fewer bytes.
    """
    g = proto.graph
    inputs = {i.name for i in g.input}
    keep, moved = [], []
    for t in g.initializer:
        arr = onnx.numpy_helper.to_array(t) if names is None or t.name in names else None
        if (arr is None or t.name in inputs or arr.size < min_elements or not np.issubdtype(arr.dtype, np.floating)
                or (only_if_smaller and sparse_bytes(arr) >= arr.nbytes)):
            keep.append(t)
            continue
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int64)
        values = onnx.numpy_helper.from_array(flat[idx], t.name)
        indices = onnx.numpy_helper.from_array(idx, f"{t.name}_indices")
        g.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
        moved.append(t.name)
    del g.initializer[:]
    g.initializer.extend(keep)
    return moved


def zip_size(data: bytes) -> int:
    """Bytes of ``data`` in a DEFLATE zip archive (what zipping the model file gives)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.onnx", data)
    return len(buf.getvalue())


@register
class PruneUnstructured(Pass):
    """Recipe step: magnitude (per-layer or global) or N:M zeros in Conv/Gemm/MatMul weights."""

    name = "prune_unstructured"
    summary = "zero single weights by magnitude or an N:M pattern (shapes unchanged; no CPU speed-up)"

    def __init__(self, sparsity: float | None = None, pattern: str | None = None, global_ranking: bool = False,
                 ignore: list[str] | None = None):
        if (sparsity is None) == (pattern is None):
            raise ValueError("give either sparsity or pattern (N:M)")
        if sparsity is not None:
            check_sparsity(sparsity)
        self.nm = parse_nm(pattern) if pattern is not None else None
        self.sparsity = sparsity
        self.pattern = pattern
        self.global_ranking = global_ranking
        self.ignore = list(ignore or [])

    def run(self, model: Model) -> PassResult:
        if self.nm is not None:
            report = nm_prune(model, *self.nm, ignore=self.ignore)
        else:
            report = magnitude_prune(model, self.sparsity, global_ranking=self.global_ranking, ignore=self.ignore)
        model.notes.extend(report.notes)
        if CPU_SPEED_NOTE not in model.notes:
            model.notes.append(CPU_SPEED_NOTE)
        zeros = sum(layer.zeros for layer in report.layers)
        return PassResult(model, bool(report.layers) and report.sparsity > 0,
                          {"layers": len(report.layers), "zeros": zeros, "sparsity": round(report.sparsity, 4)})
