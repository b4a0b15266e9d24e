"""What a model is: inputs, outputs, opsets, size, parameters and MACs.

Plain functions that return dataclasses, so ``onnxopt inspect``, the
``optimize`` before/after table and later reports all compute the same
numbers one way. Nothing here prints.

MACs (multiply-accumulates) are counted from tensor shapes after onnx shape
inference. A dynamic batch dim is taken as 1, so the MACs of a dynamic-batch
model are per sample; other dynamic dims need ``shape_overrides`` or the
affected nodes are reported with unknown MACs (never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir.io import _external_tensors
from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes, static_shape

Dim = int | str | None


@dataclass
class TensorInfo:
    """A graph input or output: name, dtype name and shape (symbolic dims by name, ``None`` unknown)."""

    name: str
    dtype: str
    shape: list[Dim] | None


@dataclass
class NodeMacs:
    """MACs of one compute node (``macs`` is None when its shapes are not all known)."""

    node: str
    op: str
    output_shape: list[int] | None
    macs: int | None


@dataclass
class MacsSummary:
    """MACs per Conv/ConvTranspose/Gemm/MatMul node and in total.

    ``batch`` is the batch the numbers are for (1 for a dynamic batch, i.e. per
    sample; the model's own batch when it is fixed). ``total`` adds the known
    node MACs; ``unknown`` counts nodes whose shapes could not be resolved.
    """

    batch: int | None
    per_sample: bool
    nodes: list[NodeMacs] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(n.macs for n in self.nodes if n.macs is not None)

    @property
    def unknown(self) -> int:
        return sum(1 for n in self.nodes if n.macs is None)


@dataclass
class ModelSummary:
    """Everything ``onnxopt inspect`` reports about a model."""

    path: str | None
    file_bytes: int | None
    ir_version: int
    producer_name: str
    producer_version: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    node_count: int
    op_histogram: dict[str, int]
    parameter_count: int
    parameter_bytes: int
    macs: MacsSummary
    notes: list[str] = field(default_factory=list)


# -- dtypes and shapes ------------------------------------------------------
def dtype_name(dtype) -> str:
    """``float32`` for numpy dtypes; onnx's name (``BFLOAT16``) for types numpy lacks."""
    if dtype is None:
        return "?"
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        try:
            return onnx.helper.tensor_dtype_to_string(dtype).replace("TensorProto.", "")
        except Exception:
            return str(dtype)
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def dtype_itemsize(dtype) -> int:
    """Bytes per element (onnx-only types through onnx's numpy mapping, 0 if unknown)."""
    if dtype is None:
        return 0
    try:
        if isinstance(dtype, int) and not isinstance(dtype, bool):
            return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize)
        return int(np.dtype(dtype).itemsize)
    except Exception:
        return 0


def _shape_list(shape) -> list[Dim] | None:
    if shape is None:
        return None
    return [d if isinstance(d, (int, str)) else None for d in shape]


def tensor_info(tensor: gs.Tensor) -> TensorInfo:
    return TensorInfo(tensor.name, dtype_name(tensor.dtype), _shape_list(tensor.shape))


# -- files --------------------------------------------------------------------
def external_data_files(path: Path) -> list[Path]:
    """The external-data files a saved model refers to (read without loading them)."""
    path = Path(path)
    proto = onnx.load_model(str(path), load_external_data=False)
    files: list[Path] = []
    for t in _external_tensors(proto):
        location = {e.key: e.value for e in t.external_data}.get("location")
        if location:
            f = path.parent / location
            if f not in files:
                files.append(f)
    return files


def model_file_bytes(path: Path) -> int:
    """Size on disk of a model file plus the external-data files it uses."""
    path = Path(path)
    total = path.stat().st_size
    for f in external_data_files(path):
        if f.is_file():
            total += f.stat().st_size
    return total


# -- parameters -----------------------------------------------------------------
def parameter_stats(model: Model) -> tuple[int, int]:
    """(parameters, bytes) over initializers and Constant-node tensors, subgraphs included.

    Some exporters store weights as Constant nodes rather than initializers;
    both count, so the number does not change when a pass converts one to the other.
    """
    count = nbytes = 0
    graphs = [model.graph, *model.graph.subgraphs(recursive=True)]
    seen: set[int] = set()

    def add(t: gs.Constant) -> None:
        nonlocal count, nbytes
        if id(t) in seen:
            return
        seen.add(id(t))
        n = int(np.prod(t.shape)) if t.shape is not None else 0
        count += n
        nbytes += n * dtype_itemsize(t.dtype)

    for g in graphs:
        for t in g.tensors().values():
            if isinstance(t, gs.Constant):
                add(t)
        for node in g.nodes:
            value = node.attrs.get("value") if node.op == "Constant" else None
            if isinstance(value, gs.Constant):
                add(value)
    return count, nbytes


