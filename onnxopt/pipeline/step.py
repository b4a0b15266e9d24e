"""The base of the pipeline's steps: a :class:`Pass` that also gets a :class:`PipelineContext`.

Options stay typed ``__init__`` keyword arguments (recipes build steps like
any pass); what is not an option (the teacher, data, the pruning so far) comes
from the context the runner binds before the pipeline starts.
"""

from __future__ import annotations

from typing import ClassVar

from onnxopt.errors import OnnxoptError
from onnxopt.passes.base import Pass
from onnxopt.pipeline.context import DataRole, PipelineContext


class PipelineStep(Pass):
    """A pass that needs the pipeline's context (data, teacher, stages)."""

    #: False for steps that only look at the model (check, report): no stage is recorded after them
    changes_model: ClassVar[bool] = True
    context: PipelineContext | None = None

    def data_needs(self) -> tuple[DataRole, ...]:
        """The data this step reads (checked for every step before the pipeline starts)."""
        return ()

    def bind(self, context: PipelineContext) -> None:
        self.context = context

    @property
    def ctx(self) -> PipelineContext:
        if self.context is None:
            raise OnnxoptError(f"step {self.name!r} needs data and the input model: run it through "
                               "'onnxopt optimize --recipe' (or bind a PipelineContext)")
        return self.context
