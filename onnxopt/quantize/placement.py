"""Where QuantizeLinear/DequantizeLinear go: data tables per target, and the planner.

A target's table says, per op type, which inputs are activations to
quantize, which input is the weight and its output-channel axis, which input
is a bias (int32, scale = input scale x weight scale, zero point 0), whether
the output gets a QuantizeLinear, and whether the op is a pass-through whose
output reuses its input's scale and zero point. :func:`plan_quantization`
reads the table and the graph and returns a :class:`QuantPlan`: the analysis
only; :mod:`onnxopt.quantize.qdq` applies it.

The ``cpu`` table lists the ops onnxruntime's CPU provider turns into integer
kernels when it finds them between DequantizeLinear and QuantizeLinear
(QLinearConv, QGemm, QLinearMatMul/MatMulIntegerToFloat, QLinearAdd,
QLinearMul, QLinearConcat, QLinear{Average,GlobalAverage}Pool,
QLinearSigmoid, QLinearLeakyRelu, and int8 MaxPool/Resize/shape ops once
their Q/DQ pair is dropped). Relu and Clip(min 0) right after a Conv, Gemm,
MatMul or Add are absorbed: the QuantizeLinear goes after the activation with
the post-activation range; onnxruntime's QDQ selectors (and
ReluQuantFusion/ClipQuantFusion) see the activation is redundant when the
zero point is the type's minimum (uint8, zero point 0) and fuse op +
activation + Q into one kernel. Symmetric activations (zero point 0 in int8)
cannot do that, so they keep Relu as a float node; and because onnxruntime
on x86 runs int8 activations only after turning single-consumer int8 Q/DQ
pairs into uint8, int8 tensors get one QuantizeLinear per consumer.

Some shapes run slower as integer kernels than as float ones; a table lists
them (``float_faster``) and the planner keeps them float with the reason in
the report: on the CPU, a Conv with fewer than 16 products per output on a
float input (a 1-channel image's 3x3 stem).

The ``tensorrt`` table follows TensorRT's explicit-quantization guidance:
symmetric int8, Q/DQ on the inputs of Conv/ConvTranspose/Gemm/MatMul (and on
both inputs of a residual Add that follows a Conv, so TensorRT can fuse the
add into the convolution), weights per output channel, biases and outputs
left float (TensorRT picks output precisions itself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import OnnxoptError
from onnxopt.ir.model import Model, constant_array
from onnxopt.quantize.config import Activations, QuantizeConfig, Target, Weights


class OutputQ(enum.Enum):
    REQUIRED = "required"  # the integer kernel only exists with a quantized output (QLinearConv, QLinearAdd...)
    OPTIONAL = "optional"  # the kernel can return float (QGemm, MatMulIntegerToFloat): Q only for quantized consumers
    NONE = "none"          # never quantize the output (TensorRT)


# -- weight layouts ------------------------------------------------------------
def conv_weight_axis(node: gs.Node, rank: int) -> int | None:
    return 0  # [Cout, Cin/g, k...]


def conv_transpose_weight_axis(node: gs.Node, rank: int) -> int | None:
    # [Cin, Cout/g, k...]: axis 1 is the output channel only without groups
    return 1 if int(node.attrs.get("group", 1)) == 1 else None


def gemm_weight_axis(node: gs.Node, rank: int) -> int | None:
    return 0 if int(node.attrs.get("transB", 0)) else 1  # B is [N, K] when transposed, else [K, N]


def matmul_weight_axis(node: gs.Node, rank: int) -> int | None:
    return rank - 1 if rank == 2 else None  # [K, N]: per output column


# -- eligibility checks (None = fine, else the reason to stay float) ------------
def _const(node: gs.Node, i: int) -> np.ndarray | None:
    return constant_array(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None


def check_conv(node: gs.Node) -> str | None:
    w = _const(node, 1)
    if w is None:
        return "weight is not a constant"
    if w.ndim not in (3, 4):
        return f"{w.ndim - 2}-D convolution has no integer kernel (1-D and 2-D only)"
    if len(node.inputs) > 2 and node.inputs[2].name and _const(node, 2) is None:
        return "bias is not a constant"
    return None


def check_conv_transpose(node: gs.Node) -> str | None:
    return "weight is not a constant" if _const(node, 1) is None else None


def check_gemm(node: gs.Node) -> str | None:
    if _const(node, 1) is None:
        return "B (weight) is not a constant"
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = _const(node, 2)
        if c is None:
            return "C (bias) is not a constant"
        if float(node.attrs.get("beta", 1.0)) != 1.0:
            return "beta != 1 with a bias"
        b = _const(node, 1)
        n = b.shape[0] if int(node.attrs.get("transB", 0)) else b.shape[1]
        if c.size != n:
            return "bias C is not one value per output column"
    return None


def check_clip_relu6(node: gs.Node) -> str | None:
    lo = _const(node, 1) if len(node.inputs) > 1 else node.attrs.get("min")
    if lo is None or float(np.asarray(lo)) != 0.0:
        return "Clip does not start at 0"
    return None


def check_no_constant_operand(node: gs.Node) -> str | None:
    for t in node.inputs:
        if constant_array(t) is not None:
            return f"operand {t.name!r} is a constant"
    return None


def check_single_output(node: gs.Node) -> str | None:
    if len(node.outputs) > 1 and any(t.outputs for t in node.outputs[1:]):
        return "second output (indices) is used"
    return None


def check_residual_add(node: gs.Node) -> str | None:
    producers = {t.inputs[0].op for t in node.inputs if len(t.inputs) == 1}
    if not producers & {"Conv", "ConvTranspose", "Gemm"}:
        return "not a residual Add after a Conv (TensorRT fuses only those)"
    return check_no_constant_operand(node)


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized on a target.

    ``anchor`` ops are quantized whenever eligible; the others only join a
    quantized region (all their activation inputs already quantized), so they
    never add a QuantizeLinear on a float tensor just for themselves.
    """

    activations: tuple[int, ...] = (0,)
    variadic: bool = False  # every input is an activation (Concat)
    weight: int | None = None
    weight_axis: Callable[[gs.Node, int], int | None] | None = None
    weight_if_constant: bool = False  # MatMul: input 1 is a weight only when it is a constant
    bias: int | None = None
    output: OutputQ = OutputQ.REQUIRED
    passthrough: bool = False
    anchor: bool = False
    absorbs: tuple[str, ...] = ()
    check: Callable[[gs.Node], str | None] | None = None


