"""Loading and saving models safely.

* ``load_model`` accepts a path or bytes, refuses non-ONNX input with a one-line
  reason, resolves external data only inside the model's own folder, and checks
  the graph is structurally sound (no cycle, no dangling input).
* ``save_model`` writes atomically: everything goes to a temporary folder beside
  the target and is moved into place with ``os.replace``, so a crash never
  leaves a half-written model. External data is used above 2 GB or on request.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import networkx as nx
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxopt.errors import ModelLoadError, OnnxoptError, UnsafeExternalDataError
from onnxopt.ir.model import ExternalValues, Model

TWO_GB = 2**31
# stay clear of protobuf's hard 2 GiB limit: graph structure needs room too
EXTERNAL_DATA_THRESHOLD = TWO_GB - 64 * 2**20


def _all_tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph and its subgraphs (initializers and attributes)."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def _external_tensors(proto: onnx.ModelProto):
    for t in _all_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for f in proto.functions:
        for node in f.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    yield attr.t


def check_external_location(location: str, base_dir: Path) -> Path:
    """Resolve an external-data ``location`` inside ``base_dir`` or refuse it."""
    if not location:
        raise UnsafeExternalDataError("external data entry has an empty location")
    p = Path(location)
    if p.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeExternalDataError(f"external data location {location!r} is an absolute path; only files inside the model's folder are read")
    if ".." in p.parts or ".." in Path(location.replace("\\", "/")).parts:
        raise UnsafeExternalDataError(f"external data location {location!r} contains '..'; only files inside the model's folder are read")
    base = base_dir.resolve()
    full = (base_dir / p).resolve()
    if full != base and base not in full.parents:
        raise UnsafeExternalDataError(f"external data location {location!r} resolves outside the model's folder (symlink?)")
    if not full.is_file():
        raise ModelLoadError(f"external data file {location!r} not found next to the model (in {base_dir})")
    return full


def _external_info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _check_external(proto: onnx.ModelProto, base_dir: Path) -> int:
    """Check every external-data reference; returns the total bytes they hold."""
    total = 0
    for t in _external_tensors(proto):
        info = _external_info(t)
        full = check_external_location(info.get("location", ""), base_dir)
        offset = int(info.get("offset", 0) or 0)
        size = full.stat().st_size
        length = int(info["length"]) if info.get("length") else size - offset
        if offset < 0 or offset > size or offset + length > size:
            raise ModelLoadError(f"external data for tensor {t.name!r} lies beyond the end of {info['location']!r} (truncated file?)")
        total += length
    return total


def _load_external(proto: onnx.ModelProto, base_dir: Path, lazy_above: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Load external data into ``proto``; above ``lazy_above`` bytes leave it on disk (returns True: lazy)."""
    total = _check_external(proto, base_dir)
    if total == 0:
        return False
    if total > lazy_above:
        return True  # protobuf cannot hold it: Model reads each tensor when a pass needs it
    onnx.external_data_helper.load_external_data_for_model(proto, str(base_dir))
    return False


def structural_problems(proto: onnx.ModelProto) -> list[str]:
    """Problems that make a graph unusable: dangling inputs and cycles (top level)."""
    g = proto.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer}
    available |= {s.values.name for s in g.sparse_initializer}
    produced_by: dict[str, int] = {}
    for idx, n in enumerate(g.node):
        for o in n.output:
            if o:
                produced_by[o] = idx
    problems: list[str] = []
    out_of_order = False
    for idx, n in enumerate(g.node):
        for i in n.input:
            if not i or i in available:
                continue
            if i not in produced_by:
                problems.append(f"node {n.name or n.op_type!r} ({n.op_type}) reads tensor {i!r} that nothing produces (dangling input)")
            elif produced_by[i] >= idx:
                out_of_order = True
    for o in g.output:
        if o.name not in available and o.name not in produced_by:
            problems.append(f"graph output {o.name!r} is produced by no node")
    if out_of_order:
        dg = nx.DiGraph()
        for idx, n in enumerate(g.node):
            dg.add_node(idx)
            for i in n.input:
                if i in produced_by:
                    dg.add_edge(produced_by[i], idx)
        try:
            cycle = nx.find_cycle(dg)
            names = [g.node[u].name or g.node[u].op_type for u, _ in cycle]
            problems.append("graph has a cycle through nodes " + " -> ".join(names))
        except nx.NetworkXNoCycle:
            pass  # merely unsorted; gs toposorts on export when asked
    return problems


def read_proto(source, *, load_external_data: bool = True,
               lazy_external_above: int = EXTERNAL_DATA_THRESHOLD) -> tuple[onnx.ModelProto, Path | None]:
    """Read a ModelProto from a path or bytes, with clear errors."""
    path: Path | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = "the given bytes"
    else:
        path = Path(source)
        what = str(path)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        if path.is_dir():
            raise ModelLoadError(f"{path} is a folder, not an ONNX model file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ModelLoadError(f"{what} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{what} is not an ONNX model (protobuf parse failed: {exc})") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{what} is not an ONNX model (no ir_version, graph or opset_import)")
    if load_external_data:
        base = path.parent if path is not None else Path.cwd()
        if path is None and any(True for _ in _external_tensors(proto)):
            raise ModelLoadError("a model given as bytes cannot use external data; load it from its file")
        _load_external(proto, base, lazy_external_above)
    return proto, path


