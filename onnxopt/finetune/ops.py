"""ONNX operators as differentiable torch functions: a data table, not a chain of ifs.

:data:`OPS` maps an ONNX ``op_type`` to an :class:`OpSpec`: a small function
``fn(inputs, attrs, ctx) -> tensor | list of tensors`` plus the input slots
that carry trainable weights. ``inputs`` holds torch tensors in ONNX order
(``None`` for an omitted optional input), ``attrs`` the node's attributes as
onnx-graphsurgeon gives them, and ``ctx`` a :class:`NodeContext` (node name,
opset, number of outputs, the executor's mode).

Integer "shape" tensors (Shape, Gather on shapes, Concat of dims) are plain
int64 torch tensors; functions that need their values read them with
:func:`ints`. Semantics follow the ONNX specification and are checked against
onnxruntime in ``tests/test_finetune_ops.py``.

QuantizeLinear produces float tensors holding integer values, so the
straight-through estimator (:func:`round_ste`) lets gradients pass through
the rounding; DequantizeLinear accepts both those and real integer tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F

from onnxopt.errors import UnsupportedError


@dataclass
class ExecMode:
    """Per-executor switches that ops read (one object shared by all nodes of one executor)."""

    bn_reestimate: bool = False  # BatchNormalization normalizes with batch statistics and updates its running ones


@dataclass
class NodeContext:
    """What an op function may need besides its inputs and attributes."""

    name: str
    op: str
    opset: int
    n_outputs: int
    mode: ExecMode
    state: dict = field(default_factory=dict)  # per-node scratch (BatchNorm re-estimation counts)


OpFn = Callable[[list, dict, NodeContext], Any]


@dataclass(frozen=True)
class OpSpec:
    fn: OpFn
    weights: frozenset = frozenset()  # input slots that take trainable weights (Conv W and B, Gemm B and C...)
    per_channel_weights: frozenset = frozenset()  # slots trainable only when the constant has more than one element
    pass_through: bool = False  # a weight may reach a weight slot through this op's input 0 (Identity, DQ...)


# -- helpers ------------------------------------------------------------------------------------------------


def ints(t) -> list[int]:
    """Python ints from an int tensor, a list, or None."""
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    if isinstance(t, np.ndarray):
        return [int(v) for v in t.reshape(-1)]
    return [int(v) for v in t]


def _s(value, default: str = "") -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(inputs: list, i: int):
    return inputs[i] if len(inputs) > i else None


def _axes_input_or_attr(inputs, attrs, slot: int) -> list[int] | None:
    """Reduction/squeeze axes: an input from some opset on, an attribute before."""
    t = _opt(inputs, slot)
    if t is not None:
        return ints(t)
    if "axes" in attrs:
        return ints(attrs["axes"])
    return None


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def torch_dtype(onnx_type: int) -> torch.dtype:
    """torch dtype for an ONNX TensorProto element type."""
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(int(onnx_type))
    try:
        return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
    except TypeError:
        raise UnsupportedError(f"tensor type {onnx.TensorProto.DataType.Name(int(onnx_type))} has no torch equivalent") from None


def as_tensor(values) -> torch.Tensor:
    """A torch tensor (own memory) from a numpy array or a gs.Constant; floats become float32 (see :func:`cast`)."""
    if isinstance(values, gs.Constant):
        values = values.values
    arr = np.array(values, copy=True)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr)


def _spatial_pads(attrs, in_shape, kernel, strides, dilations) -> list[int]:
    """[begin..., end...] pads over the spatial dims, auto_pad resolved for this input shape."""
    nd = len(kernel)
    auto_pad = _s(attrs.get("auto_pad"), "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = ints(attrs.get("pads")) or [0] * (2 * nd)
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedError(f"auto_pad {auto_pad!r} is not an ONNX value")
    begins, ends = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad_list(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] (leading dims first) -> F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _pad_or_symmetric(x, pads: list[int], value: float = 0.0):
    """(x, padding for the torch op): symmetric pads go to the op, others are applied with F.pad."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    return F.pad(x, _torch_pad_list(pads), value=value), [0] * n


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _window_attrs(attrs, x, kernel_default):
    nd = x.dim() - 2
    kernel = ints(attrs.get("kernel_shape")) or list(kernel_default)
    strides = ints(attrs.get("strides")) or [1] * nd
    dilations = ints(attrs.get("dilations")) or [1] * nd
    return nd, kernel, strides, dilations


