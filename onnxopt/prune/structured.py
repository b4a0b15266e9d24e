"""Structured pruning: choose the units to keep, then remove the others physically.

Selection (:func:`select`) keeps, per prunable group, the highest-scoring
units: the same ratio in every group (per-layer), or one global ranking with
a per-group floor (``min_keep``). ``round_to`` keeps channel counts multiples
of N (rounding the kept count up). :func:`select_for_macs` bisects the ratio
until the pruned model's MACs are at most a fraction of the original's.

Applying (:func:`apply_plan`) slices, per node, what the kept channels of its
inputs and outputs touch: Conv/ConvTranspose/Gemm/MatMul weights and biases
(output rows, input columns), BatchNormalization parameters, per-channel
constants of element-wise ops, the ``group`` of grouped convs, Split sizes,
Slice starts/ends, Reshape targets and Resize sizes. Concat offsets follow
by themselves. Shapes are then re-inferred from scratch. One small function
per op kind (:data:`PRUNERS`), as Torch-Pruning's pruners.

:func:`zero_pruned_channels` is the soft version: it leaves every shape but
makes the removed channels exactly zero at their source, which is what the
exactness tests compare the pruned model with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import CheckFailed, OnnxoptError
from onnxopt.ir.model import Model
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes.base import Pass, PassResult, register
from onnxopt.prune.dependency import (
    param_value,
    analyze,
    rank,
    shape_element,
    slice_params,
    slice_range,
    split_sizes,
)
from onnxopt.prune.importance import Scores, make_importance
from onnxopt.prune.plan import PruningPlan


# -- selection ----------------------------------------------------------------------------
def rounded_keep(keep: int, size: int, channels_per_unit: int, round_to: int) -> int:
    """The smallest kept count >= ``keep`` whose channel count is a multiple of ``round_to`` (else ``size``).

    Groups with fewer than ``2 * round_to`` channels are not rounded: rounding
    would keep them whole, and SIMD width matters little at that size.
    """
    keep = max(1, min(keep, size))
    if round_to <= 1 or size * max(channels_per_unit, 1) < 2 * round_to:
        return keep
    step = round_to // math.gcd(round_to, max(channels_per_unit, 1))
    rounded = -(-keep // step) * step
    return min(rounded, size)


def _top(scores: np.ndarray, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores (ties: lower index first), ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def select(plan: PruningPlan, scores: Scores, ratio: float, *, global_ranking: bool = False,
           min_keep: float = 0.1, round_to: int = 1) -> PruningPlan:
    """Set ``kept`` of every prunable group (in place; returns the plan).

    ``ratio``: fraction of units to remove, in each group (per-layer) or over
    all prunable units (global, lowest scores first, never leaving a group
    below ``ceil(min_keep * size)`` units or 1).
    """
    check_ratio(ratio)
    plan.clear_selection()
    groups = [g for g in plan.prunable() if g.id in scores]
    if not global_ranking:
        for g in groups:
            keep = g.size - math.floor(g.size * ratio + 1e-9)
            g.kept = _top(scores[g.id], rounded_keep(keep, g.size, g.channels_per_unit, round_to))
    else:
        total = sum(g.size for g in groups)
        budget = math.floor(total * ratio + 1e-9)
        floors = {g.id: max(1, math.ceil(min_keep * g.size)) for g in groups}
        left = {g.id: g.size for g in groups}
        ranked = sorted(((float(s), g.id, u) for g in groups for u, s in enumerate(scores[g.id])))
        removed: dict[int, set[int]] = {g.id: set() for g in groups}
        for _, gid, u in ranked:
            if budget <= 0:
                break
            if left[gid] > floors[gid]:
                removed[gid].add(u)
                left[gid] -= 1
                budget -= 1
        for g in groups:
            keep = rounded_keep(left[g.id], g.size, g.channels_per_unit, round_to)
            g.kept = _top(scores[g.id], keep) if keep != left[g.id] else \
                [u for u in range(g.size) if u not in removed[g.id]]
    for g in groups:
        if len(g.kept) == g.size:
            g.kept = None
    return plan


def check_ratio(ratio: float) -> None:
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise OnnxoptError(f"pruning ratio must be in [0, 1), got {ratio}")


def model_macs(model: Model) -> int:
    """Total MACs of Conv/ConvTranspose/Gemm/MatMul (per sample for a dynamic batch)."""
    from onnxopt.analysis.summary import compute_macs

    return compute_macs(model).total


class MacsEstimator:
    """MACs of ``model`` pruned by a plan, without applying it.

    A Conv/ConvTranspose/Gemm/MatMul costs (output elements) x (reduction
    size). Pruning scales the first by the kept fraction of the output's
    channels, and the second by the kept fraction of the input's channels when
    the reduction runs over them (a group-1 conv's input channels, a Gemm's
    K, a MatMul's last axis; a grouped conv loses whole groups, so its
    per-group reduction does not change). Exact for these ops; used to bisect
    quickly, the final plan is measured on the pruned model.
    """

    def __init__(self, model: Model):
        from onnxopt.analysis.summary import compute_macs

        summary = compute_macs(model)
        shaped = infer_shapes(model.copy())  # ranks of the inputs, whatever the caller's model carries
        nodes = {(n.name or n.outputs[0].name): n for n in shaped.graph.nodes if n.outputs}
        self.before = summary.total
        self.items = [(nodes.get(n.node), n.macs) for n in summary.nodes if n.macs]

    @staticmethod
    def _reduces_over_channels(node: gs.Node, axes: dict[str, tuple[int, int]]) -> bool:
        x = node.inputs[0]
        if x.name not in axes:
            return False
        axis = axes[x.name][0]
        if node.op in ("Conv", "ConvTranspose"):
            return axis == 1 and int(node.attrs.get("group", 1)) == 1
        if node.op == "Gemm":
            return axis == (0 if int(node.attrs.get("transA", 0)) else 1)
        return node.op == "MatMul" and rank(x) is not None and axis == rank(x) - 1

    def __call__(self, plan: PruningPlan) -> float:
        axes = plan.tensor_axes()
        kept = plan.kept_channels(only_changed=True)

        def fraction(t: gs.Tensor) -> float:
            return len(kept[t.name]) / axes[t.name][1] if t.name in kept else 1.0

        total = 0.0
        for node, macs in self.items:
            f = 1.0
            if node is not None:
                f = fraction(node.outputs[0])
                if self._reduces_over_channels(node, axes):
                    f *= fraction(node.inputs[0])
            total += macs * f
        return total


def select_for_macs(model: Model, plan: PruningPlan, scores: Scores, target: float, *,
                    global_ranking: bool = False, min_keep: float = 0.1, round_to: int = 1,
                    max_ratio: float = 0.95, steps: int = 14) -> tuple[float, int, int]:
    """Bisect the ratio until MACs(pruned) <= ``target`` * MACs(model); returns (ratio, before, after)."""
    if not (0.0 < target <= 1.0) or math.isnan(target):
        raise OnnxoptError(f"--target-macs must be a fraction in (0, 1], got {target}")
    estimate = MacsEstimator(model)
    before = estimate.before
    if before <= 0:
        raise OnnxoptError("the model has no Conv/Gemm/MatMul MACs to reduce (or its shapes are unknown)")
    goal = target * before

    def macs_at(ratio: float) -> float:
        select(plan, scores, ratio, global_ranking=global_ranking, min_keep=min_keep, round_to=round_to)
        return estimate(plan)

    if before <= goal:
        select(plan, scores, 0.0)
        return 0.0, before, before
    hi_macs = macs_at(max_ratio)
    if hi_macs > goal:
        raise OnnxoptError(f"cannot reach {target:.0%} of the MACs: removing {max_ratio:.0%} of every prunable "
                           f"group leaves {hi_macs / before:.1%} (frozen groups keep the rest)")
    lo, hi = 0.0, max_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        if macs_at(mid) <= goal:
            hi = mid
        else:
            lo = mid
    select(plan, scores, hi, global_ranking=global_ranking, min_keep=min_keep, round_to=round_to)
    after = model_macs(apply_plan(model, plan, verify=False))
    if after > goal + 0.5:  # the estimate is exact for the counted ops; say so loudly if that ever breaks
        raise CheckFailed(f"MACs after pruning ({after}) exceed the target ({goal:.0f}) the estimate promised")
    return hi, before, after


# -- applying ----------------------------------------------------------------------------
class PruneContext:
    """What the per-op pruners share: the kept channels per tensor and safe constant edits."""

    def __init__(self, model: Model, plan: PruningPlan):
        self.model = model
        self.axes = plan.tensor_axes()
        self.keep = {t: np.asarray(v, dtype=np.int64) for t, v in plan.kept_channels(only_changed=True).items()}
        self._names = set(model.tensors())

    def kept(self, t: gs.Tensor) -> np.ndarray | None:
        """Kept channel indices of ``t``, or None when ``t`` keeps all its channels."""
        return self.keep.get(t.name) if t is not None and t.name else None

    def removed(self, t: gs.Tensor) -> np.ndarray | None:
        keep = self.kept(t)
        if keep is None:
            return None
        return np.setdiff1d(np.arange(self.axes[t.name][1]), keep)

    def set_input(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give ``node`` new constant values for input ``index`` without touching other readers."""
        t = node.inputs[index]
        values = np.ascontiguousarray(values)
        # edit in place when no other node reads the values (Shape/Size read only the shape, which
        # should follow the pruning); otherwise give this node its own copy
        others = [n for n in t.outputs if n is not node and n.op not in ("Shape", "Size")]
        if isinstance(t, gs.Constant) and not others and not any(i is t for i in self.model.graph.inputs):
            t.values = values
            return
        base = f"{t.name}_pruned" if t.name else "pruned"
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        node.inputs[index] = gs.Constant(name, values)


