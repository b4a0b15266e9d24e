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
