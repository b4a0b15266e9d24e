"""``onnxopt prune MODEL -o OUT``: structured or unstructured pruning on the ONNX graph.

Structured (``--ratio R`` or ``--target-macs F``, or ``--load-plan FILE``)
removes whole channels: the channel groups come from the dependency analysis
(``--list-groups`` shows them, frozen ones with the reason), units are scored
by ``--importance`` and the weights shrink physically. Unstructured
(``--sparsity S`` or ``--nm N:M``) zeroes single weights; shapes stay, and the
output says honestly what that does and does not buy.

OUT is written atomically and validated (onnx checker and an onnxruntime CPU
session) before it appears; on any error nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxopt.analysis.summary import model_file_bytes, parameter_stats
from onnxopt.cli.args import DataArgs, OutputArgs, ReportArgs, check_output_path
from onnxopt.runtime.validate import input_files, save_validated
from onnxopt.cli.report import (
    Printer,
    format_table,
    human_bytes,
    human_count,
    write_json,
    write_text,
)
from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import CheckFailed, OnnxoptError
from onnxopt.ir import Model, load_model, save_proto
from onnxopt.prune.dependency import describe_groups
from onnxopt.prune.importance import CRITERIA
from onnxopt.prune.plan import PruningPlan
from onnxopt.prune.structured import check_ratio, model_macs, prune_structured
from onnxopt.prune.unstructured import (
    CPU_SPEED_NOTE,
    check_sparsity,
    magnitude_prune,
    maskable_weights,
    nm_prune,
    parse_nm,
    to_sparse_initializers,
    zip_size,
)
from onnxopt.runtime.session import make_session


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prune", help="structured (remove channels) or unstructured (zero weights) pruning",
        description="Prune a model on its ONNX graph. Structured: --ratio R (fraction of each channel group's "
                    "units to remove; with --global one ranking over all groups) or --target-macs F (bisect the "
                    "ratio until MACs <= F x the original), or --load-plan FILE. Channels that must go together "
                    "form groups (--list-groups shows them; a frozen group says why). Unstructured: --sparsity S "
                    "(magnitude) or --nm N:M (e.g. 2:4); shapes stay, so onnxruntime's CPU kernels do not run "
                    "faster. OUT is written atomically and validated; on an error nothing is written.")
    p.add_argument("model", metavar="MODEL", type=Path, help="the ONNX model to prune (never modified)")
    OutputArgs.add(p, required=False)
    mode = p.add_argument_group("what to prune")
    mode.add_argument("--list-groups", action="store_true",
                      help="list the channel groups (prunable or frozen, with the reason) and exit; no -o needed")
    mode.add_argument("--structured", action="store_true", help="remove whole channels (the default with "
                                                               "--ratio / --target-macs / --load-plan)")
    mode.add_argument("--ratio", type=float, metavar="R", help="structured: fraction of units to remove, in [0, 1)")
    mode.add_argument("--target-macs", type=float, metavar="F",
                      help="structured: prune until MACs <= F x the original (F in (0, 1])")
    mode.add_argument("--unstructured", action="store_true", help="zero single weights (with --sparsity)")
    mode.add_argument("--sparsity", type=float, metavar="S", help="unstructured: fraction of weights to zero, in [0, 1)")
    mode.add_argument("--nm", metavar="N:M", help="unstructured: keep N of every M weights along the input channels "
                                                  "(e.g. 2:4)")
    sel = p.add_argument_group("selection")
    sel.add_argument("--importance", choices=list(CRITERIA), default="l1",
                     help="structured unit scores: l1/l2 (weight norms), bn (|BN gamma|), activation (mean "
                          "|activation| on --calib), apoz (non-zero fraction on --calib), taylor (|w * dL/dw| "
                          "on --calib, needs torch), "
                          "random (seeded control); default l1")
    scope = sel.add_mutually_exclusive_group()
    scope.add_argument("--global", dest="global_ranking", action="store_true",
                       help="one ranking over all groups (structured) or all weights (magnitude)")
    scope.add_argument("--per-layer", dest="global_ranking", action="store_false",
                       help="the same ratio in every group / layer (default)")
    sel.add_argument("--min-keep", type=float, default=0.1, metavar="F",
                     help="with --global: never keep less than this fraction of a group (default 0.1)")
    sel.add_argument("--round-to", type=int, default=8, metavar="N",
                     help="keep channel counts multiples of N, rounding the kept count up (default 8: onnxruntime's "
                          "CPU kernels slow down on odd channel counts, pruned models got slower than the original "
                          "without it); groups under 2N channels are not rounded; 1 turns rounding off")
    sel.add_argument("--ignore", nargs="+", default=[], metavar="NODE",
                     help="nodes (by name, or a tensor they write) whose channels/weights must not change")
    sel.add_argument("--seed", type=int, default=0, help="seed for --importance random (default 0)")
    DataArgs.add(p, "--calib", help="calibration inputs for --importance activation/apoz/taylor: FILE.npz keyed by "
                                    "input name, FILE.npz:SPLIT, FILE.npy or a folder")
    plan = p.add_argument_group("plans")
    io_ = plan.add_mutually_exclusive_group()
    io_.add_argument("--save-plan", type=Path, metavar="FILE", help="also write the pruning plan as JSON")
    io_.add_argument("--load-plan", type=Path, metavar="FILE", help="apply a saved plan (no data needed)")
    p.add_argument("--storage", choices=("auto", "dense", "sparse"), default="auto",
                   help="unstructured: store weights as ONNX sparse_initializer where that is smaller (auto), "
                        "never (dense), or for every masked weight of 1024+ elements (sparse)")
    p.add_argument("--report", type=Path, metavar="FILE", help="also write the text report to FILE")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


# -- reports -------------------------------------------------------------------------------
@dataclass
class Sizes:
    parameters: int
    parameter_bytes: int
    macs: int | None
    file_bytes: int | None
    zip_bytes: int | None = None


@dataclass
class GroupRow:
    id: int
    units: int
    kept: int
    channels_per_unit: int
    status: str  # pruned / kept / frozen / single
    producers: list[str]
    reasons: list[str]


@dataclass
class PruneReport:
    input: str
    output: str | None
    mode: str
    settings: dict
    before: Sizes
    after: Sizes | None = None
    groups: list[GroupRow] = field(default_factory=list)
    sparsity: float | None = None
    sparse_tensors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sizes_of(model: Model, path: Path | None) -> Sizes:
    count, nbytes = parameter_stats(model)
    try:
        macs = model_macs(model)
    except Exception:  # noqa: BLE001  (MACs are informative; a model the counter fails on still prunes)
        macs = None
    fb = model_file_bytes(path) if path is not None and Path(path).is_file() else None
    zb = zip_size(Path(path).read_bytes()) if fb is not None and fb < 2**31 else None
    return Sizes(count, nbytes, macs, fb, zb)


def group_rows(plan: PruningPlan) -> list[GroupRow]:
    rows = []
    for g in plan.groups:
        kept = len(g.kept_units())
        status = "frozen" if g.frozen else ("single" if g.size < 2 else ("pruned" if kept < g.size else "kept"))
        rows.append(GroupRow(g.id, g.size, kept, g.channels_per_unit, status, list(g.producers), list(g.reasons)))
    return rows


def _ratio_text(a, b) -> str:
    return f"{b / a:.1%}" if a and b is not None else ""


def render(r: PruneReport) -> str:
    lines = [f"Prune ({r.mode}): {r.input} -> {r.output}"]
    settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if v not in (None, [], False))
    if settings:
        lines.append(f"  {settings}")
    b, a = r.before, r.after
    rows = [("MACs", human_count(b.macs), human_count(a.macs), _ratio_text(b.macs, a.macs)),
            ("parameters", human_count(b.parameters), human_count(a.parameters), _ratio_text(b.parameters, a.parameters)),
            ("weights", human_bytes(b.parameter_bytes), human_bytes(a.parameter_bytes),
             _ratio_text(b.parameter_bytes, a.parameter_bytes)),
            ("file size", human_bytes(b.file_bytes), human_bytes(a.file_bytes), _ratio_text(b.file_bytes, a.file_bytes)),
            ("zipped", human_bytes(b.zip_bytes), human_bytes(a.zip_bytes), _ratio_text(b.zip_bytes, a.zip_bytes))]
    lines += ["", format_table(["", "before", "after", "after/before"], rows, indent=2)]
    if r.groups:
        counts = {s: sum(1 for g in r.groups if g.status == s) for s in ("pruned", "kept", "frozen", "single")}
        lines += ["", f"Channel groups: {len(r.groups)} ({counts['pruned']} pruned, {counts['kept']} unchanged, "
                      f"{counts['frozen']} frozen, {counts['single']} with one unit)"]
        shown = [g for g in r.groups if g.status == "pruned"]
        if shown:
            lines.append(format_table(
                ["group", "units", "kept", "ch/unit", "producers"],
                [(g.id, g.units, g.kept, g.channels_per_unit, _short(g.producers)) for g in shown], indent=2))
        frozen = [g for g in r.groups if g.status == "frozen"]
        if frozen:
            lines.append("  frozen:")
            lines += [f"    group {g.id} ({g.units} units): {g.reasons[0]}"
                      + (f" (+{len(g.reasons) - 1} more)" if len(g.reasons) > 1 else "") for g in frozen]
    if r.sparsity is not None:
        lines += ["", f"Weight sparsity: {r.sparsity:.1%} over the masked Conv/Gemm/MatMul weights"]
        lines.append(f"  stored sparse: {', '.join(r.sparse_tensors)}" if r.sparse_tensors else
                     "  stored dense (sparse_initializer is used only for masked weights of 1024+ elements, with "
                     "--storage auto only where it is smaller: ~67%+ sparsity for float32)")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def _short(names: list[str], n: int = 2) -> str:
    return ", ".join(names[:n]) + (f" +{len(names) - n}" if len(names) > n else "") if names else "-"


# -- the command -------------------------------------------------------------------------------
def _mode(args) -> str:
    structured = args.ratio is not None or args.target_macs is not None or args.load_plan is not None
    unstructured = args.sparsity is not None or args.nm is not None
    chosen = [x for x in (args.ratio is not None, args.target_macs is not None, args.load_plan is not None,
                          args.sparsity is not None, args.nm is not None) if x]
    if args.list_groups:
        return "list"
    if len(chosen) != 1:
        raise OnnxoptError("choose exactly one of --ratio, --target-macs, --load-plan, --sparsity, --nm "
                           "(or --list-groups)")
    if args.structured and unstructured:
        raise OnnxoptError("--structured goes with --ratio, --target-macs or --load-plan, not --sparsity/--nm")
    if args.unstructured and structured:
        raise OnnxoptError("--unstructured goes with --sparsity or --nm")
    return "structured" if structured else "unstructured"


def _validate_options(args, mode: str) -> None:
    """Check every number before any work (so a bad value never leaves a file behind)."""
    if args.ratio is not None:
        check_ratio(args.ratio)
    if args.target_macs is not None and not (0.0 < args.target_macs <= 1.0):
        raise OnnxoptError(f"--target-macs must be a fraction in (0, 1], got {args.target_macs}")
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
    if args.nm is not None:
        parse_nm(args.nm)
    if args.round_to < 1:
        raise OnnxoptError(f"--round-to must be >= 1, got {args.round_to}")
    if not 0.0 <= args.min_keep <= 1.0:
        raise OnnxoptError(f"--min-keep must be in [0, 1], got {args.min_keep}")
    if mode in ("structured", "unstructured") and args.output is None:
        raise OnnxoptError("give the output file with -o OUT")


def run(args) -> int:
    mode = _mode(args)
    _validate_options(args, mode)
    model = load_model(args.model)
    show = Printer(quiet=args.quiet, json_dest=args.json)
    if mode == "list":
        return _list_groups(args, model, show)
    out = check_output_path(args, args.model)
    protect = [] if args.in_place else input_files(args.model)
    if out.resolve() in {p.resolve() for p in protect}:
        raise OnnxoptError(f"output {out} is one of the input model's files; choose another name")
    plan = PruningPlan.load(args.load_plan) if args.load_plan else None
    dataset = None
    if args.data:
        dataset = open_dataset(args.data, input_specs(model), DataArgs.parse(args).image)
    elif mode == "structured" and plan is None and CRITERIA[args.importance].needs_data:
        raise OnnxoptError(f"--importance {args.importance} needs calibration data: --calib DATA")
    before = sizes_of(model, args.model)
    if mode == "structured":
        report = _structured(args, model, plan, dataset, before, out, protect)
    else:
        report = _unstructured(args, model, before, out, protect)
    text = render(report)
    if args.report:
        write_text(args.report, text + "\n")
    if args.json is not None:
        write_json(report, args.json)
    show(text)
    return 0


def format_groups(rows: list[dict], title: str) -> str:
    """The channel-group table shared by ``prune --list-groups`` and ``inspect --prunable``."""
    table = [(r["id"], r["size"], r["channels_per_unit"],
              "prunable" if r["prunable"] else ("frozen" if r["frozen"] else "single unit"),
              _short(r["producers"]), (r["reasons"][0] if r["reasons"] else "")) for r in rows]
    head = f"{title}: {len(rows)} ({sum(r['prunable'] for r in rows)} prunable)"
    return head + "\n" + format_table(["group", "units", "ch/unit", "status", "producers", "reason"], table, indent=2)


def _list_groups(args, model: Model, show: Printer) -> int:
    rows = describe_groups(model, args.ignore)
    if args.json is not None:
        write_json(rows, args.json)
    text = format_groups(rows, f"Channel groups of {args.model}")
    show(text)
    if args.report:
        write_text(args.report, text + "\n")
    return 0


def _structured(args, model, plan, dataset, before: Sizes, out: Path, protect) -> PruneReport:
    res = prune_structured(model, ratio=args.ratio, target_macs=args.target_macs, importance=args.importance,
                           global_ranking=args.global_ranking, min_keep=args.min_keep, round_to=args.round_to,
                           ignore=args.ignore, dataset=dataset, seed=args.seed, plan=plan)
    save_validated(res.model, out, external_data=args.external_data, protect=protect)
    if args.save_plan:
        res.plan.save(args.save_plan)
    settings = {"importance": None if plan else args.importance, "ratio": round(res.ratio, 4),
                "target_macs": args.target_macs, "global": args.global_ranking, "round_to": args.round_to,
                "ignore": args.ignore, "plan": str(args.load_plan) if args.load_plan else None}
    report = PruneReport(str(args.model), str(out), "structured", settings, before, sizes_of(res.model, out),
                         group_rows(res.plan), notes=list(dict.fromkeys(res.plan.notes)))
    if res.plan.is_identity():
        report.notes.append("no channel was removed (ratio 0, or every group is frozen or at its floor)")
    return report


def _unstructured(args, model: Model, before: Sizes, out: Path, protect) -> PruneReport:
    if args.importance != "l1":
        raise OnnxoptError("--importance applies to structured pruning; unstructured pruning uses magnitudes")
    names = {n.name for n in model.graph.nodes} | {t.name for n in model.graph.nodes for t in n.outputs}
    for name in args.ignore:
        if name not in names:
            raise OnnxoptError(f"--ignore {name}: no node has that name (or writes a tensor of that name)")
    if not maskable_weights(model, args.ignore):
        raise OnnxoptError("nothing prunable: the model has no constant Conv/Gemm/MatMul weights")
    work = model.copy()
    if args.nm is not None:
        rep = nm_prune(work, *parse_nm(args.nm), ignore=args.ignore)
        if not rep.layers:
            raise OnnxoptError(f"nothing prunable with {args.nm}: no weight has a multiple of "
                               f"{parse_nm(args.nm)[1]} input channels")
    else:
        rep = magnitude_prune(work, args.sparsity, global_ranking=args.global_ranking, ignore=args.ignore)
    proto = work.to_onnx()
    _full_check(proto)  # the dense form gets the full check; sparse storage only the plain one (see module doc)
    moved: list[str] = []
    if args.storage != "dense":
        moved = to_sparse_initializers(proto, {layer.tensor for layer in rep.layers},
                                       only_if_smaller=args.storage == "auto")
    _save_proto_validated(proto, out, external_data=args.external_data, protect=protect, full_check=not moved)
    after = sizes_of(work, out)
    settings = {"sparsity": args.sparsity, "nm": args.nm, "global": args.global_ranking, "storage": args.storage,
                "ignore": args.ignore}
    report = PruneReport(str(args.model), str(out), "unstructured", settings, before, after,
                         sparsity=rep.sparsity, sparse_tensors=moved, notes=list(rep.notes))
    if moved:
        report.notes.append("sparse initializers load in onnxruntime (verified), but onnx's full checker cannot "
                            "infer shapes through them; the dense form passed the full check")
    report.notes.append(CPU_SPEED_NOTE)
    return report


def _full_check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckFailed(f"the pruned model fails the onnx checker: {first}; nothing was written") from exc


def _save_proto_validated(proto: onnx.ModelProto, out: Path, *, external_data, protect, full_check: bool) -> None:
    """Stage beside ``out``, check (onnx + onnxruntime CPU), then move into place."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise OnnxoptError(f"output {out} is a folder; give a file name")
    if not parent.is_dir():
        raise OnnxoptError(f"output folder {parent} does not exist")
    protected = {Path(p).resolve() for p in protect}
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        staged = save_proto(proto, tmpdir / out.name, external_data=external_data)
        try:
            onnx.checker.check_model(str(staged), full_check=full_check)
            make_session(staged, "cpu")
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}; nothing was written to {out}") from exc
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckFailed(f"the pruned model fails the onnx checker: {first}; nothing was written") from exc
        moves = [(tmpdir / f.name, parent / f.name) for f in tmpdir.iterdir() if f.name != out.name]
        for _, dst in moves:
            if dst.resolve() in protected:
                raise OnnxoptError(f"refusing to overwrite the input's external data file {dst}")
        for src, dst in moves:
            os.replace(src, dst)
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
