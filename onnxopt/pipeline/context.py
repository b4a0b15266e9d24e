"""What the data-needing steps share: one typed object, built by the ``optimize`` command.

A step never reads global settings or string-keyed option bags: the input
model (the teacher), the data sources, the channels pruning kept so far, the
stage snapshots and the deferred check failures all live here, and the
pipeline runner hands the same context to every step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError
from onnxopt.ir.io import load_model
from onnxopt.ir.model import Model


class DataRole(str, enum.Enum):
    """What a data source is for."""

    CALIB = "calib"   # calibration (quantization ranges, activation-based pruning scores)
    TRAIN = "train"   # distillation
    EVAL = "eval"     # accuracy checks and the report (needs labels)


#: the optimize flag that sets each role (the recipe key is ``data.<role>``)
ROLE_FLAGS: dict[DataRole, str] = {DataRole.CALIB: "--calib", DataRole.TRAIN: "--train-data",
                                   DataRole.EVAL: "--eval"}
ROLE_WHAT: dict[DataRole, str] = {DataRole.CALIB: "calibration data", DataRole.TRAIN: "training data",
                                  DataRole.EVAL: "labelled eval data"}


@dataclass(frozen=True)
class DataSource:
    """A data source as the user wrote it, resolved, and where it came from (for error messages)."""

    source: str   # a path in the project's data format (``FILE.npz:SPLIT``...) or a data set name
    origin: str   # "--calib", "data.calib in models/recipes/x.yaml"


@dataclass(frozen=True)
class DataSources:
    calib: DataSource | None = None
    train: DataSource | None = None
    eval: DataSource | None = None

    def get(self, role: DataRole) -> DataSource | None:
        return getattr(self, role.value)

    def overridden_by(self, other: DataSources) -> DataSources:
        """These sources with every source ``other`` has replacing ours (flags over the recipe)."""
        return replace(self, **{r.value: other.get(r) for r in DataRole if other.get(r) is not None})


@dataclass
class Stage:
    """The model after one top-level step (``input`` is the model as loaded)."""

    name: str
    model: Model
    seconds: float = 0.0                                   # how long the step took
    stats: dict[str, float] = field(default_factory=dict)  # the step's pass statistics


def missing_data_message(step: str, role: DataRole) -> str:
    return (f"step {step!r} needs {ROLE_WHAT[role]}: pass {ROLE_FLAGS[role]} DATA "
            f"or set data.{role.value} in the recipe")


@dataclass
class PipelineContext:
    """Everything the pipeline's steps share for one ``optimize`` run."""

    teacher_path: Path                        # the input model: the teacher, never modified
    data: DataSources = field(default_factory=DataSources)
    output: Path | None = None                # where optimize will write the result
    pipeline_name: str = "pipeline"           # the recipe's name (for the report)
    report_path: Path | None = None           # --report FILE
    #: pruned tensor -> kept channel indices in the input model's numbering (composed over prune steps)
    kept_channels: dict[str, list[int]] = field(default_factory=dict)
    plans: list = field(default_factory=list)  # every PruningPlan applied, in order
    stages: list[Stage] = field(default_factory=list)
    measurements: list = field(default_factory=list)  # StageMeasurement per stage, once a report ran
    failures: list[str] = field(default_factory=list)  # check failures, raised when the pipeline ends
    written: list[Path] = field(default_factory=list)  # report files written
    _teacher: Model | None = field(default=None, repr=False)
    _datasets: dict = field(default_factory=dict, repr=False)

    def teacher(self) -> Model:
        """The input model, loaded once (callers must not modify it; copy first)."""
        if self._teacher is None:
            self._teacher = load_model(self.teacher_path)
        return self._teacher

    def dataset(self, role: DataRole, model: Model, step: str) -> Dataset:
        """The ``role`` data opened for ``model``'s inputs; a one-line error naming the step if it is missing."""
        from onnxopt.pipeline.data import open_source

        src = self.data.get(role)
        if src is None:
            raise DataError(missing_data_message(step, role))
        specs = input_specs(model)
        key = (role, tuple(specs))  # frozen specs: a model with other inputs opens its own copy
        if key not in self._datasets:
            self._datasets[key] = open_source(src, specs)
        return self._datasets[key]

    def record_pruning(self, plan) -> None:
        """Add a plan's kept channels, composed with earlier pruning so indices stay the input model's."""
        for tensor, kept in plan.kept_channels(only_changed=True).items():
            before = self.kept_channels.get(tensor)
            self.kept_channels[tensor] = [before[i] for i in kept] if before is not None else list(kept)
        self.plans.append(plan)
