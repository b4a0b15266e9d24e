"""Check the fusion, not just the graph: what onnxruntime's CPU provider actually runs.

A QDQ graph is only as fast as the integer kernels onnxruntime fuses it
into. :func:`fusion_report` loads the model in a CPU session with every graph
optimization on and ``optimized_model_filepath`` set, reads back that
optimized graph and counts Conv/Gemm/MatMul that became integer kernels
(QLinearConv, QGemm, QLinearMatMul, MatMulInteger(ToFloat), ConvInteger and
their com.microsoft NHWC forms) against those that stayed float, plus
leftover QuantizeLinear/DequantizeLinear and "islands" (DQ -> float op -> Q:
work done in float between two conversions).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

INTEGER_COMPUTE = frozenset({"QLinearConv", "ConvInteger", "QGemm", "MatMulInteger", "QLinearMatMul",
                             "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConvTranspose"})
FLOAT_COMPUTE = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul",
                           "FusedMatMul"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: ops that carry data between kernels without computing (not islands)
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


@dataclass
class FusionReport:
    integer_compute: dict[str, int]        # integer kernel op -> count in the optimized graph
    float_compute: list[dict]              # {"name", "op"} of Conv/Gemm/MatMul that run in float
    other_integer: dict[str, int]          # QLinearAdd, QLinearConcat, ... -> count
    quantize_linear: int
    dequantize_linear: int
    islands: list[dict]                    # {"name", "op"}: DQ -> float op -> Q
    transposes: int
    optimized_ops: dict[str, int] = field(default_factory=dict)
    planned: tuple[str, ...] = ()          # names of the compute nodes the plan quantized
    slow_paths: list[dict] = field(default_factory=list)  # {"name", "op", "why"}: known slow integer kernels

    @property
    def integer_count(self) -> int:
        return sum(self.integer_compute.values())

    @property
    def expected_integer(self) -> int:
        return len(self.planned)

    @property
    def unfused_nodes(self) -> list[str]:
        """Quantized Conv/Gemm/MatMul that onnxruntime still runs as float kernels."""
        return sorted({original_name(f["name"]) for f in self.float_compute} & set(self.planned))

    @property
    def unfused(self) -> int:
        return len(self.unfused_nodes)

    def to_json(self) -> dict:
        return {"integer_compute": self.integer_compute, "integer_count": self.integer_count,
                "float_compute": self.float_compute, "expected_integer": self.expected_integer,
                "unfused": self.unfused, "unfused_nodes": self.unfused_nodes, "other_integer": self.other_integer,
                "quantize_linear": self.quantize_linear, "dequantize_linear": self.dequantize_linear,
                "islands": self.islands, "transposes": self.transposes, "slow_paths": self.slow_paths,
                "optimized_ops": self.optimized_ops}


def optimized_graph(model, *, threads: int = 1) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs after all its optimizations."""
    from onnxopt.runtime import make_session

    with tempfile.TemporaryDirectory(prefix="onnxopt-fusion-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(model, "cpu", threads=threads, optimization="all", optimized_model_path=path, spin=False)
        return onnx.load_model(str(path), load_external_data=False)


def analyse_optimized(proto: onnx.ModelProto, planned=()) -> FusionReport:
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    initializers = {t.name for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    ops = Counter(n.op_type for n in g.node)
    integer = Counter(n.op_type for n in g.node if n.op_type in INTEGER_COMPUTE)
    other_integer = Counter(n.op_type for n in g.node
                            if n.op_type.startswith("QLinear") and n.op_type not in INTEGER_COMPUTE)
    floats = [{"name": n.name, "op": n.op_type} for n in g.node if n.op_type in FLOAT_COMPUTE]
    def from_dq(name: str) -> bool:
        """Produced by a DequantizeLinear, possibly through layout ops (NHWC Transposes)."""
        node = producer.get(name)
        while node is not None and node.op_type in LAYOUT_OPS and node.input:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    def to_q(name: str, depth: int = 0) -> bool:
        """Read only by QuantizeLinear nodes, possibly through layout ops."""
        readers = consumers.get(name, [])
        if not readers or name in graph_outputs or depth > 4:
            return False
        return all(c.op_type == "QuantizeLinear" or
                   (c.op_type in LAYOUT_OPS and all(to_q(o, depth + 1) for o in c.output if o)) for c in readers)

    islands = []
    for n in g.node:
        if n.op_type in QDQ_OPS or n.op_type in LAYOUT_OPS or n.op_type.startswith("QLinear") \
                or n.op_type in INTEGER_COMPUTE:
            continue
        data_inputs = [i for i in n.input if i and i not in initializers and i in producer]
        outs = [o for o in n.output if o]
        if data_inputs and outs and all(from_dq(i) for i in data_inputs) and all(to_q(o) for o in outs):
            islands.append({"name": n.name, "op": n.op_type})
    # an int8 MaxPool left in NCHW layout (the NHWC transformer turns the ones inside an integer region into
    # NhwcMaxPool) runs a generic loop: measured about 20x slower than float MaxPool on AVX2
    integer_producers = QDQ_OPS - {"DequantizeLinear"} | INTEGER_COMPUTE
    slow = [{"name": n.name, "op": n.op_type, "why": "int8 MaxPool in NCHW layout (onnxruntime's slow path)"}
            for n in g.node if n.op_type == "MaxPool" and n.domain in ("", "ai.onnx") and n.input
            and n.input[0] in producer and (producer[n.input[0]].op_type in integer_producers
                                            or producer[n.input[0]].op_type.startswith("QLinear"))]
    return FusionReport(dict(sorted(integer.items())), floats, dict(sorted(other_integer.items())),
                        ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0), islands,
                        ops.get("Transpose", 0), dict(sorted(ops.items())), tuple(planned), slow)


def original_name(optimized_name: str) -> str:
    """The source node's name for a node onnxruntime renamed while fusing (``fused X`` -> ``X``)."""
    for prefix in ("fused ",):
        if optimized_name.startswith(prefix):
            return optimized_name[len(prefix):]
    return optimized_name


def fusion_report(model, *, planned=(), threads: int = 1) -> FusionReport:
    """Load ``model`` (path, bytes, proto or Model) in onnxruntime CPU and report what got fused.

    ``planned``: names of the Conv/Gemm/MatMul nodes that were quantized, to
    tell which of them onnxruntime left in float.
    """
    return analyse_optimized(optimized_graph(model, threads=threads), planned)