# -- shapes where the integer kernel is slower than float (kept float, and the report says why) ----------------
#: fewer products than this per output value (Cin/group x kernel) and onnxruntime's CPU integer Conv loses to
#: its float one. Measured on AVX2 (no VNNI), onnxruntime 1.32, per-node profiles at batch 1: mobilenetv2's stem
#: (3x3 over 1 channel = 9 products, 16 channels out at 28x28) takes 54 us as QLinearConv (+16 us for the input's
#: QuantizeLinear and NHWC Transpose) against 23 us as float NCHWc Conv (+30 us for reorder, QuantizeLinear and
#: Transpose after it); whole models with 2 threads, interleaved: mobilenetv2 0.97x at batch 1 and 0.93x at batch
#: 64 with the stem float, resnet (32 channels out) 0.98x and 1.01x, and top-1 up 0.02-0.09 points (the image is
#: no longer rounded to 8 bits). A 1x1 Conv over 16 channels (16 products) runs even; from 36 up integer wins.
MIN_INTEGER_REDUCTION = 16
#: consumers a float stem Conv may feed (through its Relu/Clip): onnxruntime moves the QuantizeLinear and one
#: Transpose to NHWC in front of integer Convs; in front of a MaxPool or Concat it leaves an NCHW int8 island that
#: splits the NHWC region with Transposes (densenet_se: 1.05x FP32 instead of 0.77x at batch 1)
STEM_CONSUMERS = frozenset({"Conv"})