def _take(values: np.ndarray, keep: np.ndarray | None, axis: int) -> np.ndarray:
    return values if keep is None else np.take(values, keep, axis=axis)


def _prune_conv(ctx: PruneContext, node: gs.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    kin, kout = ctx.kept(x), ctx.kept(y)
    if kin is None and kout is None:
        return
    w = param_value(node.inputs[1])
    groups = int(node.attrs.get("group", 1))
    transpose = node.op == "ConvTranspose"
    in_axis, out_axis = (0, 1) if transpose else (1, 0)
    if groups == 1:
        w = _take(_take(w, kout, out_axis), kin, in_axis)
    else:  # whole conv groups go: each kept group keeps its shape, ``group`` counts the kept ones
        if kin is None or kout is None:
            raise CheckFailed(f"grouped {node.op} {node.name}: input and output channels must shrink together")
        per_group = w.shape[0] // groups  # Conv: Cout/group rows; ConvTranspose: Cin/group rows
        keep = kin if transpose else kout
        w = np.take(w, keep, axis=0)
        node.attrs["group"] = len(keep) // per_group
    ctx.set_input(node, 1, w)
    if kout is not None and len(node.inputs) > 2 and node.inputs[2].name:
        ctx.set_input(node, 2, np.take(param_value(node.inputs[2]), kout, axis=0))


def _prune_norm(ctx: PruneContext, node: gs.Node) -> None:
    keep = ctx.kept(node.inputs[0])
    if keep is None:
        return
    for i in range(1, 5 if node.op == "BatchNormalization" else 3):
        ctx.set_input(node, i, np.take(param_value(node.inputs[i]), keep, axis=0))


def _prune_gemm(ctx: PruneContext, node: gs.Node) -> None:
    kin, kout = ctx.kept(node.inputs[0]), ctx.kept(node.outputs[0])
    if kin is None and kout is None:
        return
    w = param_value(node.inputs[1])
    k_axis, n_axis = (1, 0) if int(node.attrs.get("transB", 0)) else (0, 1)
    ctx.set_input(node, 1, _take(_take(w, kin, k_axis), kout, n_axis))
    if kout is not None and len(node.inputs) > 2 and node.inputs[2].name:
        c = np.asarray(param_value(node.inputs[2]))
        if c.ndim >= 1 and c.shape[-1] == ctx.axes[node.outputs[0].name][1] and c.shape[-1] != 1:
            ctx.set_input(node, 2, np.take(c, kout, axis=-1))


def _prune_matmul(ctx: PruneContext, node: gs.Node) -> None:
    a, y = node.inputs[0], node.outputs[0]
    w = param_value(node.inputs[1])
    if w is None or w.ndim != 2:
        return
    kin = ctx.kept(a) if a.name in ctx.axes and ctx.axes[a.name][0] == rank(a) - 1 else None
    kout = ctx.kept(y) if y.name in ctx.axes and ctx.axes[y.name][0] == rank(y) - 1 else None
    if kin is not None or kout is not None:
        ctx.set_input(node, 1, _take(_take(w, kin, 0), kout, 1))


def _per_channel_operands(ctx: PruneContext, node: gs.Node):
    """(input index, axis) of each constant operand that holds one value per output channel."""
    y = node.outputs[0]
    if y.name not in ctx.axes or y.shape is None:
        return
    axis, size = ctx.axes[y.name]
    ry = len(y.shape)
    for i, t in enumerate(node.inputs):
        arr = param_value(t) if t.name else None
        if arr is None or size == 1:
            continue
        at = axis - (ry - np.ndim(arr))
        if at >= 0 and np.shape(arr)[at] == size:
            yield i, at


def _prune_elementwise(ctx: PruneContext, node: gs.Node) -> None:
    keep = ctx.kept(node.outputs[0])
    if keep is None:
        return
    for i, at in list(_per_channel_operands(ctx, node)):
        ctx.set_input(node, i, np.take(param_value(node.inputs[i]), keep, axis=at))


def _prune_split(ctx: PruneContext, node: gs.Node) -> None:
    x = node.inputs[0]
    keep = ctx.kept(x)
    if keep is None:
        return
    axis, size = ctx.axes[x.name]
    r = rank(x)
    split_axis = int(node.attrs.get("axis", 0))
    split_axis = split_axis + r if split_axis < 0 else split_axis
    if split_axis != axis:
        return
    bounds = np.cumsum([0, *split_sizes(node, size)])
    new = np.array([int(((keep >= lo) & (keep < hi)).sum()) for lo, hi in zip(bounds[:-1], bounds[1:])], np.int64)
    if ctx.model.opset >= 13:
        node.attrs.pop("num_outputs", None)
        if len(node.inputs) > 1 and node.inputs[1].name:
            ctx.set_input(node, 1, new)
        else:
            node.inputs.append(gs.Constant(f"{node.outputs[0].name}_split_sizes", new))
    else:
        node.attrs["split"] = [int(v) for v in new]


def _prune_slice(ctx: PruneContext, node: gs.Node) -> None:
    x = node.inputs[0]
    keep = ctx.kept(x)
    if keep is None:
        return
    axis, size = ctx.axes[x.name]
    starts, ends, axes, _ = slice_params(node, rank(x))
    if axis not in axes:
        return
    k = axes.index(axis)
    start, end = slice_range(starts[k], ends[k], size)
    new_start = int((keep < start).sum())
    new_end = new_start + int(((keep >= start) & (keep < end)).sum())
    for index, attr, value in ((1, "starts", new_start), (2, "ends", new_end)):
        if index < len(node.inputs) and node.inputs[index].name:
            arr = np.array(param_value(node.inputs[index]), copy=True)
            arr.reshape(-1)[k] = value
            ctx.set_input(node, index, arr)
        else:
            vals = list(node.attrs[attr])
            vals[k] = value
            node.attrs[attr] = vals


def _set_shape_element(ctx: PruneContext, node: gs.Node, index: int, value: int) -> None:
    old, holder, slot, offset = shape_element(node, index)
    if old is None or old <= 0 or holder is None:
        return  # -1 / 0 need no edit (the analysis froze every other case)
    arr = np.array(param_value(holder.inputs[slot]), copy=True)
    arr.reshape(-1)[offset] = value
    ctx.set_input(holder, slot, arr)


def _prune_reshape(ctx: PruneContext, node: gs.Node) -> None:
    y = node.outputs[0]
    keep = ctx.kept(y)
    if keep is not None:
        _set_shape_element(ctx, node, ctx.axes[y.name][0], len(keep))


def _prune_resize(ctx: PruneContext, node: gs.Node) -> None:
    x = node.inputs[0]
    keep = ctx.kept(x)
    if keep is None or len(node.inputs) < 4 or not node.inputs[3].name:
        return
    axis = ctx.axes[x.name][0]
    axes = node.attrs.get("axes")
    if axes is not None:
        if axis not in axes:
            return
        axis = list(axes).index(axis)
    _set_shape_element(ctx, node, axis, len(keep))


Pruner = Callable[[PruneContext, gs.Node], None]
#: op -> what removing channels means for its parameters; other ops need nothing
PRUNERS: dict[str, Pruner] = {
    "Conv": _prune_conv, "ConvTranspose": _prune_conv,
    "BatchNormalization": _prune_norm, "InstanceNormalization": _prune_norm,
    "Gemm": _prune_gemm, "MatMul": _prune_matmul,
    **{op: _prune_elementwise for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu",
                                         "Where")},
    "Split": _prune_split, "Slice": _prune_slice, "Reshape": _prune_reshape, "Resize": _prune_resize,
}


