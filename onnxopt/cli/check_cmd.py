"""``onnxopt check MODEL``: the CI gate.

Every step is a named check with pass/fail and a message: load, the onnx
checker (full check), shape inference, an onnxruntime session per requested
provider, and with ``--reference`` a numeric comparison per output. Exit 0 when
all pass, 1 when a check fails, 2 for usage or input errors (a missing or
non-ONNX file, bad data). ``--junit`` and ``--json`` write the same results
for CI systems.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from onnxopt.cli.args import DataArgs, ModelArgs, ProviderArgs, ToleranceArgs, positive_int
from onnxopt.cli.report import Printer, format_table, progress, write_json, write_text
from onnxopt.data import Dataset, input_specs, open_dataset, random_dataset
from onnxopt.errors import CheckFailed, OnnxoptError
from onnxopt.ir import load_model
from onnxopt.runtime.compare import compare_sessions, output_name_problem, sample_batches
from onnxopt.runtime.providers import parse_providers
from onnxopt.runtime.session import make_session, run_batches


@dataclass
class CheckResult:
    """One named check: passed or not, why, and how long it took."""

    name: str
    passed: bool
    message: str
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


@dataclass
class CheckReport:
    model: str
    reference: str | None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check", help="validate a model (checker, shapes, sessions, numerics) as a CI gate",
        description="Validate a model step by step: load, onnx checker (full check), shape inference, an "
                    "onnxruntime session per provider, and with --reference a numeric comparison of every "
                    "output. Exit 0 when all checks pass, 1 when one fails, 2 for usage or input errors.")
    ModelArgs.add(p)
    p.add_argument("--reference", type=Path, metavar="REF",
                   help="a reference model (e.g. the unoptimized one) whose outputs MODEL must reproduce "
                        "within --rtol/--atol; output names must match")
    DataArgs.add(p, help="inputs for the numeric comparison (FILE.npz keyed by input name, FILE.npz:SPLIT, "
                         "FILE.npy or a folder); random inputs when absent. Without --reference the model "
                         "is just run on them")
    p.add_argument("--num-random", type=positive_int, default=8, metavar="N",
                   help="number of random samples to compare when --inputs is not given (default 8)")
    ProviderArgs.add(p)
    ToleranceArgs.add(p)
    g = p.add_argument_group("report")
    g.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the check results as JSON to FILE (or to stdout with no FILE)")
    g.add_argument("--junit", type=Path, metavar="FILE",
                   help="write the check results as JUnit XML to FILE (one testcase per check)")
    g.add_argument("--quiet", "-q", action="store_true", help="print only errors (and JSON when asked)")
    p.set_defaults(func=run)
    return p


# -- the checks ------------------------------------------------------------------
def timed_check(report: CheckReport, name: str, fn: Callable[[], str | tuple[str, dict]]):
    """Run ``fn`` as check ``name``: a returned message passes, CheckFailed fails; anything else propagates."""
    t0 = time.perf_counter()
    try:
        out = fn()
        message, details = out if isinstance(out, tuple) else (out, {})
        result = CheckResult(name, True, message, details=details)
    except CheckFailed as exc:
        result = CheckResult(name, False, str(exc))
    result.seconds = time.perf_counter() - t0
    report.checks.append(result)
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def onnx_checker(path: Path) -> str:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CheckFailed(f"onnx checker: {_first_line(exc)}") from exc
    return "onnx.checker.check_model(full_check=True) passed"


def shape_inference(path: Path) -> tuple[str, dict]:
    """Strict onnx shape inference (from the file, so large models work) and how much it resolved."""
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "inferred.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(dst), check_type=True, strict_mode=True,
                                                   data_prop=True)
        except Exception as exc:
            raise CheckFailed(f"shape inference: {_first_line(exc)}") from exc
        proto = onnx.load_model(str(dst), load_external_data=False)
    g = proto.graph
    infos = list(g.value_info) + list(g.output)

    def known(vi) -> bool:
        tt = vi.type.tensor_type
        return tt.HasField("shape") and all(d.HasField("dim_value") or d.HasField("dim_param") for d in tt.shape.dim)

    produced = {o for n in g.node for o in n.output if o}
    resolved = sum(1 for vi in infos if known(vi))
    unknown_outputs = [o.name for o in g.output if not known(o)]
    message = f"{resolved} of {len(produced)} node outputs have inferred shapes"
    if unknown_outputs:
        message += f"; graph output(s) with unknown shape: {', '.join(unknown_outputs)}"
    return message, {"resolved": resolved, "tensors": len(produced), "unknown_outputs": unknown_outputs}


def provider_session(path: Path, provider: str, threads: int | None, sessions: dict):
    def check() -> str:
        sess = make_session(path, provider, threads=threads)
        sessions[provider] = sess
        return f"onnxruntime session created with {', '.join(sess.get_providers())}"
    return check


def run_on_data(sess, batches) -> str:
    """Without a reference: the model runs on the data and its outputs are finite."""
    samples = 0
    bad: set[str] = set()
    try:
        for batch, outs in run_batches(sess, batches):
            samples += len(next(iter(batch.values())))
            bad |= {k for k, v in outs.items() if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()}
    except OnnxoptError as exc:
        raise CheckFailed(str(exc)) from exc
    if bad:
        raise CheckFailed(f"output(s) {', '.join(sorted(bad))} hold NaN or Inf on the inputs")
    return f"ran on {samples} samples; all outputs finite"


# -- reports ---------------------------------------------------------------------------
def junit_xml(report: CheckReport) -> str:
    """JUnit XML: one testsuite, one testcase per check, a <failure> with the message for failed ones."""
    suite = ET.Element("testsuite", name="onnxopt check", tests=str(len(report.checks)),
                       failures=str(len(report.failed)), errors="0",
                       time=f"{sum(c.seconds for c in report.checks):.6f}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="model", value=report.model)
    if report.reference:
        ET.SubElement(props, "property", name="reference", value=report.reference)
    classname = f"onnxopt.check.{Path(report.model).stem}"
    for c in report.checks:
        case = ET.SubElement(suite, "testcase", classname=classname, name=c.name, time=f"{c.seconds:.6f}")
        if c.passed:
            ET.SubElement(case, "system-out").text = c.message
        else:
            ET.SubElement(case, "failure", message=c.message, type="CheckFailed").text = c.message
    root = ET.Element("testsuites", tests=suite.get("tests"), failures=suite.get("failures"), errors="0")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(args, report: CheckReport) -> None:
    doc = {"model": report.model, "reference": report.reference, "passed": report.passed,
           "checks": report.checks}
    if args.json is not None:
        write_json(doc, args.json)
    if args.junit is not None:
        write_text(args.junit, junit_xml(report))


def print_report(show: Printer, report: CheckReport) -> None:
    rows = [(c.name, "PASS" if c.passed else "FAIL", f"{c.seconds * 1000:.0f} ms", c.message) for c in report.checks]
    show(format_table(["check", "result", "time", "message"], rows))
    show("")
    n = len(report.checks)
    show(f"{n} of {n} checks passed" if report.passed else f"{len(report.failed)} of {n} checks failed")


# -- the command -------------------------------------------------------------------------
def sample_data(args, specs) -> Dataset:
    data = DataArgs.parse(args)
    if data.source:
        return open_dataset(data.source, specs, data.image)
    return random_dataset(specs, args.num_random, batch=1, shape_overrides=data.input_shapes)


def input_step(report: CheckReport, name: str, fn: Callable, *, describe: Callable[[object], str] | None = None):
    """Run a step whose failure is an input error (exit 2): record it as a failed check for the
    reports, then let the error propagate. A reference or data that cannot be used is the user's
    input problem, not the model's, so even onnxruntime's refusal becomes an input error here.
    With ``describe``, success is recorded as a passed check with ``describe(value)`` as message."""
    t0 = time.perf_counter()
    try:
        value = fn()
    except OnnxoptError as exc:
        error = OnnxoptError(f"{name}: {exc}") if isinstance(exc, CheckFailed) else exc
        report.checks.append(CheckResult(name, False, str(error), time.perf_counter() - t0))
        raise error from exc
    if describe is not None:
        report.checks.append(CheckResult(name, True, describe(value), time.perf_counter() - t0))
    return value


def run(args) -> int:
    providers = [p.short for p in parse_providers(args.providers)]
    report = CheckReport(str(args.model), str(args.reference) if args.reference else None)
    try:
        run_checks(args, report, providers)
    except CheckFailed:
        raise
    except OnnxoptError:
        write_reports(args, report)  # CI still learns which step could not run
        raise
    write_reports(args, report)
    print_report(Printer(quiet=args.quiet, json_dest=args.json), report)
    if not report.passed:
        names = ", ".join(c.name for c in report.failed)
        raise CheckFailed(f"{len(report.failed)} of {len(report.checks)} checks failed: {names}")
    return 0


def run_checks(args, report: CheckReport, providers: list[str]) -> None:
    model = input_step(report, "load", lambda: load_model(args.model),
                       describe=lambda m: f"opset {m.opset}, {len(m.graph.nodes)} nodes")
    specs = input_specs(model)
    del model  # sessions read the file; do not hold a second copy of the weights
    reference_sess = dataset = None
    if args.reference is not None:
        reference_sess = input_step(report, "reference", lambda: open_reference(args.reference, args.threads))
    if args.reference is not None or args.data:  # bad data is found before any check runs
        dataset = input_step(report, "inputs", lambda: sample_data(args, specs))
    timed_check(report, "onnx_checker", lambda: onnx_checker(args.model))
    timed_check(report, "shape_inference", lambda: shape_inference(args.model))
    sessions: dict = {}
    for provider in providers:
        timed_check(report, f"session[{provider}]", provider_session(args.model, provider, args.threads, sessions))
    if not sessions or dataset is None:
        return
    if reference_sess is None:
        for provider, sess in sessions.items():
            timed_check(report, f"run[{provider}]", lambda s=sess: run_on_data(s, sample_batches(dataset, specs)))
        return
    ref_names = [o.name for o in reference_sess.get_outputs()]
    problem = output_name_problem(ref_names, [o.name for o in next(iter(sessions.values())).get_outputs()])
    if problem:
        report.checks.append(CheckResult("output_names", False, problem))
        return
    report.checks.append(CheckResult("output_names", True, f"outputs match: {', '.join(ref_names)}"))
    for provider, sess in sessions.items():
        compare_provider(args, report, provider, reference_sess, sess, dataset, specs)


def open_reference(path: Path, threads: int | None):
    """A CPU session on the reference model (loaded first, for clear errors on a broken file)."""
    load_model(path)
    return make_session(path, "cpu", threads=threads)


def compare_provider(args, report: CheckReport, provider: str, reference, sess, dataset: Dataset, specs) -> None:
    """Compare every output of ``sess`` with the reference: one check per output."""
    t0 = time.perf_counter()
    with progress(None, f"compare[{provider}]", quiet=args.quiet, unit="sample") as bar:
        try:
            comparison = compare_sessions(reference, sess, sample_batches(dataset, specs), rtol=args.rtol,
                                          atol=args.atol, on_batch=bar.update)
        except OnnxoptError as exc:
            report.checks.append(CheckResult(f"compare[{provider}]", False, str(exc), time.perf_counter() - t0))
            return
    seconds = (time.perf_counter() - t0) / max(1, len(comparison.outputs))
    for out in comparison.outputs:
        msg = out.describe() + f" ({comparison.samples} samples, rtol {args.rtol:g}, atol {args.atol:g})"
        report.checks.append(CheckResult(f"compare[{provider}]:{out.name}", out.passed, msg, seconds,
                                         details=vars(out)))
