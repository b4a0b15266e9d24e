"""Pipeline step ``distill``: fine-tune the current model towards the pipeline's input model.

The teacher is the model the pipeline started from (loaded once, never
modified); the student is whatever the previous steps made of it. After a
``prune`` step the pruned feature maps also serve as hints: the student's
tensor is compared with the teacher's tensor cut to the kept channels the
context recorded. After a ``quantize`` step this is quantization-aware
training: the torch executor runs the QDQ graph with fake quantization and
writes the trained weights back re-quantized with their scales.

Needs torch (``pip install 'onnxopt[finetune]'``), imported only when the step runs.
"""

from __future__ import annotations

from onnxopt.errors import OnnxoptError
from onnxopt.ir.model import Model
from onnxopt.passes.base import PassResult, register
from onnxopt.pipeline.context import DataRole
from onnxopt.pipeline.step import PipelineStep


@register
class DistillStep(PipelineStep):
    """Knowledge distillation from the input model (KL on softened logits, CE on labels, pruning hints)."""

    name = "distill"
    summary = "fine-tune by distillation from the pipeline's input model on the train data (QAT after quantize)"

    def __init__(self, epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, temperature: float = 4.0,
                 alpha: float = 0.5, hints: bool = True, hint_weight: float = 0.5, optimizer: str = "adam",
                 max_steps: int | None = None, learn_scales: bool = False, threads: int | None = None,
                 schedule: str = "cosine", augment: str = "none", shuffle: bool = True, seed: int = 0):
        from onnxopt.finetune.augment import AUGMENTATIONS
        from onnxopt.finetune.callbacks import SCHEDULES

        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {augment!r}")
        if augment != "none" and not shuffle:
            raise ValueError("augment needs shuffle: true")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if alpha < 0 or hint_weight < 0:
            raise ValueError("alpha and hint_weight must be >= 0")
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.temperature = temperature
        self.alpha = alpha
        self.hints = hints
        self.hint_weight = hint_weight
        self.optimizer = optimizer
        self.max_steps = max_steps
        self.learn_scales = learn_scales
        self.threads = threads
        self.schedule = schedule
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed

    def data_needs(self) -> tuple[DataRole, ...]:
        return (DataRole.TRAIN,)

    def hint_channels(self, student: Model, teacher: Model) -> dict[str, list[int]]:
        """The pruned tensors both models have, with their kept channels (the teacher's numbering)."""
        if not self.hints:
            return {}
        s_names, t_tensors = set(student.tensors()), teacher.tensors()
        return {name: kept for name, kept in sorted(self.ctx.kept_channels.items())
                if name in s_names and name in t_tensors}

    def run(self, model: Model) -> PassResult:
        try:
            from onnxopt.finetune import finetune
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise OnnxoptError(f"step {self.name!r} needs torch: pip install 'onnxopt[finetune]'") from exc

        teacher = self.ctx.teacher()
        data = self.ctx.dataset(DataRole.TRAIN, model, self.name)
        hints = self.hint_channels(model, teacher)
        result = finetune(model, teacher, data, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                          temperature=self.temperature, alpha=self.alpha, hints=hints, hint_weight=self.hint_weight,
                          batch_size=self.batch_size, learn_scales=self.learn_scales, keep_zeros=True,
                          max_steps=self.max_steps, progress=False, threads=self.threads, shuffle=self.shuffle,
                          augment=None if self.augment == "none" else self.augment, schedule=self.schedule,
                          seed=self.seed)
        trained = result.model
        trained.notes = list(dict.fromkeys(model.notes + result.notes))
        if result.diverged:
            trained.notes.append(f"distill: {result.message}")
        stats = {"steps": result.steps, "epochs": result.epochs, "hints": len(hints),
                 "diverged": int(result.diverged)}
        if result.losses:
            stats["loss_first"] = round(result.losses[0], 4)
            stats["loss_last"] = round(result.losses[-1], 4)
        return PassResult(trained, result.steps > 0, stats)