def verify_plan(model: Model, plan: PruningPlan) -> None:
    """Refuse a plan that does not fit ``model``: unknown tensors, other sizes, split units, frozen channels."""
    plan.check_consistent()
    fresh = analyze(model, plan.settings.get("ignore", []))
    fresh_axes = fresh.tensor_axes()
    for t, (axis, size) in plan.tensor_axes().items():
        if t not in fresh_axes:
            raise OnnxoptError(f"the pruning plan does not fit this model: it has no channel tensor {t!r}")
        if fresh_axes[t] != (axis, size):
            raise OnnxoptError(f"the pruning plan does not fit this model: tensor {t!r} has {fresh_axes[t][1]} "
                               f"channels on axis {fresh_axes[t][0]}, the plan says {size} on axis {axis}")
    kept = {t: set(v) for t, v in plan.kept_channels(only_changed=True).items()}
    for g in fresh.groups:
        for u in range(g.size):
            states = {(c in kept[m.tensor]) if m.tensor in kept else True for m in g.members for c in m.channels[u]}
            if len(states) > 1:
                raise OnnxoptError(f"the pruning plan does not fit this model: it removes only part of a unit of "
                                   f"group {g.id} (tensors {', '.join(m.tensor for m in g.members[:3])})")
            if g.frozen and False in states:
                raise OnnxoptError(f"the pruning plan removes channels the analysis freezes: {'; '.join(g.reasons)}")


