"""Pipeline step ``report``: measure every stage so far and write JSON, markdown and a PNG plot.

Stages: the input model, then the model after each step that changes it
(cleanup, prune, distill, quantize...). Each gets top-1 on the eval data,
batch-1 and batch-64 CPU latency (2 threads, short interleaved runs), MACs,
parameters and file size. The files go to ``--report FILE`` (``.json``; the
``.md`` and ``.png`` beside it), else the step's ``path``, else
``OUT.report.json`` beside the optimized model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from onnxopt.ir.model import Model
from onnxopt.passes.base import PassResult, register
from onnxopt.pipeline.context import DataRole, Stage
from onnxopt.pipeline.measure import MeasureSettings, measure_stages
from onnxopt.pipeline.render import PipelineReport, StepSummary, write_report
from onnxopt.pipeline.step import PipelineStep


def default_report_path(output: Path | None) -> Path:
    if output is None:
        return Path("pipeline.report.json")
    out = Path(output)
    return out.with_name(f"{out.stem}.report.json")


@register
class ReportStep(PipelineStep):
    """Per-stage accuracy, latency, MACs, parameters and size, as JSON + markdown + PNG."""

    name = "report"
    summary = "measure every stage (top-1, CPU latency at batch 1 and 64, MACs, params, size); JSON, md, PNG"
    changes_model = False

    def __init__(self, path: str | None = None, threads: int = 2, batch_sizes: list[int] | None = None,
                 runs: int = 20, warmup: int = 3, eval_limit: int | None = None, keep_stages: bool = False):
        sizes = tuple(batch_sizes) if batch_sizes is not None else (1, 64)
        if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes}")
        if threads < 1 or runs < 1 or warmup < 0:
            raise ValueError("threads and runs must be >= 1, warmup >= 0")
        self.path = path
        self.threads = threads
        self.batch_sizes = list(sizes)
        self.runs = runs
        self.warmup = warmup
        self.eval_limit = eval_limit
        self.keep_stages = keep_stages
        self.settings = MeasureSettings(threads=threads, batch_sizes=sizes, runs=runs, warmup=warmup,
                                        eval_limit=eval_limit)

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.EVAL,)

    def report_path(self) -> Path:
        if self.ctx.report_path is not None:
            return Path(self.ctx.report_path)
        if self.path is not None:
            return Path(self.path)
        return default_report_path(self.ctx.output)

    def stages(self, model: Model) -> list[Stage]:
        stages = list(self.ctx.stages)
        if not stages:  # bound by hand, without the runner: at least the input and this model
            stages = [Stage("input", self.ctx.teacher()), Stage("current", model)]
        return stages

    def run(self, model: Model) -> PassResult:
        ctx = self.ctx
        data = ctx.dataset(DataRole.EVAL, model, self.name)
        path = self.report_path()
        stages = self.stages(model)
        if self.keep_stages:
            measurements = measure_stages(stages, data, path.with_name(f"{path.stem}.stages"), self.settings)
        else:
            with tempfile.TemporaryDirectory(prefix="onnxopt-stages-") as tmp:
                measurements = measure_stages(stages, data, Path(tmp), self.settings)
            for m in measurements:
                m.path = None
        ctx.measurements = measurements
        report = PipelineReport(
            input=str(ctx.teacher_path), output=str(ctx.output) if ctx.output else None, pipeline=ctx.pipeline_name,
            data={r.value: (ctx.data.get(r).source if ctx.data.get(r) else None) for r in DataRole},
            settings=self.settings, stages=measurements,
            steps=[StepSummary(s.name, round(s.seconds, 3), dict(s.stats)) for s in stages[1:]],
            failures=list(ctx.failures), notes=list(model.notes))
        ctx.written.extend(write_report(report, path))
        last = measurements[-1]
        stats = {"stages": len(measurements)}
        if last.top1 is not None:
            stats["top1"] = round(last.top1, 2)
        for lat in last.latency:
            stats[f"batch{lat.batch}_ms"] = round(lat.median_ms, 3)
        return PassResult(model, False, stats)
