"""Training hooks: small objects with optional methods, called by :func:`onnxopt.finetune.finetune`.

Any object works; it implements only the hooks it needs:

* ``on_train_start(trainer)`` / ``on_train_end(trainer)``: ``trainer`` is the
  running :class:`~onnxopt.finetune.distill.Distiller` (``current_model()``
  gives the student with the current weights written back, ``epoch``,
  ``step``, ``protected_paths``);
* ``on_epoch_start(epoch)``, ``on_epoch_end(epoch, metrics)``;
* ``on_step_end(step, losses)`` with ``losses`` a dict of floats (``loss``,
  ``kd``, ``ce``, ``hint``);
* ``on_eval(metrics)`` after each evaluation on ``eval_data``.

A hook asks training to stop by returning ``True`` or by setting its
``stop_training`` attribute; the current step or epoch finishes first.
"""

from __future__ import annotations

import math
from pathlib import Path

from onnxopt.errors import OnnxoptError
from onnxopt.ir.io import save_model

_MODES = ("min", "max")


class Callback:
    """A base class with every hook as a no-op (subclassing it is optional)."""

    stop_training = False

    def on_train_start(self, trainer) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_step_end(self, step: int, losses: dict[str, float]) -> None: ...
    def on_eval(self, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer) -> None: ...


def _default_monitor(metrics: dict) -> str:
    return "eval_loss" if "eval_loss" in metrics else "train_loss"


class _Monitor:
    """Tracks the best value of one metric."""

    def __init__(self, monitor: str | None, mode: str, min_delta: float):
        if mode not in _MODES:
            raise OnnxoptError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best: float | None = None

    def improved(self, metrics: dict) -> bool:
        key = self.monitor or _default_monitor(metrics)
        if key not in metrics or metrics[key] is None:
            raise OnnxoptError(f"callback monitors {key!r} but the epoch metrics have only "
                               f"{', '.join(k for k, v in metrics.items() if v is not None)}")
        value = float(metrics[key])
        better = (self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                        else value > self.best + self.min_delta))
        if better:
            self.best = value
        return better


class EarlyStopping(Callback):
    """Stop when ``monitor`` (default ``eval_loss``, else ``train_loss``) has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str | None = None, *, patience: int = 2, min_delta: float = 0.0, mode: str = "min"):
        if patience < 1:
            raise OnnxoptError("EarlyStopping patience must be >= 1")
        self._best = _Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    @property
    def best(self) -> float | None:
        return self._best.best

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        if self._best.improved(metrics):
            self.wait = 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training = True
            self.stopped_epoch = epoch
            return True
        return False


class Checkpoint(Callback):
    """Save the student with its current weights at epoch ends.

    ``path`` may contain ``{epoch}``. With ``monitor`` (a metric name) only
    epochs that improve it are saved (the best model so far); otherwise every
    ``every`` epochs. Inputs (student, teacher) are never overwritten.
    """

    def __init__(self, path, *, monitor: str | None = None, mode: str = "min", every: int = 1):
        self.path = str(path)
        self.every = max(1, int(every))
        self._best = _Monitor(monitor, mode, 0.0) if monitor else None
        self.trainer = None
        self.saved: list[Path] = []

    def on_train_start(self, trainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if self.trainer is None:
            raise OnnxoptError("Checkpoint was not started (on_train_start was not called)")
        due = self._best.improved(metrics) if self._best else epoch % self.every == 0
        if due:
            target = Path(self.path.format(epoch=epoch))
            save_model(self.trainer.current_model(), target, protect=self.trainer.protected_paths)
            self.saved.append(target)


class CosineLR(Callback):
    """Learning-rate schedule: linear warm-up over ``warmup`` (fraction of all steps), then cosine decay to ``floor``.

    Short fine-tuning runs recover far more with a decaying rate than with a
    constant one (the last epochs settle into a minimum instead of bouncing).
    Needs the total step count: :class:`~onnxopt.finetune.distill.Distiller`
    sets ``total_steps`` before ``on_train_start`` when the data has a length
    (a Dataset, a list, a DataLoader) or ``max_steps`` is given.
    """

    def __init__(self, *, warmup: float = 0.05, floor: float = 0.0):
        if not 0.0 <= warmup < 1.0:
            raise OnnxoptError(f"warm-up fraction must be in [0, 1), got {warmup}")
        if not 0.0 <= floor < 1.0:
            raise OnnxoptError(f"final learning-rate fraction must be in [0, 1), got {floor}")
        self.warmup, self.floor = float(warmup), float(floor)
        self.optimizer = None
        self.base: list[float] = []
        self.total = 0
        self.last_lr: float | None = None

    def on_train_start(self, trainer) -> None:
        total = getattr(trainer, "total_steps", None)
        if not total:
            raise OnnxoptError("a cosine learning-rate schedule needs the number of steps: give data with a "
                               "length (a Dataset, a list, a DataLoader) or max_steps")
        self.optimizer, self.total = trainer.optimizer, int(total)
        self.base = [g["lr"] for g in self.optimizer.param_groups]
        self._set(0)

    def factor(self, step: int) -> float:
        """The learning-rate multiplier before update ``step + 1`` (0-based ``step``)."""
        warm = int(self.warmup * self.total)
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.total - warm)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def _set(self, step: int) -> None:
        f = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * f
        self.last_lr = self.base[0] * f if self.base else None

    def on_step_end(self, step: int, losses: dict) -> None:
        if self.optimizer is not None:
            self._set(step)


#: learning-rate schedules by the names the CLI and recipes use
SCHEDULES = {"constant": None, "cosine": CosineLR}