def apply_plan(model: Model, plan: PruningPlan, *, verify: bool = True) -> Model:
    """A copy of ``model`` with the channels ``plan`` does not keep removed physically."""
    pruned = model.copy()
    if verify:
        verify_plan(pruned, plan)
    if plan.is_identity():
        return pruned
    infer_shapes(pruned)
    ctx = PruneContext(pruned, plan)
    for node in list(pruned.graph.nodes):
        pruner = PRUNERS.get(node.op)
        if pruner is not None:
            pruner(ctx, node)
    refresh_shapes(pruned)
    return pruned


def refresh_shapes(model: Model) -> None:
    """Forget every inner shape (they are stale after pruning) and infer them again."""
    io = {id(t) for t in list(model.graph.inputs) + list(model.graph.outputs)}
    for t in model.graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    model.graph.cleanup(remove_unused_graph_inputs=False)
    infer_shapes(model)


# -- soft pruning: zero instead of remove --------------------------------------------------
def zero_pruned_channels(model: Model, plan: PruningPlan) -> Model:
    """A copy of ``model`` whose removed channels are exactly zero at their source (shapes unchanged).

    Zeroed: the producing weights and bias (Conv/ConvTranspose/Gemm/MatMul),
    the scale and bias of BatchNormalization/InstanceNormalization (so the
    channel is 0 after the norm whatever its input), and per-channel constants
    that Add/Sub add. A removed channel then stays zero through every op that
    maps 0 to 0 (ReLU, Clip, HardSwish, pooling, Concat, Add of zeros, Mul by
    anything); after Sigmoid/HardSigmoid it is 0.5, which is removable exactly
    only where it multiplies a zero channel (squeeze-excitation gates).
    """
    zeroed = model.copy()
    infer_shapes(zeroed)
    ctx = PruneContext(zeroed, plan)

    def zero(node: gs.Node, index: int, channels: np.ndarray, axis: int) -> None:
        arr = np.array(param_value(node.inputs[index]), copy=True)
        idx = [slice(None)] * arr.ndim
        idx[axis] = channels
        arr[tuple(idx)] = 0
        ctx.set_input(node, index, arr)

    for node in list(zeroed.graph.nodes):
        if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.outputs:
            y = node.outputs[0]
            gone = ctx.removed(y)
            if gone is None or not len(gone):
                continue
            if node.op == "MatMul" and ctx.axes[y.name][0] != rank(y) - 1:
                continue  # channels passing through a batch axis: B holds no per-channel rows
            w = param_value(node.inputs[1])
            if node.op == "Conv":
                zero(node, 1, gone, 0)
            elif node.op == "ConvTranspose":  # (Cin, Cout/group, k...): output o is column o % (Cout/group)
                groups = int(node.attrs.get("group", 1))
                cin_g, cout_g = w.shape[0] // groups, w.shape[1]
                arr = np.array(w, copy=True)
                for o in gone:
                    g = o // cout_g
                    arr[g * cin_g:(g + 1) * cin_g, o % cout_g] = 0
                ctx.set_input(node, 1, arr)
            elif node.op == "Gemm":
                zero(node, 1, gone, 0 if int(node.attrs.get("transB", 0)) else 1)
            else:
                zero(node, 1, gone, 1)
            if len(node.inputs) > 2 and node.inputs[2].name:
                c = param_value(node.inputs[2])
                if np.ndim(c) >= 1 and np.shape(c)[-1] == ctx.axes[node.outputs[0].name][1]:
                    zero(node, 2, gone, np.ndim(c) - 1)
        elif node.op in ("BatchNormalization", "InstanceNormalization"):
            gone = ctx.removed(node.inputs[0])
            if gone is not None and len(gone):
                zero(node, 1, gone, 0)
                zero(node, 2, gone, 0)
        elif node.op in ("Add", "Sub"):
            gone = ctx.removed(node.outputs[0])
            if gone is not None and len(gone):
                for i, at in list(_per_channel_operands(ctx, node)):
                    zero(node, i, gone, at)
    return zeroed