def _reads_float_tensor(node: gs.Node, rules: Mapping[str, OpRule]) -> bool:
    """Its input is float whatever the plan (a graph input, or made by an op with no integer form here)."""
    src = node.inputs[0]
    return not src.inputs or src.inputs[0].op not in rules


def _feeds_only(node: gs.Node, ops: frozenset[str], through: tuple[str, ...]) -> bool:
    """Every consumer of its output is in ``ops``, directly or behind one single-consumer op in ``through``."""
    out = node.outputs[0]
    readers = list(out.outputs)
    if len(readers) == 1 and readers[0].op in through:
        readers = list(readers[0].outputs[0].outputs)
    return bool(readers) and all(r.op in ops for r in readers)


def short_reduction_stem(node: gs.Node, rules: Mapping[str, OpRule]) -> bool:
    """A Conv with few products per output (a 1-channel image's 3x3 stem) on a float input, feeding Convs.

    Keeping it float costs nothing at its input (already float) and moves
    the model's first QuantizeLinear after it; depthwise Convs are not
    included (onnxruntime has a separate integer kernel for them, as fast as
    float here, and a float one between integer Convs adds a
    DequantizeLinear/QuantizeLinear pair and layout Transposes: mobilenetv2
    with its 14x14 depthwise Convs float ran 1.26x FP32 at batch 1, all 8
    float 1.53x, against 0.92x all integer).
    """
    w = _const(node, 1)
    if w is None or w.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
        return False
    return (int(np.prod(w.shape[1:])) < MIN_INTEGER_REDUCTION and _reads_float_tensor(node, rules)
            and _feeds_only(node, STEM_CONSUMERS, _ABSORBS))


@dataclass(frozen=True)
class FloatFaster:
    """A shape of ``op`` whose integer kernel on the target is slower than float: such nodes stay float."""

    op: str
    applies: Callable[[gs.Node, Mapping[str, OpRule]], bool]
    reason: str


@dataclass(frozen=True)
class TargetTable:
    target: Target
    rules: Mapping[str, OpRule]
    #: float consumers of a quantized tensor read a DequantizeLinear too, so the producer's only consumer is
    #: its QuantizeLinear (onnxruntime fuses an op with its Q only then)
    dq_for_float_consumers: bool
    #: op types an anchor may absorb, each with its own check
    absorbable: Mapping[str, Callable[[gs.Node], str | None] | None] = field(default_factory=dict)
    quantize_bias: bool = True
    #: int8 activations need one QuantizeLinear per DequantizeLinear: onnxruntime on x86 turns an int8 Q->DQ
    #: pair into uint8 (QDQS8ToU8Transformer) only when the Q has a single consumer, and its x86 integer Conv
    #: kernels take uint8 activations only
    int8_q_per_consumer: bool = False
    #: shapes measured slower as integer kernels than as float ones on this target (see FloatFaster)
    float_faster: tuple[FloatFaster, ...] = ()


_ABSORBS = ("Relu", "Clip")
_PASS = OpRule(passthrough=True)

