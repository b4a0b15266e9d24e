"""The whole pipeline: cleanup -> prune -> distill -> quantize -> check -> report, from one recipe.

Steps that need data or the input model are passes like any other (one per
file, registered by name), with their data coming from a typed
:class:`PipelineContext` that the ``optimize`` command builds and binds to
the pipeline; nothing global:

* :mod:`~onnxopt.pipeline.context`: :class:`PipelineContext` (the teacher,
  data sources, the pruning so far, the stages and their measurements);
* :mod:`~onnxopt.pipeline.data`: data sources (the project's data format, or
  ``fashion-mnist``) resolved relative to the recipe file;
* :mod:`~onnxopt.pipeline.step`: :class:`PipelineStep`, the base of the steps;
* :mod:`~onnxopt.pipeline.runner`: binds a context, checks every step's data
  up front, and snapshots the model after each top-level step (a *stage*);
* the steps: ``prune`` (:mod:`prune_step`), ``distill`` (:mod:`distill_step`),
  ``quantize`` (:mod:`quantize_step`), ``check`` (:mod:`check_step`),
  ``report`` (:mod:`report_step`, with :mod:`measure` and :mod:`render`).
"""

from onnxopt.pipeline.context import DataRole, DataSource, DataSources, PipelineContext, Stage
from onnxopt.pipeline.runner import StagedPipeline, needs_context, prepare_pipeline

__all__ = ["DataRole", "DataSource", "DataSources", "PipelineContext", "Stage", "StagedPipeline", "needs_context",
           "prepare_pipeline"]
