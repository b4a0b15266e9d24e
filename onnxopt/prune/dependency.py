"""Which channels of an ONNX graph must be removed together (the channel groups).

The design follows Torch-Pruning's DependencyGraph (groups of coupled
channels, one small rule per op kind, index mappings for Concat, Split and
Flatten) but works on the ONNX graph itself, with a simpler core: every
channel of every tensor that carries channels is an element of a union-find
(``networkx.utils.UnionFind``), and each op rule unions the elements the op
ties together:

* element-wise ops, BatchNormalization, pooling, Resize, Pad: channel i of the
  input is channel i of the output;
* residual Add/Mul/Sub/...: channel i of every operand that really has the
  channel dim (an operand whose dim is 1 there broadcasts and does not couple);
* Concat on the channel axis: input k's channel i is output channel offset_k + i;
  Split and Slice the other way round;
* Flatten/Reshape into Gemm/MatMul: channel i is the block of features
  [i*B, (i+1)*B) (B = H*W, 1 after a global pool);
* Transpose, Squeeze, Unsqueeze, Reduce*: the channel axis moves;
* grouped and depthwise Conv: each conv group (its input AND output channels)
  is one unit. Removing whole conv groups is the safe choice: every kept
  group keeps its shape, only the ``group`` attribute changes, and the
  producer of the input simply loses the channels of the removed groups.
  Pruning "an equal count per group" would tie channels at equal positions
  in different groups and is not done. A depthwise conv is the case
  "one input channel per group", so its input and output channels form one
  group, as they must.

Channels are *born* at ops with weights (Conv, ConvTranspose, Gemm, MatMul
with a constant B): their output channels can shrink by slicing the weights.
Connected elements form *units*; units touching the same tensors form a
*group* (a layer's channels). Anything the analysis cannot follow FREEZES the
channels involved, with the reason recorded ("consumer Reshape at node X
mixes channels"); graph inputs and outputs never change shape, so channels
reaching them are frozen too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import reduce

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import OnnxoptError
from onnxopt.ir.model import Model, constant_array
from onnxopt.ir.shapes import infer_shapes
from onnxopt.prune.plan import Group, Member, PruningPlan


@dataclass(frozen=True)
class ChannelAxis:
    """Where a tensor's channels are: its axis and the channel count."""

    axis: int
    size: int


def node_label(node: gs.Node) -> str:
    """A node's name, or ``Op:first_output`` when the exporter left it unnamed."""
    return node.name or f"{node.op}:{node.outputs[0].name if node.outputs else '?'}"