CPU_TABLE = TargetTable(
    target=Target.CPU,
    rules={
        "Conv": OpRule(weight=1, weight_axis=conv_weight_axis, bias=2, anchor=True, absorbs=_ABSORBS, check=check_conv),
        "Gemm": OpRule(weight=1, weight_axis=gemm_weight_axis, bias=2, output=OutputQ.OPTIONAL, anchor=True,
                       absorbs=_ABSORBS, check=check_gemm),
        "MatMul": OpRule(activations=(0, 1), weight=1, weight_axis=matmul_weight_axis, weight_if_constant=True,
                         output=OutputQ.OPTIONAL, anchor=True, absorbs=_ABSORBS),
        "Add": OpRule(activations=(0, 1), absorbs=_ABSORBS, check=check_no_constant_operand),
        "Mul": OpRule(activations=(0, 1), check=check_no_constant_operand),
        "Concat": OpRule(variadic=True, check=check_no_constant_operand),
        "AveragePool": OpRule(),
        "GlobalAveragePool": OpRule(),
        "Sigmoid": OpRule(),
        "LeakyRelu": OpRule(),
        "MaxPool": OpRule(passthrough=True, check=check_single_output),
        "Resize": _PASS,
        "Reshape": _PASS,
        "Transpose": _PASS,
        "Flatten": _PASS,
        "Squeeze": _PASS,
        "Unsqueeze": _PASS,
    },
    dq_for_float_consumers=True,
    absorbable={"Relu": None, "Clip": check_clip_relu6},
    int8_q_per_consumer=True,
    float_faster=(
        FloatFaster("Conv", short_reduction_stem,
                    f"integer kernel slower than float here: fewer than {MIN_INTEGER_REDUCTION} products per output "
                    "(Cin x kernel) on a float input; onnxruntime's float Conv is about 2x faster (measured on "
                    "AVX2), and the QuantizeLinear moves after it"),
    ),
)

TENSORRT_TABLE = TargetTable(
    target=Target.TENSORRT,
    rules={
        "Conv": OpRule(weight=1, weight_axis=conv_weight_axis, output=OutputQ.NONE, anchor=True, check=check_conv),
        "ConvTranspose": OpRule(weight=1, weight_axis=conv_transpose_weight_axis, output=OutputQ.NONE, anchor=True,
                                check=check_conv_transpose),
        "Gemm": OpRule(weight=1, weight_axis=gemm_weight_axis, output=OutputQ.NONE, anchor=True, check=check_gemm),
        "MatMul": OpRule(activations=(0, 1), weight=1, weight_axis=matmul_weight_axis, weight_if_constant=True,
                         output=OutputQ.NONE, anchor=True),
        "Add": OpRule(activations=(0, 1), output=OutputQ.NONE, anchor=True, check=check_residual_add),
    },
    dq_for_float_consumers=False,
    quantize_bias=False,
)

TABLES: dict[Target, TargetTable] = {Target.CPU: CPU_TABLE, Target.TENSORRT: TENSORRT_TABLE}

#: ops whose integer form is the point of quantizing (counted by the fusion check)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# -- the plan ------------------------------------------------------------------
@dataclass
class QuantizedNode:
    """One node that runs between DequantizeLinear and QuantizeLinear."""

    name: str
    op: str
    activations: tuple[int, ...]       # input slots that read a DequantizeLinear
    weight: int | None = None          # input slot of the constant weight (stored int8)
    weight_axis: int | None = None     # its per-channel axis; None = per-tensor
    bias: int | None = None            # input slot quantized to int32
    output: str | None = None          # the tensor carrying this node's output QuantizeLinear
    absorbed: str | None = None        # name of the Relu/Clip folded into that QuantizeLinear
    passthrough: bool = False


@dataclass
class FloatNode:
    name: str
    op: str
    reason: str


@dataclass
class QuantPlan:
    target: Target
    nodes: dict[str, QuantizedNode]
    #: quantized tensor -> the tensor whose calibrated range sets its scale (itself, or a pass-through's input)
    tensors: dict[str, str]
    float_nodes: list[FloatNode]
    dq_for_float_consumers: bool
    quantize_bias: bool
    #: one QuantizeLinear per consumer (int8 activations on CPU); see TargetTable.int8_q_per_consumer
    q_per_consumer: bool = False

    def calibration_tensors(self) -> list[str]:
        return sorted(set(self.tensors.values()))

    def compute_nodes(self) -> list[QuantizedNode]:
        return [n for n in self.nodes.values() if n.op in COMPUTE_OPS]

    def is_empty(self) -> bool:
        return not self.compute_nodes()


