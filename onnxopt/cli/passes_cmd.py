"""``onnxopt passes``: the registered passes and pipelines, with their options."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field

from onnxopt.cli.report import Printer, format_table, write_json
from onnxopt.passes import Pass, available_passes


@dataclass
class PassOption:
    name: str
    type: str
    default: object  # None when required


@dataclass
class PassInfo:
    name: str
    kind: str  # "pass" or "pipeline"
    summary: str
    min_opset: int | None
    options: list[PassOption] = field(default_factory=list)


def _type_name(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def describe_pass(name: str, target) -> PassInfo:
    """Name, summary and typed options of a registered pass class or pipeline factory."""
    is_class = isinstance(target, type) and issubclass(target, Pass)
    fn = target.__init__ if is_class else target
    options = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        options.append(PassOption(p.name, _type_name(p.annotation), default))
    if is_class:
        summary = target.summary or (inspect.getdoc(target) or "").split("\n")[0]
        return PassInfo(name, "pass", summary, target.min_opset, options)
    summary = (inspect.getdoc(target) or "").split("\n")[0]
    return PassInfo(name, "pipeline", summary, None, options)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "passes", help="list the available passes and their options",
        description="List the registered passes and pipelines that --passes and recipes can name, "
                    "with a one-line summary and the options each accepts (name, type, default).")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the list as JSON to FILE, or to stdout (instead of the table) with no FILE")
    p.set_defaults(func=run)
    return p


def _format_options(info: PassInfo) -> str:
    if not info.options:
        return "-"
    return ", ".join(f"{o.name}={o.default!r}" + (f" ({o.type})" if o.type else "") for o in info.options)


def run(args) -> int:
    infos = [describe_pass(name, target) for name, target in available_passes().items()]
    if args.json is not None:
        write_json(infos, args.json)
    rows = [(i.name, i.kind, i.summary, _format_options(i)) for i in infos]
    Printer(json_dest=args.json)(format_table(["name", "kind", "summary", "options"], rows))
    return 0