# -- neural-network ops -------------------------------------------------------------------------------------


def conv(inputs, attrs, ctx):
    x, w, b = inputs[0], inputs[1], _opt(inputs, 2)
    nd, kernel, strides, dilations = _window_attrs(attrs, x, w.shape[2:])
    if nd not in _CONV:
        raise UnsupportedError(f"{ctx.op} node {ctx.name!r}: {nd}-D convolution is not supported")
    pads = _spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    x, padding = _pad_or_symmetric(x, pads)
    return _CONV[nd](x, w, b, strides, padding, dilations, int(attrs.get("group", 1)))


def conv_transpose(inputs, attrs, ctx):
    x, w, b = inputs[0], inputs[1], _opt(inputs, 2)
    nd, kernel, strides, dilations = _window_attrs(attrs, x, w.shape[2:])
    if nd not in _CONV_T:
        raise UnsupportedError(f"{ctx.op} node {ctx.name!r}: {nd}-D transposed convolution is not supported")
    out_pad = ints(attrs.get("output_padding")) or [0] * nd
    full = [(int(i) - 1) * s + (k - 1) * d + 1 for i, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
    output_shape = ints(attrs.get("output_shape"))
    auto_pad = _s(attrs.get("auto_pad"), "NOTSET")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = output_shape[-nd:] if output_shape else [int(i) * s for i, s in zip(x.shape[2:], strides)]
        totals = [f + op - t for f, op, t in zip(full, out_pad, target)]
        # as onnxruntime: the odd element of padding goes at the end for SAME_UPPER, at the start otherwise
        if auto_pad == "SAME_UPPER":
            begins = [t // 2 for t in totals]
        else:
            begins = [t - t // 2 for t in totals]
        ends = [t - bg for t, bg in zip(totals, begins)]
    elif auto_pad == "VALID":
        begins = ends = [0] * nd
    else:
        pads = ints(attrs.get("pads")) or [0] * (2 * nd)
        begins, ends = pads[:nd], pads[nd:]
    y = _CONV_T[nd](x, w, b, strides, 0, out_pad, int(attrs.get("group", 1)), dilations)
    index = [slice(None), slice(None)]
    for f, op, bg, en in zip(full, out_pad, begins, ends):
        index.append(slice(bg, f + op - en))
    return y[tuple(index)]


def gemm(inputs, attrs, ctx):
    a, b, c = inputs[0], inputs[1], _opt(inputs, 2)
    if int(attrs.get("transA", 0)):
        a = a.transpose(0, 1)
    if int(attrs.get("transB", 0)):
        b = b.transpose(0, 1)
    y = a @ b
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def batch_norm(inputs, attrs, ctx):
    x, scale, bias, mean, var = inputs[:5]
    eps = float(attrs.get("epsilon", 1e-5))
    if ctx.mode.bn_reestimate and not ctx.state.get("frozen"):
        # cumulative average over the batches seen so far (as torch's BatchNorm with momentum=None)
        count = ctx.state.get("count", 0)
        y = F.batch_norm(x, mean, var, scale, bias, training=True, momentum=1.0 / (count + 1), eps=eps)
        ctx.state["count"] = count + 1
    else:
        y = F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)
    if ctx.n_outputs > 1:
        return [y, mean, var][: ctx.n_outputs]
    return y


def _pool_padded(x, pads, extra_end, value):
    """x padded with ONNX pads plus ``extra_end`` more at each spatial end (ceil_mode overhang)."""
    nd = len(pads) // 2
    full = pads[:nd] + [e + x_ for e, x_ in zip(pads[nd:], extra_end)]
    return F.pad(x, _torch_pad_list(full), value=value)


def _pool_out_extra(sizes, kernel, strides, dilations, pads, ceil_mode):
    """Extra end padding so a plain (floor) window sweep yields the ceil_mode output size."""
    nd = len(kernel)
    extra = []
    for i in range(nd):
        span = int(sizes[i]) + pads[i] + pads[i + nd]
        eff = (kernel[i] - 1) * dilations[i] + 1
        if ceil_mode:
            out = -(-(span - eff) // strides[i]) + 1
            if (out - 1) * strides[i] >= int(sizes[i]) + pads[i]:
                out -= 1  # the last window may not start in the end padding
        else:
            out = (span - eff) // strides[i] + 1
        extra.append(max(0, (out - 1) * strides[i] + eff - span))
    return extra


def average_pool(inputs, attrs, ctx):
    x = inputs[0]
    nd, kernel, strides, dilations = _window_attrs(attrs, x, ())
    if any(d != 1 for d in dilations):
        raise UnsupportedError(f"AveragePool node {ctx.name!r}: dilations are not supported")
    pads = _spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    ceil_mode = int(attrs.get("ceil_mode", 0))
    include_pad = bool(int(attrs.get("count_include_pad", 0)))
    n = len(kernel)
    if nd in _AVG_POOL and pads[:n] == pads[n:] and all(2 * p <= k for p, k in zip(pads[:n], kernel)) and not ceil_mode:
        # the plain case: torch's kernel sums and divides as onnxruntime does (same rounding, so QDQ graphs agree)
        return _AVG_POOL[nd](x, kernel, strides, pads[:n], False, include_pad)
    extra = _pool_out_extra(x.shape[2:], kernel, strides, dilations, pads, ceil_mode)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    weight = torch.ones((x.shape[1], 1) + tuple(kernel), dtype=x.dtype, device=x.device)
    conv_fn = _CONV[nd]
    sums = conv_fn(_pool_padded(x, pads, extra, 0.0), weight, None, strides, 0, 1, x.shape[1])
    if include_pad:
        region = F.pad(ones, _torch_pad_list(pads), value=1.0)  # the padded extent counts, the overhang does not
        region = F.pad(region, _torch_pad_list([0] * nd + extra), value=0.0)
    else:
        region = _pool_padded(ones, pads, extra, 0.0)
    counts = conv_fn(region, weight[:1], None, strides, 0, 1, 1)
    return sums / counts.clamp_min(1.0)


def max_pool(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.n_outputs > 1:
        raise UnsupportedError(f"MaxPool node {ctx.name!r}: the Indices output is not supported")
    nd, kernel, strides, dilations = _window_attrs(attrs, x, ())
    pads = _spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    extra = _pool_out_extra(x.shape[2:], kernel, strides, dilations, pads, int(attrs.get("ceil_mode", 0)))
    xp = _pool_padded(x, pads, extra, float("-inf"))
    return _MAX_POOL[nd](xp, kernel, strides, 0, dilations)


def global_average_pool(inputs, attrs, ctx):
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(inputs, attrs, ctx):
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# (mode, coordinate_transformation_mode, nearest_mode or "") -> (torch interpolate mode, align_corners)
RESIZE_MODES: dict[tuple[str, str, str], tuple[str, bool | None]] = {
    ("nearest", "asymmetric", "floor"): ("nearest", None),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("nearest-exact", None),
    ("nearest", "tf_half_pixel_for_nn", "floor"): ("nearest-exact", None),
    ("linear", "half_pixel", ""): ("linear", False),
    ("linear", "pytorch_half_pixel", ""): ("linear", False),
    ("linear", "align_corners", ""): ("linear", True),
    ("cubic", "half_pixel", ""): ("cubic", False),
    ("cubic", "pytorch_half_pixel", ""): ("cubic", False),
    ("cubic", "align_corners", ""): ("cubic", True),
}
_LINEAR_BY_RANK = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        scales_t, sizes_t = _opt(inputs, 1), None
    else:
        scales_t, sizes_t = _opt(inputs, 2), _opt(inputs, 3)
    mode = _s(attrs.get("mode"), "nearest")
    ctm = _s(attrs.get("coordinate_transformation_mode"), "half_pixel" if ctx.opset >= 11 else "asymmetric")
    nearest = _s(attrs.get("nearest_mode"), "round_prefer_floor") if mode == "nearest" else ""
    if ctx.opset < 11 and mode == "nearest":
        nearest = "floor"
    key = (mode, ctm, nearest)
    if key not in RESIZE_MODES:
        raise UnsupportedError(f"Resize node {ctx.name!r}: mode={mode} coordinate_transformation_mode={ctm}"
                               f"{' nearest_mode=' + nearest if nearest else ''} is not supported "
                               f"(supported: {', '.join('/'.join(k for k in m if k) for m in RESIZE_MODES)})")
    tmode, align = RESIZE_MODES[key]
    nd = x.dim() - 2
    if tmode == "linear":
        tmode = _LINEAR_BY_RANK[nd]
    elif tmode == "cubic":
        if nd != 2:
            raise UnsupportedError(f"Resize node {ctx.name!r}: cubic mode needs a 4-D input")
        tmode = "bicubic"
    if sizes_t is not None and sizes_t.numel():
        sizes = ints(sizes_t)
        if sizes[:2] != list(x.shape[:2]):
            raise UnsupportedError(f"Resize node {ctx.name!r}: resizing the batch or channel axis is not supported")
        if ctm == "pytorch_half_pixel" and any(s == 1 for s in sizes[2:]):
            raise UnsupportedError(f"Resize node {ctx.name!r}: pytorch_half_pixel to size 1 is not supported")
        return F.interpolate(x, size=sizes[2:], mode=tmode, align_corners=align)
    scales = [float(v) for v in scales_t.reshape(-1).tolist()]
    if scales[:2] != [1.0, 1.0]:
        raise UnsupportedError(f"Resize node {ctx.name!r}: scaling the batch or channel axis is not supported")
    return F.interpolate(x, scale_factor=scales[2:], mode=tmode, align_corners=align, recompute_scale_factor=False)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def pad(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        pads, value, axes = ints(attrs.get("pads")), float(attrs.get("value", 0.0)), None
    else:
        pads = ints(inputs[1])
        value_t = _opt(inputs, 2)
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
        axes = ints(_opt(inputs, 3)) or None
    rank = x.dim()
    if axes is not None:
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            a = _norm_axis(a, rank)
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = full
    mode = _s(attrs.get("mode"), "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedError(f"Pad node {ctx.name!r}: mode {mode!r} is not supported")
    flat = _torch_pad_list(pads)
    if mode != "constant":
        while len(flat) > 2 and flat[-1] == 0 and flat[-2] == 0:
            flat = flat[:-2]  # torch pads only trailing dims in these modes
        return F.pad(x, flat, mode=_PAD_MODES[mode])
    return F.pad(x, flat, mode="constant", value=value)


def _softmax_like(fn):
    def op(inputs, attrs, ctx):
        x = inputs[0]
        if ctx.opset < 13:
            axis = _norm_axis(int(attrs.get("axis", 1)), x.dim())
            flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
            return fn(flat, dim=1).reshape(x.shape)
        return fn(x, dim=int(attrs.get("axis", -1)))
    return op


def _reduce(fn, axes_input_from: int):
    """ReduceX: axes from an attribute before opset ``axes_input_from``, from input 1 after."""

    def op(inputs, attrs, ctx):
        x = inputs[0]
        axes = _axes_input_or_attr(inputs, attrs, 1) if ctx.opset >= axes_input_from else (
            ints(attrs["axes"]) if "axes" in attrs else None)
        keep = bool(int(attrs.get("keepdims", 1)))
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return x
            axes = list(range(x.dim()))
        return fn(x, tuple(_norm_axis(a, x.dim()) for a in axes), keep)
    return op


# -- tensor plumbing ------------------------------------------------------------------------------------------


def concat(inputs, attrs, ctx):
    parts = [t for t in inputs if t is not None]
    if len({t.dtype for t in parts}) > 1:
        dtype = torch.result_type(*parts) if len(parts) == 2 else parts[0].dtype
        parts = [t.to(dtype) for t in parts]
    return torch.cat(parts, dim=int(attrs["axis"]))


def split(inputs, attrs, ctx):
    x = inputs[0]
    axis = _norm_axis(int(attrs.get("axis", 0)), x.dim())
    sizes = ints(_opt(inputs, 1)) if _opt(inputs, 1) is not None else ints(attrs.get("split"))
    if not sizes:
        dim = int(x.shape[axis])
        n = int(attrs.get("num_outputs", ctx.n_outputs))
        if "num_outputs" in attrs:
            chunk = -(-dim // n)
            sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
        else:
            sizes = [dim // n] * n
    return list(torch.split(x, sizes, dim=axis))


def split_to_sequence(inputs, attrs, ctx):
    x = inputs[0]
    axis = _norm_axis(int(attrs.get("axis", 0)), x.dim())
    s = _opt(inputs, 1)
    if s is None:
        parts = list(torch.split(x, 1, dim=axis))
        return [parts if int(attrs.get("keepdims", 1)) else [p.squeeze(axis) for p in parts]]
    sizes = ints(s)
    if s.dim() == 0:
        return [list(torch.split(x, sizes[0], dim=axis))]
    return [list(torch.split(x, sizes, dim=axis))]


def sequence_at(inputs, attrs, ctx):
    return inputs[0][ints(inputs[1])[0]]


def _slice_indices(start: int, end: int, step: int, dim: int) -> range:
    """ONNX Slice clamping for one axis."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return range(start, end, step)


def slice_(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = ints(attrs["starts"]), ints(attrs["ends"]), ints(attrs.get("axes")), []
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes, steps = ints(_opt(inputs, 3)), ints(_opt(inputs, 4))
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _norm_axis(axis, x.dim())
        r = _slice_indices(start, end, step, int(x.shape[axis]))
        if step == 1:
            x = x.narrow(axis, r.start, max(0, r.stop - r.start))
        else:
            x = x.index_select(axis, torch.tensor(list(r), dtype=torch.long, device=x.device))
    return x


def reshape(inputs, attrs, ctx):
    x = inputs[0]
    shape = ints(inputs[1]) if ctx.opset >= 5 else ints(attrs["shape"])
    if not int(attrs.get("allowzero", 0)):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def flatten(inputs, attrs, ctx):
    x = inputs[0]
    axis = _norm_axis(int(attrs.get("axis", 1)), x.dim())
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    rest = int(np.prod(x.shape[axis:], dtype=np.int64))
    return x.reshape(lead, rest)


def transpose(inputs, attrs, ctx):
    x = inputs[0]
    perm = ints(attrs.get("perm")) or list(reversed(range(x.dim())))
    return x.permute(perm)


def squeeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _axes_input_or_attr(inputs, attrs, 1)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_norm_axis(a, x.dim()) for a in axes)) if axes else x


def unsqueeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _axes_input_or_attr(inputs, attrs, 1) or []
    rank = x.dim() + len(axes)
    for a in sorted(_norm_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


def shape(inputs, attrs, ctx):
    dims = list(inputs[0].shape)
    start = attrs.get("start", 0)
    end = attrs.get("end")
    return torch.tensor(dims[int(start): None if end is None else int(end)], dtype=torch.int64)


def gather(inputs, attrs, ctx):
    x, idx = inputs[0], inputs[1].long()
    axis = _norm_axis(int(attrs.get("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1).to(x.device))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def constant(inputs, attrs, ctx):
    if "value" in attrs:
        return as_tensor(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return torch.from_numpy(np.array(attrs[key], dtype=dtype))
    raise UnsupportedError(f"Constant node {ctx.name!r}: attribute {', '.join(attrs) or '(none)'} is not supported")


def constant_of_shape(inputs, attrs, ctx):
    value = attrs.get("value")
    fill = as_tensor(value).reshape(-1) if value is not None else torch.zeros(1, dtype=torch.float32)
    return torch.full(tuple(ints(inputs[0])), fill[0].item(), dtype=fill.dtype)


def cast(inputs, attrs, ctx):
    """Cast; the executor computes every float in float32, so a cast to float16/float64 yields float32."""
    dtype = torch_dtype(attrs["to"])
    return inputs[0].to(torch.float32 if dtype.is_floating_point else dtype)


def cast_like(inputs, attrs, ctx):
    return inputs[0].to(inputs[1].dtype)


def identity(inputs, attrs, ctx):
    return inputs[0]


def dropout(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.n_outputs > 1:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return x


def expand(inputs, attrs, ctx):
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(inputs[1]))))


def div(inputs, attrs, ctx):
    a, b = inputs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _variadic(fn):
    def op(inputs, attrs, ctx):
        parts = [t for t in inputs if t is not None]
        out = parts[0]
        for t in parts[1:]:
            out = fn(out, t)
        return out
    return op


def clip(inputs, attrs, ctx):
    x = inputs[0]
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = _opt(inputs, 1), _opt(inputs, 2)
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype) if isinstance(lo, torch.Tensor) else torch.tensor(float(lo), dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype) if isinstance(hi, torch.Tensor) else torch.tensor(float(hi), dtype=x.dtype))
    return x


def hard_sigmoid(inputs, attrs, ctx):
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    return torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)


def leaky_relu(inputs, attrs, ctx):
    return F.leaky_relu(inputs[0], float(attrs.get("alpha", 0.01)))


def prelu(inputs, attrs, ctx):
    x, slope = inputs
    return torch.where(x >= 0, x, x * slope)


def elu(inputs, attrs, ctx):
    return F.elu(inputs[0], float(attrs.get("alpha", 1.0)))


def gelu(inputs, attrs, ctx):
    return F.gelu(inputs[0], approximate=_s(attrs.get("approximate"), "none"))


# -- quantization -------------------------------------------------------------------------------------------


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round half to even forward (as ONNX), identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def along_axis(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A per-tensor (one value) or per-channel (1-D) quantization parameter shaped to broadcast at ``axis``."""
    if t.numel() == 1 and t.dim() <= 1:
        return t.reshape(())
    shape = [1] * rank
    shape[_norm_axis(axis, rank)] = -1
    return t.reshape(shape)


#: integer types QuantizeLinear may produce -> (min, max); uint16 only where torch has it (2.3+)
INT_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767),
              torch.int32: (-2**31, 2**31 - 1),
              **({torch.uint16: (0, 65535)} if hasattr(torch, "uint16") else {})}


def fake_quantize(x, scale, zero_point, axis: int, lo: int, hi: int):
    """QuantizeLinear as float values: clamp(round(x / scale) + zp, lo, hi), gradients straight through the rounding."""
    s = along_axis(scale.to(x.dtype), axis, x.dim())
    zp = along_axis(zero_point.to(x.dtype), axis, x.dim()) if zero_point is not None else 0.0
    return torch.clamp(round_ste(x / s) + zp, lo, hi)


def _check_blocked(attrs, ctx):
    if int(attrs.get("block_size", 0)):
        raise UnsupportedError(f"{ctx.op} node {ctx.name!r}: blocked quantization (block_size) is not supported")


def quantize_linear(inputs, attrs, ctx):
    _check_blocked(attrs, ctx)
    x, scale, zp = inputs[0], inputs[1], _opt(inputs, 2)
    if zp is not None:
        dtype = zp.dtype
    elif "output_dtype" in attrs and int(attrs["output_dtype"]):
        dtype = torch_dtype(attrs["output_dtype"])
    else:
        dtype = torch.uint8
    if dtype not in INT_RANGES:
        raise UnsupportedError(f"QuantizeLinear node {ctx.name!r}: output type {dtype} is not supported")
    lo, hi = INT_RANGES[dtype]
    return fake_quantize(x.float(), scale, zp, int(attrs.get("axis", 1)), lo, hi)


def dequantize_linear(inputs, attrs, ctx):
    _check_blocked(attrs, ctx)
    x, scale, zp = inputs[0], inputs[1], _opt(inputs, 2)
    axis = int(attrs.get("axis", 1))
    xf = x.to(scale.dtype)
    if zp is not None:
        xf = xf - along_axis(zp.to(scale.dtype), axis, x.dim())
    return xf * along_axis(scale, axis, x.dim())


# -- the table ----------------------------------------------------------------------------------------------

_UNARY: dict[str, Callable] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "HardSwish": F.hardswish, "Softplus": F.softplus,
    "Softsign": F.softsign, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos,
}
_BINARY: dict[str, Callable] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or,
}
_REDUCE: dict[str, tuple[Callable, int]] = {
    "ReduceMean": (lambda x, a, k: x.mean(dim=a, keepdim=k), 18),
    "ReduceSum": (lambda x, a, k: x.sum(dim=a, keepdim=k), 13),
    "ReduceMax": (lambda x, a, k: x.amax(dim=a, keepdim=k), 18),
    "ReduceMin": (lambda x, a, k: x.amin(dim=a, keepdim=k), 18),
    "ReduceProd": (lambda x, a, k: _prod(x, a, k), 18),
    "ReduceL2": (lambda x, a, k: torch.sqrt((x * x).sum(dim=a, keepdim=k)), 18),
}


def _prod(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = x.prod(dim=a, keepdim=keep)
    return x


def _unary(fn):
    return lambda inputs, attrs, ctx: fn(inputs[0])


def _binary(fn):
    return lambda inputs, attrs, ctx: fn(inputs[0], inputs[1])


_W01, _W12, _W012 = frozenset({0, 1}), frozenset({1, 2}), frozenset({0, 1, 2})

OPS: dict[str, OpSpec] = {
    "Conv": OpSpec(conv, weights=_W12),
    "ConvTranspose": OpSpec(conv_transpose, weights=_W12),
    "Gemm": OpSpec(gemm, weights=_W012),
    "MatMul": OpSpec(_binary(torch.matmul), weights=_W01),
    "BatchNormalization": OpSpec(batch_norm, weights=_W12),
    "PRelu": OpSpec(prelu, weights=frozenset({1})),
    "Clip": OpSpec(clip),
    "HardSigmoid": OpSpec(hard_sigmoid),
    "LeakyRelu": OpSpec(leaky_relu),
    "Elu": OpSpec(elu),
    "Gelu": OpSpec(gelu),
    "Div": OpSpec(div, per_channel_weights=_W01),
    "Max": OpSpec(_variadic(torch.maximum)),
    "Min": OpSpec(_variadic(torch.minimum)),
    "Sum": OpSpec(_variadic(torch.add)),
    "Where": OpSpec(lambda i, a, c: torch.where(i[0].bool(), i[1], i[2])),
    "Concat": OpSpec(concat),
    "Split": OpSpec(split),
    "SplitToSequence": OpSpec(split_to_sequence),
    "SequenceAt": OpSpec(sequence_at),
    "Slice": OpSpec(slice_),
    "Reshape": OpSpec(reshape, pass_through=True),
    "Flatten": OpSpec(flatten, pass_through=True),
    "Transpose": OpSpec(transpose, pass_through=True),
    "Squeeze": OpSpec(squeeze, pass_through=True),
    "Unsqueeze": OpSpec(unsqueeze, pass_through=True),
    "GlobalAveragePool": OpSpec(global_average_pool),
    "GlobalMaxPool": OpSpec(global_max_pool),
    "AveragePool": OpSpec(average_pool),
    "MaxPool": OpSpec(max_pool),
    "Resize": OpSpec(resize),
    "Pad": OpSpec(pad),
    "Softmax": OpSpec(_softmax_like(torch.softmax)),
    "LogSoftmax": OpSpec(_softmax_like(torch.log_softmax)),
    "Shape": OpSpec(shape),
    "Size": OpSpec(lambda i, a, c: torch.tensor(i[0].numel(), dtype=torch.int64)),
    "Gather": OpSpec(gather),
    "Constant": OpSpec(constant),
    "ConstantOfShape": OpSpec(constant_of_shape),
    "Cast": OpSpec(cast, pass_through=True),
    "CastLike": OpSpec(cast_like, pass_through=True),
    "Identity": OpSpec(identity, pass_through=True),
    "Dropout": OpSpec(dropout),
    "Expand": OpSpec(expand),
    "QuantizeLinear": OpSpec(quantize_linear, pass_through=True),
    "DequantizeLinear": OpSpec(dequantize_linear, pass_through=True),
    **{op: OpSpec(_unary(fn)) for op, fn in _UNARY.items()},
    **{op: OpSpec(_binary(fn), per_channel_weights=_W01 if op in ("Add", "Sub", "Mul") else frozenset())
       for op, fn in _BINARY.items()},
    **{op: OpSpec(_reduce(fn, since)) for op, (fn, since) in _REDUCE.items()},
}


def op_spec(op_type: str, domain: str, node_name: str) -> OpSpec:
    """The table entry for a node, or an UnsupportedError naming the op and the node."""
    if domain not in ("", "ai.onnx", None) or op_type not in OPS:
        qual = f"{domain}::{op_type}" if domain not in ("", "ai.onnx", None) else op_type
        raise UnsupportedError(f"fine-tuning cannot run op {qual} (node {node_name!r}); "
                               f"the torch executor supports: {', '.join(sorted(OPS))}")
    return OPS[op_type]


def quantize_weight_step(inputs, attrs, ctx):
    """Internal step: a float shadow weight fake-quantized onto the integer grid of its int initializer."""
    w, scale, zp = inputs
    return fake_quantize(w, scale, zp, int(attrs["axis"]), int(attrs["lo"]), int(attrs["hi"]))