def name_nodes(model: Model) -> int:
    """Give every nameless (or duplicate-named) node a unique name; plans refer to nodes by name."""
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(model.graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            node.name = name
            renamed += 1
        seen.add(node.name)
    return renamed


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is None or np.dtype(t.dtype) == np.float32


def _activation_slots(node: gs.Node, rule: OpRule) -> tuple[int, ...]:
    """Input slots holding activations: the rule's (all for variadic ops), never constants."""
    candidates = range(len(node.inputs)) if rule.variadic else (i for i in rule.activations if i < len(node.inputs))
    return tuple(i for i in candidates if node.inputs[i].name and constant_array(node.inputs[i]) is None)


def _weight_slot(node: gs.Node, rule: OpRule) -> int | None:
    if rule.weight is None or rule.weight >= len(node.inputs):
        return None
    if rule.weight_if_constant and _const(node, rule.weight) is None:
        return None
    return rule.weight


def _feeds_activation(node: gs.Node) -> bool:
    """True if the node's output goes only into a Relu/Clip.

    onnxruntime's QDQ selectors look through such an activation for the
    output QuantizeLinear and give up on the node when it is missing or the
    activation is not redundant, so a float-output QGemm/MatMulIntegerToFloat
    is impossible there: the node keeps its own output Q.
    """
    out = node.outputs[0]
    return len(out.outputs) == 1 and out.outputs[0].op in ("Relu", "Clip")


def _float_faster(table: TargetTable, node: gs.Node) -> str | None:
    """The reason ``node`` runs faster in float on this target, or None."""
    for entry in table.float_faster:
        if entry.op == node.op and entry.applies(node, table.rules):
            return entry.reason
    return None


def _check_excludes(model: Model, exclude: tuple[str, ...]) -> None:
    names = {n.name for n in model.graph.nodes}
    ops = {n.op for n in model.graph.nodes}
    unknown = [e for e in exclude if e not in names and e not in ops]
    if unknown:
        raise OnnxoptError(f"--exclude {unknown[0]!r} matches no node name or op type in the model")


def plan_quantization(model: Model, config: QuantizeConfig, keep_float: Mapping[str, str] | None = None) -> QuantPlan:
    """Decide which nodes run quantized and which tensors get a QuantizeLinear.

    ``model`` must have unique node names (:func:`name_nodes`) and be
    topologically sorted; nothing in it is changed. ``keep_float`` maps node
    names to the reason they must stay float (e.g. the fusion check found
    onnxruntime cannot fuse them).
    """
    keep_float = dict(keep_float or {})
    config = config.resolved()
    table = TABLES[config.target]
    graph = model.graph
    _check_excludes(model, config.exclude)
    excluded = set(config.exclude)
    graph_outputs = {t.name for t in graph.outputs}
    per_channel = config.weights is Weights.PER_CHANNEL
    absorb = bool(table.absorbable) and config.activations is Activations.ASYMMETRIC

    reasons: dict[str, str] = {}
    eligible: dict[str, tuple[gs.Node, OpRule]] = {}
    for node in graph.nodes:
        rule = table.rules.get(node.op)
        if node.name in excluded or node.op in excluded:
            reasons[node.name] = "excluded (--exclude)"
        elif node.name in keep_float:
            reasons[node.name] = keep_float[node.name]
        elif rule is None:
            reasons[node.name] = f"no integer kernel for {node.op} on target {table.target.value}"
        elif (why := rule.check(node) if rule.check else None) is not None:
            reasons[node.name] = why
        elif any(not _is_float(node.inputs[i]) for i in _activation_slots(node, rule)):
            reasons[node.name] = "an activation input is not float32"
        elif not _activation_slots(node, rule):
            reasons[node.name] = "no activation input"
        elif (why := _float_faster(table, node)) is not None:
            reasons[node.name] = why
        else:
            eligible[node.name] = (node, rule)

    def output_tensor(node: gs.Node, rule: OpRule) -> tuple[gs.Tensor, gs.Node | None]:
        """The tensor that gets this node's Q: after an absorbable Relu/Clip when there is one."""
        out = node.outputs[0]
        if absorb and rule.absorbs and out.name not in graph_outputs and len(out.outputs) == 1:
            act = out.outputs[0]
            check = table.absorbable.get(act.op, False) if act.op in rule.absorbs else False
            if check is not False and act.name not in excluded and act.op not in excluded \
                    and (check is None or check(act) is None) and act.inputs[0] is out:
                return act.outputs[0], act
        return out, None

    quantized: dict[str, QuantizedNode] = {}
    available: set[str] = set()  # tensors that will carry a QuantizeLinear
    for node, rule in eligible.values():
        if rule.anchor:
            available.update(node.inputs[i].name for i in _activation_slots(node, rule))
    for node in graph.nodes:  # topological order
        if node.name not in eligible:
            continue
        _, rule = eligible[node.name]
        slots = _activation_slots(node, rule)
        if not rule.anchor and not all(node.inputs[i].name in available for i in slots):
            reasons[node.name] = "inputs are not quantized (would add a QuantizeLinear just for this op)"
            continue
        wslot = _weight_slot(node, rule)
        axis = None
        if wslot is not None and per_channel and rule.weight_axis is not None:
            axis = rule.weight_axis(node, np.ndim(_const(node, wslot)))
        bias = rule.bias if (table.quantize_bias and rule.bias is not None and rule.bias < len(node.inputs)
                             and node.inputs[rule.bias].name and wslot is not None) else None
        qn = QuantizedNode(node.name, node.op, slots, wslot, axis, bias, passthrough=rule.passthrough)
        if rule.output is not OutputQ.NONE:
            out, act = output_tensor(node, rule)
            if _is_float(out):
                qn.output, qn.absorbed = out.name, (act.name if act is not None else None)
                available.add(out.name)
        quantized[node.name] = qn

    # backward: drop pass-throughs and optional output Qs that no quantized node reads
    consumers = model.consumers()
    nodes_by_name = {n.name: n for n in graph.nodes}
    for node in reversed(graph.nodes):
        qn = quantized.get(node.name)
        if qn is None or qn.output is None:
            continue
        rule = eligible[node.name][1]
        readers = [c for c in consumers.get(qn.output, []) if c.name in quantized
                   and any(c.inputs[i].name == qn.output for i in quantized[c.name].activations)]
        if readers:
            continue
        if rule.passthrough:
            del quantized[node.name]
            reasons[node.name] = "pass-through op whose output feeds no quantized op"
        elif rule.output is OutputQ.OPTIONAL and not _feeds_activation(node):
            qn.output = None
            if qn.absorbed:
                reasons[qn.absorbed] = f"follows {node.op} {node.name!r}, whose output stays float"
                qn.absorbed = None

    tensors: dict[str, str] = {}
    for qn in quantized.values():
        node = nodes_by_name[qn.name]
        for i in qn.activations:
            tensors.setdefault(node.inputs[i].name, node.inputs[i].name)
        if qn.output is not None and not qn.passthrough:
            tensors[qn.output] = qn.output
    for node in graph.nodes:  # topological: a chain of pass-throughs resolves to its first input
        qn = quantized.get(node.name)
        if qn is not None and qn.passthrough and qn.output is not None:
            src = node.inputs[qn.activations[0]].name
            tensors[qn.output] = tensors.get(src, src)

    absorbed = {qn.absorbed for qn in quantized.values() if qn.absorbed}
    if table.absorbable and not absorb:
        for node in graph.nodes:
            if node.op in table.absorbable and node.name not in excluded and node.op not in excluded:
                reasons[node.name] = (f"symmetric activations (zero point 0) cannot absorb {node.op} into the "
                                      "QuantizeLinear, so it runs in float between DQ and Q; use asymmetric on CPU")
    float_nodes = [FloatNode(n.name, n.op, reasons.get(n.name, "not quantized"))
                   for n in graph.nodes if n.name not in quantized and n.name not in absorbed]
    return QuantPlan(table.target, quantized, tensors, float_nodes, table.dq_for_float_consumers, table.quantize_bias,
                     q_per_consumer=table.int8_q_per_consumer and config.activations is Activations.SYMMETRIC)
