"""The in-memory model: an ``onnx_graphsurgeon.Graph`` plus what gs drops.

onnx-graphsurgeon is the store. ``Model`` adds the model-level fields that
``gs.import_onnx``/``gs.export_onnx`` do not carry (metadata_props, doc_string,
model_version, domain, the full opset-import list with custom domains) and a
few helpers the passes share: initializer access, consumer maps, channel-axis
slicing of weights, and QDQ-friendly tensor creation.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class ModelMeta:
    """Model-level fields that must survive a round trip untouched."""

    ir_version: int
    opset_imports: dict[str, int]
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> "ModelMeta":
        return cls(
            ir_version=proto.ir_version,
            opset_imports={o.domain: o.version for o in proto.opset_import},
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
            domain=proto.domain,
            model_version=proto.model_version,
            doc_string=proto.doc_string,
            metadata_props={p.key: p.value for p in proto.metadata_props},
        )


class Model:
    """A loaded ONNX model: ``graph`` (gs.Graph) + ``meta`` + where it came from."""

    def __init__(self, graph: gs.Graph, meta: ModelMeta, source: Path | None = None):
        self.graph = graph
        self.meta = meta
        self.source = source  # path of the file it was loaded from, if any
        self.notes: list[str] = []  # things the tool did that the user should hear about

    # -- conversion -------------------------------------------------------
    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto, source: Path | None = None) -> "Model":
        graph = gs.import_onnx(proto)
        model = cls(graph, ModelMeta.from_proto(proto), source)
        init_names = {t.name for t in proto.graph.initializer}
        as_inputs = [i.name for i in proto.graph.input if i.name in init_names]
        if as_inputs:
            # IR < 4 style: initializers also listed as graph inputs (overridable defaults).
            # They become plain initializers so they can be folded; real inputs keep names and order.
            model.meta.ir_version = max(model.meta.ir_version, 4)
            model.notes.append(f"{len(as_inputs)} initializer(s) listed as graph inputs (IR < 4 style) are kept as "
                               "initializers only, so they can be optimized; the real inputs are unchanged")
        return model

    def to_onnx(self) -> onnx.ModelProto:
        """Export to a ModelProto, restoring every model-level field."""
        opsets = dict(self.meta.opset_imports)
        # the default-domain opset follows the graph (a pass may have upgraded it)
        opsets.pop("ai.onnx", None)
        opsets[""] = int(self.graph.opset)
        used = {n.domain for n in self.graph.nodes if n.domain not in (None, "", "ai.onnx")}
        for sub in self.graph.subgraphs(recursive=True):
            used |= {n.domain for n in sub.nodes if n.domain not in (None, "", "ai.onnx")}
        for dom in used:
            opsets.setdefault(dom, 1)
        opset_imports = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
        proto = gs.export_onnx(self.graph, do_type_check=False, opset_imports=opset_imports)
        m = self.meta
        proto.ir_version = m.ir_version
        proto.producer_name = m.producer_name
        proto.producer_version = m.producer_version
        proto.domain = m.domain
        proto.model_version = m.model_version
        proto.doc_string = m.doc_string
        del proto.metadata_props[:]
        for k, v in m.metadata_props.items():
            proto.metadata_props.add(key=k, value=v)
        return proto

    def copy(self) -> "Model":
        """A deep copy (initializer arrays included) that passes can modify freely."""
        clone = Model.from_onnx(self.to_onnx(), self.source)
        clone.meta = _copy.deepcopy(self.meta)
        clone.notes = list(self.notes)
        return clone

    # -- convenience ------------------------------------------------------
    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    @property
    def nodes(self) -> list[gs.Node]:
        return self.graph.nodes

    def tensors(self) -> dict[str, gs.Tensor]:
        return self.graph.tensors()

    def initializers(self) -> dict[str, gs.Constant]:
        return {n: t for n, t in self.graph.tensors().items() if isinstance(t, gs.Constant)}

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for n in self.graph.nodes:
            hist[n.op] = hist.get(n.op, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def parameter_count(self) -> tuple[int, int]:
        """(number of parameters, bytes) over all initializers."""
        count = nbytes = 0
        for t in self.initializers().values():
            shape = t.shape
            n = int(np.prod(shape)) if shape is not None else 0
            count += n
            nbytes += n * np.dtype(t.dtype).itemsize if t.dtype is not None else 0
        return count, nbytes

    def consumers(self) -> dict[str, list[gs.Node]]:
        """Map tensor name -> nodes that read it (top-level graph only)."""
        out: dict[str, list[gs.Node]] = {}
        for n in self.graph.nodes:
            for t in n.inputs:
                if t.name:
                    out.setdefault(t.name, []).append(n)
        return out

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return any(o is tensor for o in self.graph.outputs)

    def add_constant(self, name: str, values: np.ndarray) -> gs.Constant:
        """A new initializer with a name unique in the graph."""
        existing = self.graph.tensors()
        base, i = name, 0
        while name in existing:
            i += 1
            name = f"{base}_{i}"
        # np.require keeps 0-d scalars 0-d (np.ascontiguousarray would make them shape (1,))
        return gs.Constant(name, np.require(values, requirements="C"))

    def nx_view(self):
        """A networkx view for analyses; see :func:`onnxopt.ir.view.to_networkx`."""
        from onnxopt.ir.view import to_networkx

        return to_networkx(self)

    def __repr__(self) -> str:
        return f"Model(opset={self.opset}, nodes={len(self.graph.nodes)}, source={self.source})"


class ExternalValues(gs.ir.tensor.LazyValues):
    """Values of a tensor kept in external data, read from the model's folder only when used.

    gs exports a LazyValues constant as its original TensorProto, so an unchanged
    weight of a > 2 GB model never enters memory; :func:`save_proto` copies its
    bytes from ``base_dir`` into the output's data file.
    """

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path):
        super().__init__(tensor)
        self.base_dir = Path(base_dir)

    def load(self):
        t = onnx.TensorProto()
        t.CopyFrom(self.tensor)
        from onnxopt.ir.io import check_external_location

        location = next((e.value for e in t.external_data if e.key == "location"), "")
        check_external_location(location, self.base_dir)
        onnx.external_data_helper.load_external_data_for_tensor(t, str(self.base_dir))
        return onnx.numpy_helper.to_array(t)


def constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The numpy value of a gs.Constant, or of a Variable produced by a Constant node.

    A weight left on disk (:class:`ExternalValues`, models over 2 GB) is read
    without being cached, so looking at it does not pull it into memory for good.
    """
    if isinstance(tensor, gs.Constant):
        if isinstance(tensor._values, ExternalValues):
            return tensor._values.load()
        return tensor.values
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if "value" in attrs and isinstance(attrs["value"], gs.Constant):
            return attrs["value"].values
    return None


def slice_channels(values: np.ndarray, axis: int, keep) -> np.ndarray:
    """Keep only ``keep`` indices of ``values`` along ``axis`` (structured pruning)."""
    return np.ascontiguousarray(np.take(values, np.asarray(keep, dtype=np.int64), axis=axis))