def param_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The constant value of ``t``, looking through Identity nodes (torchscript shares deduplicated
    initializers through them); None when it is computed at run time."""
    for _ in range(16):
        if t is None:
            return None
        value = constant_array(t)
        if value is not None:
            return value
        if len(t.inputs) != 1 or t.inputs[0].op != "Identity" or not t.inputs[0].inputs:
            return None
        t = t.inputs[0].inputs[0]
    return None


def rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None


def _present(t: gs.Tensor | None) -> bool:
    return t is not None and bool(t.name)


def int_list(node: gs.Node, index: int, attr: str | None = None) -> list[int] | None:
    """Integer values of optional input ``index`` (when constant) or attribute ``attr``; None if unknown/absent."""
    if index < len(node.inputs) and _present(node.inputs[index]):
        arr = param_value(node.inputs[index])
        return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]
    if attr is not None and attr in node.attrs:
        v = node.attrs[attr]
        return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return None


def has_runtime_input(node: gs.Node, index: int) -> bool:
    """True when optional input ``index`` is present but not a constant."""
    return index < len(node.inputs) and _present(node.inputs[index]) and param_value(node.inputs[index]) is None


# -- symbolic dims as monomials ------------------------------------------------------
#: a dim as coefficient * product of symbolic dims: (6, ("N",)) is 6*N
Mono = tuple[int, tuple[str, ...]]


def _mono(d) -> Mono | None:
    if isinstance(d, (int, np.integer)) and int(d) >= 0:
        return int(d), ()
    if isinstance(d, str) and d:
        return 1, (d,)
    return None


def _mul(a: Mono | None, b: Mono | None) -> Mono | None:
    if a is None or b is None:
        return None
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _prod(dims: Iterable[Mono | None]) -> Mono | None:
    return reduce(_mul, dims, (1, ()))


def _div(a: Mono | None, b: Mono | None) -> Mono | None:
    if a is None or b is None or b[0] == 0 or a[0] % b[0]:
        return None
    rest = Counter(a[1])
    rest.subtract(Counter(b[1]))
    if any(v < 0 for v in rest.values()):
        return None
    return a[0] // b[0], tuple(sorted(rest.elements()))


def _dims(shape) -> list[Mono | None] | None:
    return None if shape is None else [_mono(d) for d in shape]


@dataclass(frozen=True)
class ReshapeMap:
    """Channel c of the input becomes, on ``axis`` of the output, elements ``slot(c)*block ... + block - 1``.

    ``slot(c)`` is ``c`` (the axis is kept, or flattened with the dims after
    it), or ``c % fold`` when the reshape splits the channels into
    ``(groups, fold)`` (a channel shuffle's first step): the channels are then
    followed on the inner axis, and unit k holds input channels k, k + fold,
    k + 2*fold, ... so every group loses the same positions and the outer
    (groups) axis never changes.
    """

    axis: int
    block: int
    fold: int = 0

    def targets(self, c: int) -> range:
        slot = c % self.fold if self.fold else c
        return range(slot * self.block, (slot + 1) * self.block)


def follow_reshape(in_dims: Sequence[Mono | None], axis: int, size: int,
                   out_dims: Sequence[Mono | None] | None) -> ReshapeMap | str:
    """Where channel ``axis`` of a tensor lands after a reshape to ``out_dims`` (or why it cannot be followed)."""
    if out_dims is None or any(d is None for d in in_dims[:axis]):
        return "has shapes the analysis does not know (run shape inference or give static shapes)"
    suffix = in_dims[axis + 1:]
    if any(d is None or d[1] for d in suffix):
        return "folds channels together with dims of unknown size"
    rest = int(np.prod([d[0] for d in suffix], dtype=np.int64)) if suffix else 1
    prefix = _prod(in_dims[:axis])
    splits = []
    for b in range(len(out_dims)):
        if _prod(out_dims[:b]) != prefix:
            continue
        d = out_dims[b]
        if d is None or d[1]:
            continue
        dim = d[0]
        if dim % size == 0 and dim // size >= 1 and rest % (dim // size) == 0:
            return ReshapeMap(b, dim // size)
        if 1 < dim < size and size % dim == 0:
            splits.append(b)
    for b in splits:  # channels split into (groups, fold): follow them on the inner axis
        fold = size // out_dims[b][0]
        inner = out_dims[b + 1] if b + 1 < len(out_dims) else None
        if inner is not None and not inner[1] and inner[0] % fold == 0 and rest % (inner[0] // fold) == 0:
            return ReshapeMap(b + 1, inner[0] // fold, fold)
    return "splits the channel axis in a way the analysis cannot follow" if splits else "mixes channels"


def _solve_one_unknown(in_dims: list[Mono | None], out: list[Mono | None]) -> list[Mono | None]:
    """Fill a single unknown output dim from the element count (what a ``-1`` means)."""
    unknown = [i for i, d in enumerate(out) if d is None]
    if len(unknown) == 1:
        known = _prod(d for d in out if d is not None)
        out = list(out)
        out[unknown[0]] = _div(_prod(in_dims), known)
    return out


def reshape_out_dims(node: gs.Node, in_dims: list[Mono | None]) -> list[Mono | None] | None:
    """The output dims of a Reshape: from its constant target when it has one, else inferred."""
    target = param_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is not None:
        allowzero = int(node.attrs.get("allowzero", 0))
        out: list[Mono | None] = []
        for i, v in enumerate(np.asarray(target).reshape(-1).tolist()):
            v = int(v)
            if v == 0 and not allowzero:
                out.append(in_dims[i] if i < len(in_dims) else None)
            elif v == -1:
                out.append(None)
            else:
                out.append((v, ()))
        return _solve_one_unknown(in_dims, out)
    y = node.outputs[0]
    if y.shape is None:
        return None
    in_syms = {s for d in in_dims if d is not None for s in d[1]}
    out = [(_mono(d) if not isinstance(d, str) or d in in_syms else None) for d in y.shape]
    return _solve_one_unknown(in_dims, out)


def shape_element(node: gs.Node, index: int) -> tuple[int | None, gs.Node | None, int, int]:
    """Element ``index`` of a Reshape/Resize shape input: (value or None, node holding it, input slot, offset).

    The element is found in a constant target or in a constant piece of a
    Concat that builds the target (exporters write ``Concat(batch, [-1])``).
    """
    t = node.inputs[1 if node.op == "Reshape" else 3]
    arr = param_value(t)
    if arr is not None:
        flat = np.asarray(arr).reshape(-1)
        return (int(flat[index]) if index < flat.size else None), node, (1 if node.op == "Reshape" else 3), index
    prod = t.inputs[0] if len(t.inputs) == 1 else None
    if prod is None or prod.op != "Concat":
        return None, None, 0, 0
    offset = 0
    for slot, piece in enumerate(prod.inputs):
        shape = piece.shape
        if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
            return None, None, 0, 0
        if offset + shape[0] > index:
            parr = param_value(piece)
            if parr is None:
                return None, None, 0, 0
            return int(np.asarray(parr).reshape(-1)[index - offset]), prod, slot, index - offset
        offset += shape[0]
    return None, None, 0, 0


# -- the channel graph ----------------------------------------------------------------
class ChannelGraph:
    """Elements ``(tensor name, channel)`` joined by the op rules; see the module docstring."""

    def __init__(self, model: Model):
        self.model = model
        self.axes: dict[str, ChannelAxis] = {}
        self.order: dict[str, int] = {}
        self.uf = nx.utils.UnionFind()
        self.frozen: dict[str, list[str]] = defaultdict(list)
        self.producers: dict[str, list[str]] = defaultdict(list)
        self.consumers: dict[str, list[str]] = defaultdict(list)

    # -- bookkeeping -----------------------------------------------------------
    def axis_of(self, t: gs.Tensor) -> ChannelAxis | None:
        return self.axes.get(t.name) if _present(t) else None

    def declare(self, t: gs.Tensor, axis: int, size: int) -> ChannelAxis:
        """Say that ``t`` carries ``size`` channels on ``axis``."""
        old = self.axes.get(t.name)
        if old is not None:
            if old != ChannelAxis(axis, size):
                self.freeze(t, f"tensor {t.name} is reached with channels on two different axes")
            return old
        ca = ChannelAxis(int(axis), int(size))
        self.axes[t.name] = ca
        self.order[t.name] = len(self.order)
        for i in range(ca.size):
            self.uf[(t.name, i)]
        return ca

    def adopt(self, t: gs.Tensor, axis: int, size: int, reason: str) -> ChannelAxis:
        """Give a tensor the analysis cannot trace a channel axis, frozen (so what it couples to is frozen)."""
        ca = self.declare(t, axis, size)
        self.freeze(t, reason)
        return ca

    def freeze(self, t: gs.Tensor | str, reason: str) -> None:
        name = t if isinstance(t, str) else t.name
        if name in self.axes and reason not in self.frozen[name]:
            self.frozen[name].append(reason)

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            if self.axis_of(t) is not None:
                self.freeze(t, reason)

    def couple(self, a: gs.Tensor, a0: int, b: gs.Tensor, b0: int, n: int, block: int = 1) -> None:
        """Channel ``a0 + i`` of ``a`` is channels ``b0 + i*block ... + block - 1`` of ``b``."""
        for i in range(n):
            ea = (a.name, a0 + i)
            for j in range(block):
                self.uf.union(ea, (b.name, b0 + i * block + j))

    def same(self, a: gs.Tensor, b: gs.Tensor) -> None:
        """``b`` has ``a``'s channels, one for one."""
        self.couple(a, 0, b, 0, self.axes[a.name].size)

    def mirror(self, x: gs.Tensor, y: gs.Tensor, axis: int | None = None) -> None:
        """Declare ``y`` with ``x``'s channels (on ``axis``, default the same axis) and couple them."""
        ca = self.axes[x.name]
        self.declare(y, ca.axis if axis is None else axis, ca.size)
        self.same(x, y)

    # -- the walk -----------------------------------------------------------------
    def build(self, ignore: Sequence[str] = ()) -> None:
        g = self.model.graph
        view = self.model.nx_view()
        for idx in nx.lexicographical_topological_sort(view):
            node = view.nodes[idx]["node"]
            rule = RULES.get(node.op, _unknown)
            if node.domain not in (None, "", "ai.onnx"):
                rule = _unknown
            rule(self, node)
            self._freeze_subgraph_reads(node)
        for t in g.outputs:
            if self.axis_of(t) is not None:
                self.freeze(t, f"graph output {t.name} keeps its shape")
        self._ignore(ignore)

    def _freeze_subgraph_reads(self, node: gs.Node) -> None:
        subgraphs = [v for v in node.attrs.values() if isinstance(v, gs.Graph)]
        for sg in subgraphs:
            for name in sg.tensors():
                if name in self.axes:
                    self.freeze(name, f"subgraph of {node.op} at node {node_label(node)} reads it")

    def _ignore(self, ignore: Sequence[str]) -> None:
        for name in ignore:
            hits = [n for n in self.model.graph.nodes
                    if n.name == name or any(o.name == name for o in n.outputs)]
            if not hits:
                raise OnnxoptError(f"--ignore {name}: no node has that name (or writes a tensor of that name)")
            for n in hits:
                for t in list(n.inputs) + list(n.outputs):
                    if self.axis_of(t) is not None:
                        self.freeze(t, f"node {node_label(n)} is ignored (--ignore {name})")

    # -- result ------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Units (connected elements) grouped by the tensors they touch."""
        by_signature: dict[tuple, list[dict[str, list[int]]]] = defaultdict(list)
        for elements in self.uf.to_sets():
            unit: dict[str, list[int]] = defaultdict(list)
            for t, i in elements:
                unit[t].append(i)
            signature = tuple(sorted(((t, len(v)) for t, v in unit.items()), key=lambda kv: self.order[kv[0]]))
            by_signature[signature].append({t: sorted(v) for t, v in unit.items()})
        groups: list[tuple[tuple, Group]] = []
        for signature, units in by_signature.items():
            first = signature[0][0]
            units.sort(key=lambda u: u[first][0])
            members = [Member(t, self.axes[t].axis, self.axes[t].size, [u[t] for u in units]) for t, _ in signature]
            reasons = list(dict.fromkeys(r for t, _ in signature for r in self.frozen.get(t, ())))
            producers = list(dict.fromkeys(p for t, _ in signature for p in self.producers.get(t, ())))
            consumers = list(dict.fromkeys(c for t, _ in signature for c in self.consumers.get(t, ())))
            grp = Group(0, len(units), members, bool(reasons), reasons, producers, consumers)
            groups.append(((self.order[first], units[0][first][0]), grp))
        groups.sort(key=lambda kv: kv[0])
        out = []
        for i, (_, grp) in enumerate(groups):
            grp.id = i
            out.append(grp)
        return out


# -- op rules ---------------------------------------------------------------------------
Rule = Callable[[ChannelGraph, gs.Node], None]


def _unknown(cg: ChannelGraph, node: gs.Node) -> None:
    cg.freeze_inputs(node, f"consumer {node.op} at node {node_label(node)} is not understood by the channel analysis")


def _harmless(cg: ChannelGraph, node: gs.Node) -> None:
    """Shape/Size read only the shape; the pruned graph computes the new one itself."""


def _unary(cg: ChannelGraph, node: gs.Node) -> None:
    """Output 0 (and a consumed Dropout mask) has input 0's channels."""
    x = node.inputs[0] if node.inputs else None
    if x is None or cg.axis_of(x) is None:
        return
    for t in node.inputs[1:] if node.op != "CastLike" else ():  # CastLike reads only input 1's dtype
        if cg.axis_of(t) is not None:
            cg.freeze(t, f"{node.op} at node {node_label(node)} reads it as a parameter")
    cg.mirror(x, node.outputs[0])
    if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
        cg.mirror(x, node.outputs[1])


def _batchnorm(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    params = node.inputs[1:5] if node.op == "BatchNormalization" else node.inputs[1:3]
    if ca.axis != 1:
        cg.freeze(x, f"{node.op} at node {label} normalizes axis 1, the channels are on axis {ca.axis}")
    elif any(param_value(p) is None for p in params):
        cg.freeze(x, f"{node.op} at node {label} has parameters computed at run time")
    if any(o.outputs for o in node.outputs[1:]):
        cg.freeze(x, f"{node.op} at node {label} is in training mode")
    cg.mirror(x, node.outputs[0])


def _conv(cg: ChannelGraph, node: gs.Node) -> None:
    """Conv and ConvTranspose: output channels are born here; input channels are read."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    label = node_label(node)
    weight = param_value(w)
    if weight is None or weight.ndim < 3:
        cg.freeze_inputs(node, f"{node.op} at node {label} has a weight computed at run time")
        return
    groups = int(node.attrs.get("group", 1))
    if node.op == "ConvTranspose":
        cin, cout = weight.shape[0], weight.shape[1] * groups
    else:
        cin, cout = weight.shape[1] * groups, weight.shape[0]
    xa = cg.axis_of(x)
    if xa is not None and (xa.axis != 1 or xa.size != cin):
        cg.freeze(x, f"{node.op} at node {label} reads {cin} channels on axis 1, the analysis found "
                     f"{xa.size} on axis {xa.axis}")
        xa = None
    cg.declare(y, 1, cout)
    cg.producers[y.name].append(label)
    if has_runtime_input(node, 2):
        cg.freeze(y, f"{node.op} at node {label} has a bias computed at run time "
                     f"(run 'onnxopt optimize' first to fold it)")
    if xa is not None:
        cg.consumers[x.name].append(label)
    if groups == 1:
        return
    cin_g, cout_g = cin // groups, cout // groups
    for grp in range(groups):  # one conv group = one unit (input and output channels)
        if xa is not None:
            cg.couple(x, grp * cin_g, x, grp * cin_g, 1, cin_g)
            cg.couple(x, grp * cin_g, y, grp * cout_g, 1, cout_g)
        else:
            cg.couple(y, grp * cout_g, y, grp * cout_g, 1, cout_g)
    if xa is None:
        cg.freeze(y, f"grouped {node.op} at node {label} reads input channels that cannot change")


def _gemm(cg: ChannelGraph, node: gs.Node) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    label = node_label(node)
    weight = param_value(b)
    if weight is None or weight.ndim != 2:
        cg.freeze_inputs(node, f"Gemm at node {label} has a B computed at run time")
        return
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    k, n = (weight.shape[1], weight.shape[0]) if trans_b else weight.shape
    aa = cg.axis_of(a)
    if aa is not None:
        if aa.axis != (0 if trans_a else 1) or aa.size != k:
            cg.freeze(a, f"Gemm at node {label} reads it on its M axis (mixes samples with channels)")
        else:
            cg.consumers[a.name].append(label)
    cg.declare(y, 1, n)
    cg.producers[y.name].append(label)
    if len(node.inputs) > 2 and _present(node.inputs[2]):
        c = node.inputs[2]
        if param_value(c) is None:
            cg.freeze(y, f"Gemm at node {label} adds a C computed at run time")
        if cg.axis_of(c) is not None:
            cg.freeze(c, f"Gemm at node {label} adds it as C")


def _matmul(cg: ChannelGraph, node: gs.Node) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    label = node_label(node)
    weight = param_value(b)
    ra, ry = rank(a), rank(y)
    aa = cg.axis_of(a)
    if weight is None or weight.ndim != 2 or ra is None or ry is None or ra < 2:
        cg.freeze_inputs(node, f"MatMul at node {label} multiplies two run-time tensors (mixes channels)")
        return
    k, n = weight.shape
    if aa is not None and aa.axis != ra - 1:
        cg.mirror(a, y, aa.axis + ry - ra)  # channels on a batch or M axis pass through
        return
    if aa is not None:
        if aa.size != k:
            cg.freeze(a, f"MatMul at node {label} reads {k} features, the analysis found {aa.size}")
        else:
            cg.consumers[a.name].append(label)
    cg.declare(y, ry - 1, n)
    cg.producers[y.name].append(label)


def _elementwise(cg: ChannelGraph, node: gs.Node) -> None:
    """Broadcasting ops (Add, Mul, Where, ...): operands with the full channel dim are coupled."""
    label = node_label(node)
    inputs = [t for t in node.inputs if _present(t)]
    slotted = [t for t in inputs if cg.axis_of(t) is not None]
    if not slotted:
        return
    y = node.outputs[0]
    ranks = [rank(t) for t in inputs]
    ry = rank(y) if y.shape is not None else (max(ranks) if None not in ranks else None)
    if ry is None or any(rank(t) is None for t in slotted):
        for t in slotted:
            cg.freeze(t, f"{node.op} at node {label} has shapes the analysis does not know")
        return
    size = max(cg.axes[t.name].size for t in slotted)
    wide = [t for t in slotted if cg.axes[t.name].size == size]
    out_axes = {cg.axes[t.name].axis + ry - rank(t) for t in wide}
    if len(out_axes) != 1:
        for t in slotted:
            cg.freeze(t, f"{node.op} at node {label} combines channels on different axes")
        return
    axis = out_axes.pop()
    cg.declare(y, axis, size)
    for t in inputs:
        ca = cg.axis_of(t)
        if ca is not None and ca.size == size:
            cg.same(t, y)
            continue
        r = rank(t)
        at = axis - (ry - r) if r is not None else -1
        if r is not None and at < 0:
            continue  # broadcast: no channel dim
        dim = t.shape[at] if r is not None else None
        if dim == 1 and size != 1:
            continue  # broadcast along the channels
        if ca is None and param_value(t) is not None and dim == size:
            continue  # a per-channel parameter: sliced when the plan is applied
        if ca is not None:
            cg.freeze(t, f"{node.op} at node {label} broadcasts it against {size} channels")
            cg.freeze(y, f"{node.op} at node {label} broadcasts {t.name} against {size} channels")
            continue
        cg.adopt(t, at, size, f"operand {t.name} of {node.op} at node {label} carries channels the analysis "
                              f"cannot follow")
        cg.same(t, y)


def _concat(cg: ChannelGraph, node: gs.Node) -> None:
    y = node.outputs[0]
    label = node_label(node)
    inputs = [t for t in node.inputs if _present(t)]
    slotted = [t for t in inputs if cg.axis_of(t) is not None]
    if not slotted:
        return
    r = rank(slotted[0])
    axis = int(node.attrs.get("axis", 0))
    axis = axis + r if r is not None and axis < 0 else axis
    ch_axes = {cg.axes[t.name].axis for t in slotted}
    if len(ch_axes) != 1:
        for t in slotted:
            cg.freeze(t, f"Concat at node {label} joins tensors whose channels are on different axes")
        return
    ch = ch_axes.pop()
    if ch != axis:  # joined along another axis: the channels stay put
        size = cg.axes[slotted[0].name].size
        cg.declare(y, ch, size)
        for t in inputs:
            if cg.axis_of(t) is None:
                cg.adopt(t, ch, size, f"Concat at node {label} joins it with tensors whose channels it cannot follow")
            if cg.axes[t.name].size != size:
                cg.freeze(t, f"Concat at node {label} joins tensors with different channel counts")
                cg.freeze(y, f"Concat at node {label} joins tensors with different channel counts")
                continue
            cg.same(t, y)
        return
    sizes = []
    for t in inputs:
        ca = cg.axis_of(t)
        dim = t.shape[axis] if t.shape is not None and len(t.shape) > axis else None
        sizes.append(ca.size if ca is not None else (dim if isinstance(dim, int) else None))
    if any(s is None for s in sizes):
        for t in slotted:
            cg.freeze(t, f"Concat at node {label} joins a tensor of unknown channel count")
        return
    cg.declare(y, axis, sum(sizes))
    offset = 0
    for t, s in zip(inputs, sizes):
        if cg.axis_of(t) is None:
            cg.adopt(t, axis, s, f"Concat input {t.name} at node {label} has channels the analysis cannot follow")
        cg.couple(t, 0, y, offset, s)
        offset += s


def split_sizes(node: gs.Node, total: int) -> list[int] | None:
    """The sizes of a Split's outputs along its axis (input, attribute, or equal parts)."""
    sizes = int_list(node, 1, "split")
    if has_runtime_input(node, 1):
        return None
    if sizes is None:
        n = int(node.attrs.get("num_outputs", len(node.outputs)))
        part = -(-total // n)  # opset 18: ceil, the last part smaller
        sizes = [part] * (n - 1) + [total - part * (n - 1)]
    return sizes if sum(sizes) == total and all(s >= 0 for s in sizes) else None


def _split(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    r = rank(x)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + r if r is not None and axis < 0 else axis
    if axis != ca.axis:
        for o in node.outputs:
            cg.mirror(x, o)
        return
    sizes = split_sizes(node, ca.size)
    if sizes is None or len(sizes) != len(node.outputs):
        cg.freeze(x, f"Split at node {label} has split sizes the analysis does not know")
        return
    offset = 0
    for o, s in zip(node.outputs, sizes):
        cg.declare(o, axis, s)
        cg.couple(x, offset, o, 0, s)
        offset += s


def slice_params(node: gs.Node, r: int) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice with constant parameters, axes normalized; None if computed."""
    if any(has_runtime_input(node, i) for i in (1, 2, 3, 4)):
        return None
    starts, ends = int_list(node, 1, "starts"), int_list(node, 2, "ends")
    if starts is None or ends is None:
        return None
    axes = int_list(node, 3, "axes") or list(range(len(starts)))
    steps = int_list(node, 4) or [1] * len(starts)
    return starts, ends, [a + r if a < 0 else a for a in axes], steps


def slice_range(start: int, end: int, size: int) -> tuple[int, int]:
    """Clamp a step-1 slice to ``[0, size]`` as onnx does."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    start, end = min(max(start, 0), size), min(max(end, 0), size)
    return start, max(start, end)


def _slice(cg: ChannelGraph, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    params = slice_params(node, rank(x) or 0)
    if params is None:
        cg.freeze(x, f"Slice at node {label} computes its starts/ends at run time")
        return
    starts, ends, axes, steps = params
    if ca.axis not in axes:
        cg.mirror(x, y)
        return
    k = axes.index(ca.axis)
    if steps[k] != 1:
        cg.freeze(x, f"Slice at node {label} takes every {steps[k]}th channel")
        return
    start, end = slice_range(starts[k], ends[k], ca.size)
    if end <= start:
        cg.freeze(x, f"Slice at node {label} takes no channel")
        return
    cg.declare(y, ca.axis, end - start)
    cg.couple(x, start, y, 0, end - start)


def _pool(cg: ChannelGraph, node: gs.Node) -> None:
    """Pooling works per channel on NCHW tensors."""
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    if ca.axis != 1:
        cg.freeze(x, f"{node.op} at node {label} pools NCHW, the channels are on axis {ca.axis}")
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        cg.freeze(x, f"{node.op} at node {label} also returns indices (they encode channel offsets)")
    cg.mirror(x, node.outputs[0])


def _resize(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    if node.op == "Upsample":
        scales = param_value(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("scales", []))
        sizes = None
    else:
        scales = param_value(node.inputs[2]) if len(node.inputs) > 2 and _present(node.inputs[2]) else None
        sizes = node.inputs[3] if len(node.inputs) > 3 and _present(node.inputs[3]) else None
        if len(node.inputs) > 2 and _present(node.inputs[2]) and scales is None:
            cg.freeze(x, f"{node.op} at node {label} computes its scales at run time")
    axes = node.attrs.get("axes")
    pos = ca.axis if axes is None else (list(axes).index(ca.axis) if ca.axis in axes else None)
    if scales is not None and np.asarray(scales).size and pos is not None and float(np.asarray(scales).reshape(-1)[pos]) != 1.0:
        cg.freeze(x, f"{node.op} at node {label} scales the channel axis")
    if sizes is not None and pos is not None:
        value = shape_element(node, pos)[0]
        if value is None:
            cg.freeze(x, f"{node.op} at node {label} computes its output sizes at run time")
        elif value != ca.size:
            cg.freeze(x, f"{node.op} at node {label} resizes the channel axis")
    cg.mirror(x, node.outputs[0])


def _pad(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    pads = int_list(node, 1, "pads")
    r = rank(x)
    if pads is None or has_runtime_input(node, 1) or has_runtime_input(node, 3) or r is None:
        cg.freeze(x, f"Pad at node {label} computes its pads at run time")
    else:
        axes = int_list(node, 3) or list(range(r))
        axes = [a + r if a < 0 else a for a in axes]
        if ca.axis in axes:
            k = axes.index(ca.axis)
            if pads[k] != 0 or pads[k + len(axes)] != 0:
                cg.freeze(x, f"Pad at node {label} pads the channel axis")
    cg.mirror(x, node.outputs[0])


def _reduce(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    r = rank(x)
    if node.op in ("ArgMax", "ArgMin"):
        axes = [int(node.attrs.get("axis", 0))]
    else:
        if has_runtime_input(node, 1):
            cg.freeze(x, f"{node.op} at node {label} computes its axes at run time")
            return
        axes = int_list(node, 1, "axes")
        if not axes:
            if int(node.attrs.get("noop_with_empty_axes", 0)):
                cg.mirror(x, node.outputs[0])
            else:
                cg.freeze(x, f"{node.op} at node {label} reduces over all axes, channels included")
            return
    if r is None:
        cg.freeze(x, f"{node.op} at node {label} has an input of unknown rank")
        return
    axes = [a + r if a < 0 else a for a in axes]
    if ca.axis in axes:
        cg.freeze(x, f"{node.op} at node {label} reduces over the channel axis")
        return
    keep = int(node.attrs.get("keepdims", 1))
    cg.mirror(x, node.outputs[0], ca.axis if keep else ca.axis - sum(1 for a in axes if a < ca.axis))


def _softmax(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    r = rank(x) or 0
    axis = int(node.attrs.get("axis", -1 if cg.model.opset >= 13 else 1))
    axis = axis + r if axis < 0 else axis
    mixes = ca.axis == axis if cg.model.opset >= 13 else ca.axis >= axis
    if node.op == "LayerNormalization":
        mixes = ca.axis >= axis
    if mixes:
        cg.freeze(x, f"{node.op} at node {node_label(node)} normalizes across the channels")
    cg.mirror(x, node.outputs[0])


def _transpose(cg: ChannelGraph, node: gs.Node) -> None:
    x = node.inputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    r = rank(x)
    perm = node.attrs.get("perm")
    if perm is None:
        if r is None:
            cg.freeze(x, f"Transpose at node {node_label(node)} has an input of unknown rank")
            return
        perm = list(reversed(range(r)))
    cg.mirror(x, node.outputs[0], list(perm).index(ca.axis))


def _reshape_like(cg: ChannelGraph, node: gs.Node) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: follow the channel axis through the new shape."""
    x, y = node.inputs[0], node.outputs[0]
    ca = cg.axis_of(x)
    if ca is None:
        return
    label = node_label(node)
    in_dims = _dims(x.shape)
    if in_dims is None:
        cg.freeze(x, f"consumer {node.op} at node {label} has an input of unknown shape")
        return
    if node.op == "Flatten":
        k = int(node.attrs.get("axis", 1))
        k = k + len(in_dims) if k < 0 else k
        out_dims = [_prod(in_dims[:k]), _prod(in_dims[k:])]
    elif node.op == "Reshape":
        out_dims = reshape_out_dims(node, in_dims)
    else:
        out_dims = _dims(y.shape)
    where = follow_reshape(in_dims, ca.axis, ca.size, out_dims)
    if isinstance(where, str):
        cg.freeze(x, f"consumer {node.op} at node {label} {where}")
        return
    axis, block = where.axis, where.block
    if node.op == "Reshape":
        value = shape_element(node, axis)[0]
        copies_channels = (value == 0 and not int(node.attrs.get("allowzero", 0)) and axis == ca.axis and block == 1
                           and not where.fold)
        if value is None or (value == 0 and not copies_channels) or value < -1:
            cg.freeze(x, f"Reshape at node {label} computes its target shape at run time "
                         f"(run 'onnxopt optimize' first to fold it)")
            return
    cg.declare(y, axis, (where.fold or ca.size) * block)
    for c in range(ca.size):
        for t in where.targets(c):
            cg.uf.union((x.name, c), (y.name, t))


UNARY = frozenset({
    "Identity", "Dropout", "Cast", "CastLike", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Sin",
    "Cos", "Shrink",
})
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
})
#: op -> rule; ops not listed freeze the channels they read
RULES: dict[str, Rule] = {
    **{op: _unary for op in UNARY},
    **{op: _elementwise for op in ELEMENTWISE},
    "BatchNormalization": _batchnorm, "InstanceNormalization": _batchnorm,
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "Concat": _concat, "Split": _split, "Slice": _slice,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "GlobalAveragePool": _pool, "GlobalMaxPool": _pool, "GlobalLpPool": _pool,
    "Resize": _resize, "Upsample": _resize, "Pad": _pad,
    **{op: _reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax, "LayerNormalization": _softmax,
    "Transpose": _transpose,
    "Reshape": _reshape_like, "Flatten": _reshape_like, "Squeeze": _reshape_like, "Unsqueeze": _reshape_like,
    "Shape": _harmless, "Size": _harmless, "Constant": _harmless,
}


# -- entry points -------------------------------------------------------------------------
def analyze(model: Model, ignore: Sequence[str] = ()) -> PruningPlan:
    """The channel groups of ``model`` as a plan with nothing selected yet.

    Runs shape inference on ``model`` (in place: annotations only). ``ignore``
    names nodes (or tensors they write) whose channels must not change.
    """
    infer_shapes(model)
    cg = ChannelGraph(model)
    cg.build(ignore)
    plan = PruningPlan(cg.groups(), settings={"ignore": list(ignore)})
    return plan


def describe_groups(model: Model, ignore: Sequence[str] = ()) -> list[dict]:
    """One dict per channel group (for ``inspect --prunable`` and ``prune --list-groups``).

    Keys: id, size (units), channels_per_unit, prunable, frozen, reasons,
    producers, consumers, tensors (name, axis and channel count of each member).
    """
    plan = analyze(model.copy(), ignore)
    return [{
        "id": g.id,
        "size": g.size,
        "channels_per_unit": g.channels_per_unit,
        "prunable": g.prunable,
        "frozen": g.frozen,
        "reasons": list(g.reasons),
        "producers": list(g.producers),
        "consumers": list(g.consumers),
        "tensors": [{"name": m.tensor, "axis": m.axis, "channels": m.size} for m in g.members],
    } for g in plan.groups]
