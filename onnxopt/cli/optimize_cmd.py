"""``onnxopt optimize MODEL -o OUT``: run a pass pipeline, save, validate, compare.

The output is written to a temporary folder beside OUT, validated there
(onnx full check and an onnxruntime CPU session), and only then moved into
place: an invalid model never appears at OUT, and the input is never touched
unless ``--in-place`` asks for exactly that.

A recipe may hold steps that need data and the input model (``prune``,
``distill``, ``quantize``, ``check``, ``report``; see :mod:`onnxopt.pipeline`):
their data comes from the recipe's ``data:`` section or ``--calib``,
``--train-data`` and ``--eval``, checked before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from onnxopt.analysis.summary import model_file_bytes, parameter_stats
from onnxopt.cli.args import DataArgs, OutputArgs, ReportArgs, check_output_path
from onnxopt.cli.report import (
    Printer,
    format_float,
    format_table,
    human_bytes,
    human_count,
    progress,
    stderr_is_tty,
    write_json,
)
from onnxopt.data import InputSpec, input_specs, open_dataset, random_dataset
from onnxopt.errors import OnnxoptError
from onnxopt.ir import Model, load_model
from onnxopt.passes import PassManager, PassRecord, build_pipeline
from onnxopt.passes.recipe import Recipe, read_recipe
from onnxopt.pipeline import DataSources, PipelineContext, needs_context, prepare_pipeline
from onnxopt.pipeline.data import sources_from_flags, sources_from_recipe
from onnxopt.pipeline.render import stage_table
from onnxopt.pipeline.runner import raise_failures
from onnxopt.runtime.compare import Comparison, compare_sessions, sample_batches
from onnxopt.runtime.session import make_session
from onnxopt.runtime.validate import input_files, save_validated

#: random sample inputs for the before/after comparison: batches of this many samples
SAMPLE_BATCHES = 3
SAMPLE_BATCH_SIZE = 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "optimize", help="run graph passes (default: the cleanup pipeline) and save a validated model",
        description="Run a pass pipeline (the cleanup pipeline unless --recipe or --passes says otherwise), "
                    "save the result atomically, validate it (onnx full check and an onnxruntime CPU session; "
                    "an invalid result is never left at OUT), and compare it with the input: nodes, "
                    "parameters, file size and the max abs output difference on sample inputs.")
    p.add_argument("model", metavar="MODEL", type=Path,
                   help="the ONNX model to optimize (never modified unless --in-place)")
    OutputArgs.add(p)
    g = p.add_argument_group("pipeline")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--recipe", metavar="NAME|FILE",
                     help="a YAML or JSON recipe listing the passes and their options (see 'onnxopt passes'), "
                          "or a built-in recipe by name: cleanup, cpu-int8, cpu-prune50-int8")
    src.add_argument("--passes", metavar="a,b,c",
                     help="comma-separated pass names to run once, in order (see 'onnxopt passes')")
    DataArgs.add(p, help="real inputs for the before/after output comparison (FILE.npz keyed by input name, "
                         "FILE.npz:SPLIT, FILE.npy or a folder); random inputs when absent")
    d = p.add_argument_group("pipeline data", "data for the recipe steps that need some; each flag overrides the "
                                              "recipe's data section (FILE.npz[:SPLIT], FILE.npy, a folder, or "
                                              "fashion-mnist[:test] for the installed data set)")
    d.add_argument("--calib", metavar="DATA", help="calibration inputs (quantize; prune by activations)")
    d.add_argument("--train-data", metavar="DATA", help="training inputs, labels optional (distill)")
    d.add_argument("--eval", dest="eval_data", metavar="DATA", help="labelled eval data (check, report)")
    g.add_argument(
        "--report", type=Path, metavar="FILE",
        help="write the per-stage pipeline report to FILE (.json; .md and .png beside it), adding a report "
             "step when the recipe has none (needs --eval)")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


@dataclass
class ModelStats:
    """The before/after numbers of the summary table."""

    nodes: int
    parameters: int
    parameter_bytes: int
    file_bytes: int | None


@dataclass
class OptimizeReport:
    input: str
    output: str
    pipeline: str
    passes: list[PassRecord]
    before: ModelStats
    after: ModelStats
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    comparison_note: str = ""
    notes: list[str] = field(default_factory=list)
    stages: list = field(default_factory=list)     # per-stage measurements when a report step ran
    reports: list[str] = field(default_factory=list)  # the report files written


def model_stats(model: Model, path: Path | None) -> ModelStats:
    count, nbytes = parameter_stats(model)
    return ModelStats(len(model.graph.nodes), count, nbytes, model_file_bytes(path) if path else None)


def progress_line(rec: PassRecord) -> None:
    """One stderr line per finished pass (only on a terminal)."""
    what = "modified" if rec.modified else "unchanged"
    print(f"  [{rec.iteration}] {rec.name}: {what}, {rec.nodes_before} -> {rec.nodes_after} nodes, "
          f"{rec.seconds * 1000:.1f} ms", file=sys.stderr)


def comparison_batches(args, specs: list[InputSpec]):
    """Sample batches for the before/after check: ``--inputs`` or a few random batches."""
    data = DataArgs.parse(args)
    if data.source:
        return sample_batches(open_dataset(data.source, specs, data.image), specs, preferred=8)
    ds = random_dataset(specs, SAMPLE_BATCHES * SAMPLE_BATCH_SIZE, batch=1, shape_overrides=data.input_shapes)
    return sample_batches(ds, specs, preferred=SAMPLE_BATCH_SIZE)


def reference_session(path: Path):
    """A CPU session on the input, opened before anything is written (``--in-place`` replaces the file)."""
    try:
        return make_session(path, "cpu"), ""
    except OnnxoptError as exc:
        return None, f"not compared: the input does not load in onnxruntime ({exc})"


def compare_with(reference, after: Path, batches, quiet: bool) -> Comparison:
    got = make_session(after, "cpu")
    with progress(None, "compare", quiet=quiet, unit="sample") as bar:
        return compare_sessions(reference, got, batches, rtol=0.0, atol=0.0, on_batch=bar.update)


def pipeline_context(args, recipe: Recipe | None, out: Path):
    """The context the data steps share: the input model, data (flags over the recipe), report path."""
    data = sources_from_recipe(recipe.data, recipe.path) if recipe is not None else DataSources()
    data = data.overridden_by(sources_from_flags(args.calib, args.train_data, args.eval_data))
    return PipelineContext(teacher_path=Path(args.model), data=data, output=out, report_path=args.report)


def run(args) -> int:
    recipe = read_recipe(args.recipe) if args.recipe is not None else None
    pipeline: PassManager = recipe.pipeline if recipe is not None else build_pipeline(passes=args.passes)
    out = check_output_path(args, args.model)
    context = None
    if args.report is not None or needs_context(pipeline):
        context = pipeline_context(args, recipe, out)
        pipeline = prepare_pipeline(pipeline, context, add_report=args.report is not None)
    model = load_model(args.model)
    protect = [] if args.in_place else input_files(args.model)
    if out.resolve() in {p.resolve() for p in protect}:
        raise OnnxoptError(f"output {out} is one of the input model's files; choose another name")
    specs = input_specs(model)
    if args.data:  # fail on bad data before doing any work
        open_dataset(args.data, specs, DataArgs.parse(args).image)
    show = Printer(quiet=args.quiet, json_dest=args.json)
    if show.enabled and stderr_is_tty():
        pipeline.on_pass = progress_line
    before = model_stats(model, args.model)
    reference, note = reference_session(args.model)
    result = pipeline(model)
    if context is not None:
        raise_failures(context)  # a failed check: the report is written, OUT is not
    save_validated(result.model, out, external_data=args.external_data, protect=protect)
    after = model_stats(result.model, out)
    report = OptimizeReport(str(args.model), str(out), pipeline.name, pipeline.records, before, after,
                            comparison_note=note, notes=list(result.model.notes))
    unused = [flag for flag, v in (("--calib", args.calib), ("--train-data", args.train_data),
                                   ("--eval", args.eval_data)) if v]
    if unused and context is None:
        report.notes.append(f"{', '.join(unused)} not used: no step of this pipeline reads data")
    if reference is not None:
        try:
            comparison = compare_with(reference, out, comparison_batches(args, specs), args.quiet)
            report.max_abs_diff = {o.name: o.max_abs_error for o in comparison.outputs}
            report.comparison_note = (f"{comparison.samples} {'given' if args.data else 'random'} samples "
                                      f"in {comparison.batches} batches")
        except OnnxoptError as exc:
            if args.data:
                raise
            report.comparison_note = f"not compared: {exc}"
    if context is not None:
        report.stages = context.measurements
        report.reports = [str(p) for p in context.written]
    if args.json is not None:
        write_json(report, args.json)
    print_report(show, report)
    return 0


def print_report(show: Printer, r: OptimizeReport) -> None:
    rows = [(rec.name, rec.iteration, "yes" if rec.modified else "no", f"{rec.nodes_before} -> {rec.nodes_after}",
             f"{rec.seconds * 1000:.1f} ms",
             ", ".join(f"{k}={v:g}" for k, v in rec.stats.items() if v) or "-") for rec in r.passes]
    show(f"Pipeline {r.pipeline}: {r.input} -> {r.output}")
    show(format_table(["pass", "iter", "modified", "nodes", "time", "stats"], rows, indent=2))
    b, a = r.before, r.after
    summary = [
        ("nodes", b.nodes, a.nodes),
        ("parameters", human_count(b.parameters), human_count(a.parameters)),
        ("weights", human_bytes(b.parameter_bytes), human_bytes(a.parameter_bytes)),
        ("file size", human_bytes(b.file_bytes), human_bytes(a.file_bytes)),
    ]
    show("")
    show(format_table(["", "before", "after"], summary, indent=2))
    show("")
    if r.max_abs_diff:
        diffs = ", ".join(f"{name} {format_float(v, 3)}" for name, v in r.max_abs_diff.items())
        show(f"max abs output difference ({r.comparison_note}): {diffs}")
    else:
        show(f"max abs output difference: {r.comparison_note}")
    if r.stages:
        header, rows = stage_table(r.stages)
        show("")
        show(format_table(header, rows, indent=2))
    if r.reports:
        show(f"report: {', '.join(r.reports)}")
    for note in r.notes:
        show(f"note: {note}")