# -- one call for the CLI and the pass ---------------------------------------------------------
@dataclass
class StructuredResult:
    model: Model
    plan: PruningPlan
    ratio: float
    macs_before: int | None = None
    macs_after: int | None = None


def prune_structured(model: Model, *, ratio: float | None = None, target_macs: float | None = None,
                     importance: str = "l1", global_ranking: bool = False, min_keep: float = 0.1,
                     round_to: int = 1, ignore=(), dataset=None, seed: int = 0,
                     plan: PruningPlan | None = None) -> StructuredResult:
    """Analyse, score, select and apply; or apply a given ``plan`` (no data needed)."""
    if plan is not None:
        return StructuredResult(apply_plan(model, plan), plan, float(plan.settings.get("ratio", 0.0) or 0.0))
    if (ratio is None) == (target_macs is None):
        raise OnnxoptError("give either a pruning ratio or a MACs target")
    if ratio is not None:
        check_ratio(ratio)
    if round_to < 1:
        raise OnnxoptError(f"round_to must be >= 1, got {round_to}")
    if not (0.0 <= min_keep <= 1.0):
        raise OnnxoptError(f"min_keep must be in [0, 1], got {min_keep}")
    work = model.copy()
    new_plan = analyze(work, list(ignore))
    if not new_plan.prunable():
        reasons = list(dict.fromkeys(r for g in new_plan.groups for r in g.reasons))
        why = f" (e.g. {reasons[0]})" if reasons else ""
        raise OnnxoptError(f"nothing prunable: all {len(new_plan.groups)} channel groups are frozen or "
                           f"have a single unit{why}")
    criterion = make_importance(importance, dataset=dataset, seed=seed)
    scores = criterion.scores(work, new_plan)
    new_plan.notes.extend(criterion.notes)
    new_plan.settings.update({"importance": importance, "global": global_ranking, "min_keep": min_keep,
                              "round_to": round_to, "seed": seed})
    result = StructuredResult(work, new_plan, 0.0)
    if target_macs is not None:
        result.ratio, result.macs_before, result.macs_after = select_for_macs(
            work, new_plan, scores, target_macs, global_ranking=global_ranking, min_keep=min_keep,
            round_to=round_to)
        new_plan.settings["target_macs"] = target_macs
    else:
        select(new_plan, scores, ratio, global_ranking=global_ranking, min_keep=min_keep, round_to=round_to)
        result.ratio = ratio
    new_plan.settings["ratio"] = result.ratio
    result.model = apply_plan(work, new_plan, verify=False)
    return result


