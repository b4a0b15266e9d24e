"""Pipeline step ``prune``: structured pruning by a ratio or a MACs target, remembered for distillation.

The same selection and removal as ``onnxopt prune`` (:func:`onnxopt.prune.structured.prune_structured`);
what this step adds is that the kept channels go into the pipeline context,
so a following ``distill`` step can compare the student's pruned feature maps
with the teacher's matching channels.
"""

from __future__ import annotations

import math

from onnxopt.ir.model import Model
from onnxopt.passes.base import PassResult, register
from onnxopt.pipeline.context import DataRole
from onnxopt.pipeline.step import PipelineStep
from onnxopt.prune.importance import CRITERIA
from onnxopt.prune.structured import check_ratio, finish_prune, prune_structured


@register
class PruneStep(PipelineStep):
    """Remove whole channels (``ratio`` of each group, or down to ``target_macs`` of the MACs)."""

    name = "prune"
    summary = "structured pruning by a ratio or a MACs target (kept channels feed the distill step's hints)"

    def __init__(self, ratio: float | None = None, target_macs: float | None = None, importance: str = "l1",
                 global_ranking: bool = False, min_keep: float = 0.1, round_to: int = 1,
                 ignore: list[str] | None = None, seed: int = 0, save_plan: str | None = None):
        if (ratio is None) == (target_macs is None):
            raise ValueError("give exactly one of ratio or target_macs")
        if ratio is not None:
            check_ratio(ratio)
        if target_macs is not None and not (0.0 < target_macs <= 1.0 and not math.isnan(target_macs)):
            raise ValueError(f"target_macs must be a fraction in (0, 1], got {target_macs}")
        if importance not in CRITERIA:
            raise ValueError(f"unknown importance {importance!r}; choose from {', '.join(CRITERIA)}")
        self.ratio = ratio
        self.target_macs = target_macs
        self.importance = importance
        self.global_ranking = global_ranking
        self.min_keep = min_keep
        self.round_to = round_to
        self.ignore = list(ignore or [])
        self.seed = seed
        self.save_plan = save_plan

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.CALIB,) if CRITERIA[self.importance].needs_data else ()

    def run(self, model: Model) -> PassResult:
        dataset = self.ctx.dataset(DataRole.CALIB, model, self.name) if self.data_needs() else None
        res = prune_structured(model, ratio=self.ratio, target_macs=self.target_macs, importance=self.importance,
                               global_ranking=self.global_ranking, min_keep=self.min_keep, round_to=self.round_to,
                               ignore=self.ignore, dataset=dataset, seed=self.seed)
        self.ctx.record_pruning(res.plan)
        result = finish_prune(res, self.save_plan)
        result.stats["ratio"] = round(res.ratio, 4)
        if res.macs_before:
            result.stats["macs_kept"] = round(res.macs_after / res.macs_before, 4)
        return result