# -- MACs --------------------------------------------------------------------------
def _prod(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


def _conv_macs(x: tuple, w: tuple, y: tuple, node: gs.Node) -> int:
    # every output element needs (Cin/group) * kH * kW MACs: the weight's trailing dims
    return _prod(y) * _prod(w[1:])


def _conv_transpose_macs(x: tuple, w: tuple, y: tuple, node: gs.Node) -> int:
    # every input element is scattered through (Cout/group) * kH * kW weights
    return _prod(x) * _prod(w[1:])


def _gemm_macs(a: tuple, b: tuple, y: tuple, node: gs.Node) -> int:
    k = a[0] if node.attrs.get("transA", 0) else a[-1]
    return _prod(y) * int(k)


def _matmul_macs(a: tuple, b: tuple, y: tuple, node: gs.Node) -> int:
    # batched: every output element is a dot product over A's last dim
    return _prod(y) * int(a[-1])


#: op -> (index of the data input, index of the weight / second input, MAC formula)
_MAC_OPS: dict[str, tuple[int, int, Callable[[tuple, tuple, tuple, gs.Node], int]]] = {
    "Conv": (0, 1, _conv_macs),
    "ConvInteger": (0, 1, _conv_macs),
    "QLinearConv": (0, 3, _conv_macs),
    "ConvTranspose": (0, 1, _conv_transpose_macs),
    "Gemm": (0, 1, _gemm_macs),
    "MatMul": (0, 1, _matmul_macs),
    "MatMulInteger": (0, 1, _matmul_macs),
    "QLinearMatMul": (0, 3, _matmul_macs),
}


def _batch_dims(model: Model, shape_overrides: dict[str, Sequence[int]]) -> tuple[int | None, bool]:
    """The batch the MACs are for, and whether it is per sample (a dynamic batch taken as 1)."""
    fixed = None
    for t in model.graph.inputs:
        if isinstance(t, gs.Constant) or not t.shape:
            continue
        if t.name in shape_overrides:
            return int(shape_overrides[t.name][0]), False
        d = t.shape[0]
        if isinstance(d, int) and d >= 0:
            fixed = d if fixed is None else fixed
        else:
            return 1, True
    return fixed, False


def _concrete_copy(model: Model, shape_overrides: dict[str, Sequence[int]]) -> Model:
    """A copy whose inputs have concrete shapes (dynamic batch = 1), every other shape re-inferred."""
    work = model.copy()
    inputs = {t.name for t in work.graph.inputs}
    for t in work.graph.inputs:
        if isinstance(t, gs.Constant) or t.shape is None:
            continue
        if t.name in shape_overrides:
            t.shape = [int(d) for d in shape_overrides[t.name]]
        elif t.shape and not (isinstance(t.shape[0], int) and t.shape[0] >= 0):
            t.shape = [1, *t.shape[1:]]
    for name, t in work.graph.tensors().items():
        if isinstance(t, gs.Variable) and name not in inputs:
            t.shape = None
    return infer_shapes(work)


def _symbol_values(model: Model, shape_overrides: dict[str, Sequence[int]]) -> dict[str, int]:
    """Values for symbolic dims: an input's dynamic batch symbol is 1; overrides name the rest."""
    values: dict[str, int] = {}
    for t in model.graph.inputs:
        if isinstance(t, gs.Constant) or not t.shape:
            continue
        if t.name in shape_overrides:
            values.update({d: int(v) for d, v in zip(t.shape, shape_overrides[t.name]) if isinstance(d, str)})
        elif isinstance(t.shape[0], str):
            values.setdefault(t.shape[0], 1)
    return values


def _resolved(tensor: gs.Tensor, symbols: dict[str, int]) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None:
        return None
    out = []
    for d in shape:
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in symbols:
            out.append(symbols[d])
        else:
            return None
    return tuple(out)


def _node_macs(node: gs.Node, shape_of: Callable[[gs.Tensor], tuple[int, ...] | None]
               ) -> tuple[list[int] | None, int | None]:
    """(output shape, MACs) of a compute node, with shapes from ``shape_of``; MACs None if any is unknown."""
    xi, wi, formula = _MAC_OPS[node.op]
    out_shape = shape_of(node.outputs[0]) if node.outputs else None
    shapes = [shape_of(node.inputs[i]) if i < len(node.inputs) else None for i in (xi, wi)]
    if out_shape is None or not all(s is not None and len(s) for s in shapes):
        return (list(out_shape) if out_shape is not None else None), None
    return list(out_shape), formula(shapes[0], shapes[1], out_shape, node)


def _ort_symbolic_shapes(concrete: Model) -> dict[str, tuple[int, ...]]:
    """Static shapes from onnxruntime's symbolic shape inference, which (unlike onnx's) computes
    through shape arithmetic such as Shape -> Gather -> Div -> Reshape (channel shuffles).
    Empty when onnxruntime (or its sympy dependency) is missing or the inference fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = SymbolicShapeInference.infer_shapes(concrete.to_onnx(), auto_merge=True)
    except Exception:  # optional source: ImportError, or its own failures on unusual graphs
        return {}
    if proto is None:
        return {}
    shapes = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def compute_macs(model: Model, shape_overrides: dict[str, Sequence[int]] | None = None) -> MacsSummary:
    """MACs per Conv/ConvTranspose/Gemm/MatMul (and their integer/QLinear forms).

    Shapes come from sound sources only, the first that knows wins: onnx
    inference on a copy with concrete input shapes (dynamic batch = 1, or
    ``shape_overrides``); the model's own inferred symbolic shapes with the
    batch symbol set to 1 (exporters often annotate shapes that onnx cannot
    derive through Shape/Gather/Reshape chains); and, only for nodes still
    unknown, onnxruntime's symbolic shape inference on the concrete copy.
    """
    shape_overrides = dict(shape_overrides or {})
    batch, per_sample = _batch_dims(model, shape_overrides)
    concrete = _concrete_copy(model, shape_overrides)
    symbolic = infer_shapes(model.copy())
    symbols = _symbol_values(symbolic, shape_overrides)
    nodes: list[NodeMacs] = []
    for cnode, snode in zip(concrete.graph.nodes, symbolic.graph.nodes):
        if cnode.op not in _MAC_OPS:
            continue
        out_shape, macs = _node_macs(cnode, static_shape)
        if macs is None and snode.op == cnode.op:
            out_shape, macs = _node_macs(snode, lambda t: _resolved(t, symbols))
        nodes.append(NodeMacs(cnode.name or cnode.outputs[0].name, cnode.op, out_shape, macs))
    if any(n.macs is None for n in nodes):
        ort_shapes = _ort_symbolic_shapes(concrete)

        def shape_of(t: gs.Tensor):
            return static_shape(t) if isinstance(t, gs.Constant) else ort_shapes.get(t.name)

        mac_nodes = [n for n in concrete.graph.nodes if n.op in _MAC_OPS]
        for i, (entry, cnode) in enumerate(zip(nodes, mac_nodes)):
            if entry.macs is None and ort_shapes:
                out_shape, macs = _node_macs(cnode, shape_of)
                nodes[i] = NodeMacs(entry.node, entry.op,
                                    out_shape if out_shape is not None else entry.output_shape, macs)
    return MacsSummary(batch=batch, per_sample=per_sample, nodes=nodes)


# -- the whole summary --------------------------------------------------------------
def summarize(model: Model, shape_overrides: dict[str, Sequence[int]] | None = None) -> ModelSummary:
    """Inputs, outputs, opsets, producer, node/op counts, parameters and MACs of ``model``."""
    inferred = model.copy()
    infer_shapes(inferred)  # so outputs without declared shapes still show one
    opsets = {("ai.onnx" if d in ("", "ai.onnx") else d): v for d, v in model.meta.opset_imports.items()}
    opsets["ai.onnx"] = model.opset
    count, nbytes = parameter_stats(model)
    path = model.source
    return ModelSummary(
        path=str(path) if path is not None else None,
        file_bytes=model_file_bytes(path) if path is not None and Path(path).is_file() else None,
        ir_version=model.meta.ir_version,
        producer_name=model.meta.producer_name,
        producer_version=model.meta.producer_version,
        opsets=dict(sorted(opsets.items(), key=lambda kv: (kv[0] != "ai.onnx", kv[0]))),
        inputs=[tensor_info(t) for t in inferred.graph.inputs if not isinstance(t, gs.Constant)],
        outputs=[tensor_info(t) for t in inferred.graph.outputs],
        node_count=len(model.graph.nodes),
        op_histogram=model.op_histogram(),
        parameter_count=count,
        parameter_bytes=nbytes,
        macs=compute_macs(model, shape_overrides),
        notes=list(dict.fromkeys(model.notes + inferred.notes)),
    )
