"""``onnxopt inspect MODEL``: what a model is (inputs, opsets, parameters, MACs)."""

from __future__ import annotations

import argparse

from onnxopt.analysis.summary import ModelSummary, summarize
from onnxopt.cli.args import ModelArgs, input_shape
from onnxopt.cli.report import (
    Printer,
    format_fields,
    format_shape,
    format_table,
    human_bytes,
    human_count,
    to_jsonable,
    write_json,
)
from onnxopt.ir import load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect", help="show a model's inputs, outputs, opsets, parameters and MACs",
        description="Show a model's inputs and outputs (shapes and dtypes; symbolic dims by name), opsets, "
                    "producer, IR version, node count and op histogram, parameters, and MACs per "
                    "Conv/ConvTranspose/Gemm/MatMul node and in total. A dynamic batch is counted as 1, "
                    "so its MACs are per sample.")
    ModelArgs.add(p)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the summary as JSON to FILE, or to stdout (instead of the table) with no FILE")
    p.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME:DxD...",
                   help="resolve an input's dynamic dims for the MAC count, e.g. x:1x3x224x224 (repeatable)")
    p.add_argument("--prunable", action="store_true",
                   help="also list the channel groups structured pruning sees: sizes, and why frozen ones are frozen")
    p.set_defaults(func=run)
    return p


def summary_json(summary: ModelSummary) -> dict:
    """The JSON form: the dataclass fields plus the MAC totals."""
    doc = to_jsonable(summary)
    doc["macs"]["total"] = summary.macs.total
    doc["macs"]["unknown_nodes"] = summary.macs.unknown
    return doc


def format_summary(s: ModelSummary) -> str:
    """The human-readable report: fields, then tables of tensors, ops and MACs."""
    macs = s.macs
    if macs.per_sample:
        macs_note = "per sample (dynamic batch counted as 1)"
    elif macs.batch is not None:
        macs_note = f"for batch {macs.batch}"
    else:
        macs_note = ""
    if macs.unknown:
        macs_note += f"; {macs.unknown} node(s) with unknown shapes not counted"
    producer = " ".join(x for x in (s.producer_name, s.producer_version) if x) or "(not set)"
    fields = [
        ("Model", f"{s.path} ({human_bytes(s.file_bytes)})" if s.path else "(in memory)"),
        ("IR version", s.ir_version),
        ("Producer", producer),
        ("Opsets", ", ".join(f"{d} {v}" for d, v in s.opsets.items())),
        ("Nodes", s.node_count),
        ("Parameters", f"{human_count(s.parameter_count)} ({s.parameter_count:,}; {human_bytes(s.parameter_bytes)})"),
        ("MACs", f"{human_count(macs.total)} ({macs.total:,}) {macs_note}".rstrip()),
    ]
    parts = [format_fields(fields)]
    parts.append("\nInputs\n" + format_table(
        ["name", "dtype", "shape"], [(t.name, t.dtype, format_shape(t.shape)) for t in s.inputs], indent=2))
    parts.append("\nOutputs\n" + format_table(
        ["name", "dtype", "shape"], [(t.name, t.dtype, format_shape(t.shape)) for t in s.outputs], indent=2))
    parts.append("\nOp histogram\n" + format_table(["op", "count"], list(s.op_histogram.items()), indent=2))
    if macs.nodes:
        rows = [(n.node, n.op, format_shape(n.output_shape), f"{n.macs:,}" if n.macs is not None else "?",
                 f"{100 * n.macs / macs.total:.1f}%" if n.macs is not None and macs.total else "")
                for n in macs.nodes]
        rows.append(("total", "", "", f"{macs.total:,}", "100.0%" if macs.total else ""))
        parts.append("\nMACs by node\n" + format_table(["node", "op", "output shape", "MACs", "share"], rows, indent=2))
    if s.notes:
        parts.append("\nNotes\n" + "\n".join(f"  - {n}" for n in s.notes))
    return "\n".join(parts)


def run(args) -> int:
    model = load_model(args.model)
    summary = summarize(model, dict(args.input_shape))
    doc = summary_json(summary)
    text = format_summary(summary)
    if args.prunable:
        from onnxopt.cli.prune_cmd import format_groups
        from onnxopt.prune.dependency import describe_groups

        groups = describe_groups(model)
        doc["channel_groups"] = groups
        text += "\n\n" + format_groups(groups, "Channel groups")
    if args.json is not None:
        write_json(doc, args.json)
    Printer(json_dest=args.json)(text)
    return 0