def load_model(source, *, validate: bool = True, lazy_external_above: int = EXTERNAL_DATA_THRESHOLD) -> Model:
    """Load a model from a path or bytes into a :class:`Model`.

    External data above ``lazy_external_above`` bytes (default ~2 GB) stays on
    disk and is read tensor by tensor when a pass needs it (protobuf cannot hold
    more than 2 GB in one message).
    """
    proto, path = read_proto(source, lazy_external_above=lazy_external_above)
    if validate:
        problems = structural_problems(proto)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ModelLoadError(f"{path or 'model'}: {problems[0]}{more}")
    try:
        model = Model.from_onnx(proto, path)
    except Exception as exc:  # gs raises assorted errors on malformed graphs
        raise ModelLoadError(f"{path or 'model'}: cannot import the graph: {exc}") from exc
    if path is not None:
        for t in model.graph.tensors().values():
            values = getattr(t, "_values", None)
            if (isinstance(values, gs.ir.tensor.LazyValues) and not isinstance(values, ExternalValues)
                    and isinstance(values.tensor, onnx.TensorProto)
                    and values.tensor.data_location == onnx.TensorProto.EXTERNAL):
                t._values = ExternalValues(values.tensor, path.parent)
    return model


def model_nbytes(proto: onnx.ModelProto) -> int:
    """Size estimate that never serializes (safe above 2 GB)."""
    total = 0
    for t in _all_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(_external_info(t).get("length") or 0)
        else:
            total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    return total + 1024 * len(proto.graph.node)


def _write_external(proto: onnx.ModelProto, model_path: Path, data_name: str, source_dir: Path | None) -> None:
    """Move every tensor of >= 1 KiB into ``data_name`` beside ``model_path``, one tensor at a time.

    Tensors that still point at the source model's data (``ExternalValues``) are
    copied from there in chunks, so a > 2 GB model never sits in memory whole.
    """
    onnx.external_data_helper.convert_model_to_external_data(proto, all_tensors_to_one_file=True,
                                                             location=data_name, size_threshold=1024,
                                                             convert_attribute=False)
    offset = 0
    with open(model_path.parent / data_name, "wb") as out:
        for t in _all_tensors(proto.graph):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            pad = (-offset) % 4096  # page-aligned, as onnx writes it (lets runtimes mmap)
            out.write(b"\0" * pad)
            offset += pad
            if t.HasField("raw_data"):
                out.write(t.raw_data)
                length = len(t.raw_data)
                t.ClearField("raw_data")
            else:
                info = _external_info(t)
                if source_dir is None:
                    raise OnnxoptError(f"tensor {t.name!r} refers to external data but the source folder is unknown")
                src = check_external_location(info.get("location", ""), source_dir)
                start = int(info.get("offset", 0) or 0)
                length = int(info["length"]) if info.get("length") else src.stat().st_size - start
                with open(src, "rb") as fh:
                    fh.seek(start)
                    left = length
                    while left:
                        chunk = fh.read(min(left, 64 * 2**20))
                        if not chunk:
                            raise OnnxoptError(f"external data for {t.name!r} ends early in {src}")
                        out.write(chunk)
                        left -= len(chunk)
            del t.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.data_location = onnx.TensorProto.EXTERNAL
            offset += length
        out.flush()
        os.fsync(out.fileno())


def save_proto(proto: onnx.ModelProto, path, *, external_data: bool | None = None, protect=(),
               size_threshold: int = EXTERNAL_DATA_THRESHOLD, validate: Callable[[Path], None] | None = None,
               source_dir: Path | None = None) -> Path:
    """Write ``proto`` to ``path`` atomically; returns the path.

    ``external_data``: True/False forces, None decides by size (> ``size_threshold``, ~2 GB).
    ``protect``: paths that must not be overwritten (the input model and its data).
    ``validate``: called on the fully written temporary file (external data beside
    it) before anything is moved into place; if it raises, nothing reaches ``path``.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise OnnxoptError(f"output {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OnnxoptError(f"output folder {parent} does not exist")
    data_name = path.name + ".data"
    protected = {Path(p).resolve() for p in protect}
    if path.resolve() in protected:
        raise OnnxoptError(f"refusing to overwrite the input model {path} (pass --in-place to allow it)")
    lazy = any(not t.HasField("raw_data") for t in _external_tensors(proto))
    if lazy and external_data is False:
        raise OnnxoptError("this model's weights exceed 2 GB: it can only be saved with external data")
    use_external = lazy or (external_data if external_data is not None else model_nbytes(proto) > size_threshold)
    if use_external and (parent / data_name).resolve() in protected:
        raise OnnxoptError(f"refusing to overwrite the input's external data file {parent / data_name}")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        tmp_model = tmpdir / path.name
        if use_external:
            _write_external(proto, tmp_model, data_name, source_dir)
        with open(tmp_model, "wb") as fh:
            fh.write(proto.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        if validate is not None:
            validate(tmp_model)
        if (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, parent / data_name)
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def save_model(model: Model, path, *, external_data: bool | None = None, protect=(),
               validate: Callable[[Path], None] | None = None) -> Path:
    """Export and atomically save a :class:`Model` (see :func:`save_proto`)."""
    source_dir = model.source.parent if model.source is not None else None
    return save_proto(model.to_onnx(), path, external_data=external_data, protect=protect, validate=validate,
                      source_dir=source_dir)