@register
class PruneStructured(Pass):
    """Recipe step: structured pruning by a saved plan, a ratio or a MACs target."""

    name = "prune_structured"
    summary = "remove whole channels (by a plan file, a ratio or a MACs target) and shrink every weight"

    def __init__(self, plan: str | None = None, ratio: float | None = None, target_macs: float | None = None,
                 importance: str = "l1", global_ranking: bool = False, min_keep: float = 0.1, round_to: int = 1,
                 ignore: list[str] | None = None, calib: str | None = None, seed: int = 0,
                 save_plan: str | None = None):
        if plan is None and ratio is None and target_macs is None:
            raise ValueError("give plan, ratio or target_macs")
        if ratio is not None:
            check_ratio(ratio)
        self.plan = plan
        self.ratio = ratio
        self.target_macs = target_macs
        self.importance = importance
        self.global_ranking = global_ranking
        self.min_keep = min_keep
        self.round_to = round_to
        self.ignore = list(ignore or [])
        self.calib = calib
        self.seed = seed
        self.save_plan = save_plan

    def run(self, model: Model) -> PassResult:
        dataset = None
        if self.calib is not None:
            from onnxopt.data import input_specs, open_dataset

            dataset = open_dataset(self.calib, input_specs(model))
        loaded = PruningPlan.load(self.plan) if self.plan else None
        res = prune_structured(model, ratio=self.ratio, target_macs=self.target_macs, importance=self.importance,
                               global_ranking=self.global_ranking, min_keep=self.min_keep, round_to=self.round_to,
                               ignore=self.ignore, dataset=dataset, seed=self.seed, plan=loaded)
        return finish_prune(res, self.save_plan)


def finish_prune(res, save_plan: str | None) -> PassResult:
    """What every pruning pass does after :func:`prune_structured`: save the plan, keep its notes, count."""
    if save_plan:
        res.plan.save(save_plan)
    res.model.notes.extend(n for n in res.plan.notes if n not in res.model.notes)
    removed = res.plan.removed_units()
    return PassResult(res.model, removed > 0,
                      {"groups_pruned": sum(1 for g in res.plan.groups if g.removed_units()),
                       "units_removed": removed})


__all__ = [
    "PRUNERS",
    "PruneStructured",
    "apply_plan",
    "finish_prune",
    "prune_structured",
    "rounded_keep",
    "select",
    "select_for_macs",
    "verify_plan",
    "zero_pruned_channels",
]
