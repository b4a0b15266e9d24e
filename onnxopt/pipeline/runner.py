"""Running a recipe whose steps need data: bind the context, check the data first, record stages.

:func:`prepare_pipeline` binds one :class:`PipelineContext` to every
:class:`PipelineStep` and refuses, before any work is done, a pipeline whose
steps need data that was not given (a one-line error naming the step and the
flag or recipe key). :class:`StagedPipeline` runs the top-level steps once
each, in order, and keeps a snapshot of the model after every step that
changes it: the stages the ``report`` step measures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from onnxopt.errors import CheckFailed, DataError, RecipeError
from onnxopt.ir.model import Model
from onnxopt.passes.base import Pass, PassManager, PassResult
from onnxopt.pipeline.context import PipelineContext, Stage, missing_data_message
from onnxopt.pipeline.step import PipelineStep


def walk(pipeline: Pass) -> Iterator[Pass]:
    """Every pass of a pipeline, nested pipelines included."""
    yield pipeline
    if isinstance(pipeline, PassManager):
        for p in pipeline.passes:
            yield from walk(p)


def steps_of(pipeline: Pass) -> list[PipelineStep]:
    return [p for p in walk(pipeline) if isinstance(p, PipelineStep)]


def needs_context(pipeline: Pass) -> bool:
    """True if some step needs data or the input model (then run it through :func:`prepare_pipeline`)."""
    return bool(steps_of(pipeline))


class StagedPipeline(PassManager):
    """Runs each top-level step once, recording a :class:`Stage` after each step that changes the model."""

    def __init__(self, pipeline: PassManager, context: PipelineContext):
        if pipeline.fixed_point:
            raise RecipeError(f"pipeline {pipeline.name!r} has data steps, which run once each: "
                              "remove fixed_point from the recipe (nest 'cleanup' for a fixed-point cleanup)")
        super().__init__(pipeline.passes, fixed_point=False, name=pipeline.name, on_pass=pipeline.on_pass)
        self.context = context

    def _stage_name(self, name: str) -> str:
        taken = {s.name for s in self.context.stages}
        if name not in taken:
            return name
        i = 2
        while f"{name}-{i}" in taken:
            i += 1
        return f"{name}-{i}"

    def run(self, model: Model) -> PassResult:
        ctx = self.context
        ctx.stages.append(Stage("input", model.copy()))
        totals: dict[str, float] = {}
        modified = False
        for p in self.passes:
            one = PassManager([p], fixed_point=False, name=p.name, on_pass=self.on_pass)
            t0 = time.perf_counter()
            res = one(model)
            seconds = time.perf_counter() - t0
            self.records.extend(one.records)
            model, modified = res.model, modified or res.modified
            totals.update(res.stats)
            if getattr(p, "changes_model", True):
                prefix = f"{p.name}."
                own = {k.removeprefix(prefix): v for k, v in res.stats.items()}
                ctx.stages.append(Stage(self._stage_name(p.name), model.copy(), seconds, own))
        return PassResult(model, modified, totals)


def prepare_pipeline(pipeline: PassManager, context: PipelineContext, *, add_report: bool = False) -> StagedPipeline:
    """Bind ``context`` to every step, check every step's data, and wrap for stage recording.

    ``add_report``: append a ``report`` step when the pipeline has none (``--report FILE``).
    """
    from onnxopt.pipeline.report_step import ReportStep

    if pipeline.fixed_point and not needs_context(pipeline):  # e.g. the default cleanup with --report
        pipeline = PassManager([pipeline], fixed_point=False, name=pipeline.name)
    if add_report and not any(isinstance(p, ReportStep) for p in walk(pipeline)):
        pipeline.passes.append(ReportStep())
    context.pipeline_name = pipeline.name
    for step in steps_of(pipeline):
        step.bind(context)
        for role in step.data_needs():
            if context.data.get(role) is None:
                raise DataError(missing_data_message(step.name, role))
    return StagedPipeline(pipeline, context)


def raise_failures(context: PipelineContext) -> None:
    """The deferred check failures, as one CheckFailed (exit 1), after the report was written."""
    if not context.failures:
        return
    written = f"; report: {', '.join(str(p) for p in context.written)}" if context.written else ""
    raise CheckFailed("; ".join(context.failures) + written)
