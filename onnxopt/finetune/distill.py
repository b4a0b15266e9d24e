"""Knowledge distillation: fine-tune an ONNX student towards a frozen teacher.

The student runs in the torch executor (:class:`GraphExecutor`); the teacher
runs frozen in onnxruntime (default) or in a second executor. The default loss
is the Hinton distillation loss on the first output (the logits, classes on
axis 1)::

    loss = T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + alpha * cross_entropy(student, labels)     # when the batch has labels
           + hint_weight * sum(MSE(student[t], teacher[t][:, kept]))  # feature hints

Feature hints compare named intermediate tensors; for a pruned tensor the
teacher's tensor is cut to the kept channels (axis 1) with the indices given
as ``{tensor_name: kept_indices}`` (what a pruning plan records).

A non-finite loss stops training and restores the last weights whose loss was
finite (``FinetuneResult.diverged`` and ``message`` say so). Exact zeros of the
starting weights stay zero (:class:`ZeroMasks`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F
from tqdm import tqdm

from onnxopt.data import Dataset, input_specs
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.finetune.batches import (
    BatchReader,
    ShuffledBatches,
    check_reiterable,
    count_batches,
    iterate,
    open_data,
)
from onnxopt.finetune.augment import AUGMENTATIONS
from onnxopt.finetune.callbacks import SCHEDULES
from onnxopt.finetune.executor import GraphExecutor
from onnxopt.finetune.writeback import BNReport, ZeroMasks, reestimate_bn, write_back
from onnxopt.ir.io import load_model
from onnxopt.ir.model import Model

#: optimizer names the CLI and ``optimizer=`` accept (or pass a torch optimizer class or factory)
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


# -- losses -------------------------------------------------------------------------------------------------


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the class distributions (axis 1) at ``temperature``, averaged over samples/positions."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean()


def distillation_terms(student_logits, teacher_logits, labels, *, temperature: float) -> dict[str, torch.Tensor]:
    """``kd`` (T^2-scaled KL) and, with labels, ``ce`` (cross-entropy on the hard labels)."""
    terms = {"kd": kl_to_teacher(student_logits, teacher_logits, temperature) * temperature ** 2}
    if labels is not None:
        if student_logits.dim() != 2:
            raise DataError(f"labels are one class per sample but the output has shape {list(student_logits.shape)}; "
                            "cross-entropy needs [batch, classes]")
        classes = student_logits.shape[1]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise DataError(f"labels must be class indices in [0, {classes - 1}], got {int(labels.min())}..{int(labels.max())}")
        terms["ce"] = F.cross_entropy(student_logits, labels)
    return terms


def distillation_loss(student_logits, teacher_logits, labels=None, *, temperature: float = 4.0,
                      alpha: float = 0.5) -> torch.Tensor:
    """The default loss without hints: T^2 * KL on softened logits + alpha * cross-entropy when labels are given."""
    terms = distillation_terms(student_logits, teacher_logits, labels, temperature=temperature)
    return terms["kd"] + alpha * terms["ce"] if "ce" in terms else terms["kd"]


def normalize_hints(hints) -> dict[str, list[int] | None]:
    """``hints`` as {tensor: kept channel indices or None}: from names, a mapping, or (name, kept) pairs."""
    if hints is None:
        return {}
    if isinstance(hints, str):
        return {hints: None}
    if isinstance(hints, Mapping):
        items = hints.items()
    else:
        items = [(h, None) if isinstance(h, str) else tuple(h) for h in hints]
    out: dict[str, list[int] | None] = {}
    for name, kept in items:
        out[str(name)] = None if kept is None else [int(i) for i in np.asarray(kept).reshape(-1)]
    return out


# -- teachers -----------------------------------------------------------------------------------------------


class OrtTeacher:
    """The teacher in onnxruntime, with hint tensors added as extra graph outputs of a private copy."""

    def __init__(self, model: Model, extra_outputs: list[str], threads: int | None):
        from onnxopt.runtime import make_session

        m = model.copy() if extra_outputs else model
        if extra_outputs:
            tensors = m.tensors()
            for name in extra_outputs:
                t = tensors[name]
                if t.dtype is None:
                    t.dtype = np.float32
                if not any(o is t for o in m.graph.outputs):
                    m.graph.outputs.append(t)
        # no spinning: torch runs between teacher calls and idle spinning ORT threads would slow it down
        self.session = make_session(m, threads=threads, spin=False)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {n: feeds[n].detach().cpu().numpy() for n in self.input_names}
        try:
            outs = self.session.run(self.output_names, arrays)
        except Exception as exc:
            raise OnnxoptError(f"the teacher failed in onnxruntime: {str(exc).strip().splitlines()[0]}") from exc
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs)}


class TorchTeacher:
    """The teacher in the torch executor, frozen (no gradients)."""

    def __init__(self, model: Model, extra_outputs: list[str]):
        self.executor = GraphExecutor(model).eval().requires_grad_(False)
        self.input_names = self.executor.input_names
        self.extra = list(extra_outputs)

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.executor(**{n: feeds[n] for n in self.input_names}, extra_outputs=self.extra)


TEACHER_RUNTIMES = ("onnxruntime", "torch")


def check_teacher_matches(student: Model, teacher: Model) -> None:
    """The teacher must have the student's outputs (same names, compatible static shapes) and inputs."""
    s_out = [(t.name, t.shape) for t in student.graph.outputs]
    t_out = [(t.name, t.shape) for t in teacher.graph.outputs]
    if [n for n, _ in s_out] != [n for n, _ in t_out]:
        raise OnnxoptError(f"the teacher's outputs ({', '.join(n for n, _ in t_out)}) do not match the student's "
                           f"({', '.join(n for n, _ in s_out)}); distillation compares outputs by name")
    for (name, ss), (_, ts) in zip(s_out, t_out):
        if ss is None or ts is None:
            continue
        if len(ss) != len(ts) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(ss, ts)):
            raise OnnxoptError(f"output {name!r} has shape {list(ss)} in the student but {list(ts)} in the teacher")
    s_in = {t.name for t in student.graph.inputs}
    missing = [t.name for t in teacher.graph.inputs if t.name not in s_in and not isinstance(t, gs.Constant)]
    if missing:
        raise OnnxoptError(f"the teacher reads input(s) {', '.join(missing)} that the student does not have")


# -- the loop -----------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced: the student with trained weights written back, and how it went."""

    model: Model
    steps: int
    epochs: int                      # epochs started
    losses: list[float]              # training loss per step
    history: list[dict]              # per-epoch metrics (train_loss, eval_*)
    eval_before: dict | None = None  # metrics on eval_data before training
    eval_after: dict | None = None
    stopped_early: bool = False
    stop_reason: str | None = None
    diverged: bool = False           # the loss became NaN/Inf; the model holds the last good weights
    message: str = ""
    masked_zeros: int = 0            # weight elements held at zero
    bn: BNReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Everything but the model, as plain values (for JSON reports)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "bn")}
        d["bn"] = asdict(self.bn) if self.bn is not None else None
        return d


def _as_model(m, what: str) -> Model:
    if isinstance(m, Model):
        return m
    if isinstance(m, (str, Path, bytes)):
        return load_model(m)
    raise OnnxoptError(f"{what} must be a Model or a path, not {type(m).__name__}")


def _make_optimizer(optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    if optimizer is None:
        optimizer = "adam"
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise OnnxoptError(f"unknown optimizer {optimizer!r}; choose {', '.join(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer](params, lr)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        raise OnnxoptError("pass an optimizer class or a factory params -> optimizer, not an optimizer instance "
                           "(its parameters cannot be the student's, which exist only inside finetune)")
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise OnnxoptError(f"the optimizer factory returned {type(opt).__name__}, not a torch optimizer")
        return opt
    raise OnnxoptError(f"optimizer must be a name, an optimizer class or a factory, not {type(optimizer).__name__}")


def _fire(callbacks, hook: str, *args) -> object | None:
    """Call ``hook`` on every callback that has it; the first that asks to stop is returned."""
    stopper = None
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is None:
            continue
        if fn(*args) is True or getattr(cb, "stop_training", False):
            stopper = stopper or cb
    return stopper


class Distiller:
    """One fine-tuning run (built by :func:`finetune`); callbacks receive it in ``on_train_start``."""

    def __init__(self, student: Model, teacher: Model, *, lr: float, optimizer, loss, temperature: float,
                 alpha: float, hints, hint_weight: float, teacher_runtime: str, learn_scales: bool, keep_zeros: bool,
                 threads: int | None):
        if temperature <= 0:
            raise OnnxoptError(f"temperature must be > 0, got {temperature}")
        if not (lr > 0):
            raise OnnxoptError(f"learning rate must be > 0, got {lr}")
        if teacher_runtime not in TEACHER_RUNTIMES:
            raise OnnxoptError(f"teacher runtime must be one of {', '.join(TEACHER_RUNTIMES)}, not {teacher_runtime!r}")
        check_teacher_matches(student, teacher)
        self.student, self.teacher_model = student, teacher
        self.temperature, self.alpha, self.hint_weight = float(temperature), float(alpha), float(hint_weight)
        self.custom_loss = loss
        self.executor = GraphExecutor(student, learn_scales=learn_scales)
        self.hints = normalize_hints(hints)
        self._check_hints()
        hint_names = list(self.hints)
        self.teacher = (OrtTeacher(teacher, hint_names, threads) if teacher_runtime == "onnxruntime"
                        else TorchTeacher(teacher, hint_names))
        if len(self.teacher.input_names) == 0:
            raise OnnxoptError("the teacher has no inputs")
        self.params = [p for p in self.executor.parameters() if p.requires_grad]
        if not self.params:
            raise OnnxoptError("the student has no trainable weights (no float or quantized initializers in weight slots)")
        self.optimizer = _make_optimizer(optimizer, self.params, lr)
        self.masks = ZeroMasks(self.executor) if keep_zeros else None
        self.specs = input_specs(student)
        self.reader = BatchReader(self.specs, "training data")
        self.protected_paths = [p for p in (student.source, teacher.source) if p is not None]
        self.epoch = 0
        self.step = 0
        self.total_steps: int | None = None
        self._shapes_checked = False

    def _check_hints(self) -> None:
        s_names, t_names = self.executor.tensor_names(), set(self.teacher_model.tensors())
        for name, kept in self.hints.items():
            if name not in s_names:
                raise OnnxoptError(f"hint tensor {name!r} is not in the student")
            if name not in t_names:
                raise OnnxoptError(f"hint tensor {name!r} is not in the teacher")
            if kept is not None and (not kept or min(kept) < 0):
                raise OnnxoptError(f"hint tensor {name!r}: kept channel indices must be non-negative and not empty")

    # -- pieces --------------------------------------------------------------------------------------------
    def current_model(self) -> Model:
        """The student with the current weights written back (a copy)."""
        return write_back(self.executor)

    def forward(self, batch, reader: BatchReader | None = None):
        """(student outputs, teacher outputs, feeds, labels) for one batch."""
        feeds, labels = (reader or self.reader)(batch)
        teacher_out = self.teacher({n: feeds[n] for n in self.teacher.input_names})
        student_out = self.executor(**feeds, extra_outputs=list(self.hints))
        if not self._shapes_checked:
            for name in self.executor.output_names:
                if tuple(student_out[name].shape) != tuple(teacher_out[name].shape):
                    raise OnnxoptError(f"output {name!r}: the student gives shape {list(student_out[name].shape)}, "
                                       f"the teacher {list(teacher_out[name].shape)}")
            self._shapes_checked = True
        return student_out, teacher_out, feeds, labels

    def loss_terms(self, student_out, teacher_out, labels) -> dict[str, torch.Tensor]:
        first = self.executor.output_names[0]
        terms = distillation_terms(student_out[first], teacher_out[first].to(student_out[first].dtype), labels,
                                   temperature=self.temperature)
        if self.hints:
            hint = 0.0
            for name, kept in self.hints.items():
                s, t = student_out[name], teacher_out[name].to(student_out[name].dtype)
                if kept is not None:
                    if t.dim() < 2 or max(kept) >= t.shape[1]:
                        raise OnnxoptError(f"hint tensor {name!r}: kept channel {max(kept)} is out of range for the "
                                           f"teacher's shape {list(t.shape)}")
                    t = t.index_select(1, torch.tensor(kept, dtype=torch.long, device=t.device))
                if s.shape != t.shape:
                    raise OnnxoptError(f"hint tensor {name!r}: the student's shape {list(s.shape)} differs from the "
                                       f"teacher's {list(t.shape)}" + ("" if kept is not None else
                                                                      " (give its kept channel indices for a pruned tensor)"))
                hint = hint + F.mse_loss(s, t)
            terms["hint"] = hint
        return terms

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = terms["kd"]
        if "ce" in terms:
            total = total + self.alpha * terms["ce"]
        if "hint" in terms:
            total = total + self.hint_weight * terms["hint"]
        return total

    def evaluate(self, data, batch_size: int) -> dict[str, float]:
        """eval_loss (default loss), eval_kl (KL to the teacher at T=1) and eval_top1 (with labels) over ``data``."""
        reader = BatchReader(self.specs, "eval data")
        sums = {"loss": 0.0, "kl": 0.0}
        n = correct = labelled = 0
        first = self.executor.output_names[0]
        with torch.no_grad():
            for batch in iterate(data, batch_size):
                s_out, t_out, _feeds, labels = self.forward(batch, reader)
                bs = int(s_out[first].shape[0])
                terms = self.loss_terms(s_out, t_out, labels)
                sums["loss"] += float(self.combine(terms)) * bs
                sums["kl"] += float(kl_to_teacher(s_out[first], t_out[first].to(s_out[first].dtype))) * bs
                if labels is not None:
                    correct += int((s_out[first].argmax(dim=1) == labels).sum())
                    labelled += bs
                n += bs
        if n == 0:
            raise DataError("eval data holds no samples")
        metrics = {"eval_loss": sums["loss"] / n, "eval_kl": sums["kl"] / n, "eval_samples": n}
        if labelled:
            metrics["eval_top1"] = 100.0 * correct / labelled
        return metrics

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, data, *, epochs: int, batch_size: int, callbacks=(), eval_data=None, progress: bool | None = None,
            max_steps: int | None = None) -> FinetuneResult:
        if epochs < 1:
            raise OnnxoptError(f"epochs must be >= 1, got {epochs}")
        data = open_data(data, self.student, "training data")
        check_reiterable(data, epochs, "training data")
        if eval_data is not None:
            eval_data = open_data(eval_data, self.student, "eval data")
            check_reiterable(eval_data, epochs + 1, "eval data")
        callbacks = list(callbacks)
        per_epoch = count_batches(data, batch_size)
        total = per_epoch * epochs if per_epoch is not None else None
        if max_steps is not None:
            total = min(total, max_steps) if total is not None else max_steps
        show = sys.stderr.isatty() if progress is None else bool(progress)
        bar = tqdm(total=total, disable=not show, unit="step", desc="finetune", leave=False)
        snapshot = [p.detach().clone() for p in self.params]
        losses: list[float] = []
        history: list[dict] = []
        result = FinetuneResult(model=self.student, steps=0, epochs=0, losses=losses, history=history,
                                notes=list(self.executor.notes))
        if self.masks is not None:
            result.masked_zeros = self.masks.zeros
        self.total_steps = total
        if eval_data is not None:
            result.eval_before = self.evaluate(eval_data, batch_size)
        _fire(callbacks, "on_train_start", self)
        stopper = None
        started = time.perf_counter()
        try:
            for epoch in range(1, epochs + 1):
                self.epoch = epoch
                result.epochs = epoch
                stopper = _fire(callbacks, "on_epoch_start", epoch)
                epoch_sum = epoch_n = 0
                for batch in iterate(data, batch_size):
                    s_out, t_out, feeds, labels = self.forward(batch)
                    terms = self.loss_terms(s_out, t_out, labels)
                    total_loss = self.combine(terms)
                    if self.custom_loss is not None:
                        total_loss = self.custom_loss(s_out, t_out, {**feeds, "labels": labels}, total_loss)
                    value = (float(total_loss.detach()) if isinstance(total_loss, torch.Tensor)
                             else float(total_loss) if isinstance(total_loss, (float, int)) else math.nan)
                    if not math.isfinite(value):
                        self._restore(snapshot)
                        result.diverged = True
                        done = max(self.step - 1, 0)
                        kept = f"the weights after {done} update(s)" if done else "the starting weights"
                        shown = "NaN" if math.isnan(value) else str(value)
                        result.message = (f"the loss became {shown} at step {self.step + 1} (epoch {epoch}); training "
                                          f"stopped and the model keeps {kept}, the last with a finite loss")
                        stopper = None
                        break
                    if not isinstance(total_loss, torch.Tensor) or not total_loss.requires_grad:
                        raise OnnxoptError("the loss must be a torch tensor computed from the student outputs")
                    for s, p in zip(snapshot, self.params):
                        s.copy_(p.detach())
                    self.optimizer.zero_grad(set_to_none=True)
                    total_loss.backward()
                    self.optimizer.step()
                    if self.masks is not None:
                        self.masks.apply()
                    self.step += 1
                    losses.append(value)
                    epoch_sum += value
                    epoch_n += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}", epoch=epoch)
                    step_losses = {"loss": value, **{k: float(v.detach()) for k, v in terms.items()}}
                    stopper = _fire(callbacks, "on_step_end", self.step, step_losses) or stopper
                    if stopper is not None or (max_steps is not None and self.step >= max_steps):
                        break
                if result.diverged:
                    break
                metrics: dict = {"epoch": epoch, "train_loss": epoch_sum / epoch_n if epoch_n else None,
                                 "steps": epoch_n}
                if eval_data is not None:
                    metrics.update(self.evaluate(eval_data, batch_size))
                    stopper = _fire(callbacks, "on_eval", metrics) or stopper
                history.append(metrics)
                stopper = _fire(callbacks, "on_epoch_end", epoch, metrics) or stopper
                if stopper is not None or (max_steps is not None and self.step >= max_steps):
                    break
        finally:
            bar.close()
        result.steps = self.step
        if stopper is not None:
            result.stopped_early = True
            result.stop_reason = f"{type(stopper).__name__} asked to stop at epoch {self.epoch}, step {self.step}"
        if eval_data is not None:
            result.eval_after = history[-1] if history and "eval_loss" in history[-1] and not result.diverged \
                else self.evaluate(eval_data, batch_size)
        if not result.message:
            result.message = (f"{self.step} steps in {result.epochs} epoch(s), {time.perf_counter() - started:.1f} s"
                              + (f"; {result.stop_reason}" if result.stop_reason else ""))
        _fire(callbacks, "on_train_end", self)
        return result

    def _restore(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, p in zip(snapshot, self.params):
                p.copy_(s)


def _resolve_named(value, table: dict, what: str):
    """A hook given by name (built with its defaults), as an object, or None."""
    if value is None or not isinstance(value, str):
        return value
    key = value.strip().lower()
    if key not in table:
        raise OnnxoptError(f"unknown {what} {value!r}; choose {', '.join(table)}")
    factory = table[key]
    return factory() if factory is not None else None


def use_threads(n: int) -> None:
    """Set torch's CPU threads for this process (the CLI's ``--threads``; a library caller decides its own)."""
    torch.set_num_threads(int(n))


def finetune(student, teacher, data, *, epochs: int = 1, lr: float = 1e-4, optimizer=None,
             loss: Callable | None = None, callbacks: Iterable = (), temperature: float = 4.0, alpha: float = 0.5,
             hints=(), hint_weight: float = 1.0, eval_data=None, batch_size: int = 64,
             teacher_runtime: str = "onnxruntime", learn_scales: bool = False, keep_zeros: bool = True,
             reestimate_bn_batches: int = 0, max_steps: int | None = None, progress: bool | None = None,
             threads: int | None = None, shuffle: bool = True, augment=None, schedule=None,
             seed: int = 0) -> FinetuneResult:
    """Distill ``teacher`` into ``student`` on ``data``; the result holds the student with trained weights.

    ``student``/``teacher``: :class:`Model` s or paths (never modified).
    ``data``/``eval_data``: a :class:`~onnxopt.data.Dataset`, a data path, or
    any re-iterable of dict batches (a torch DataLoader, a list).
    ``optimizer``: None (Adam), a name in :data:`OPTIMIZERS`, a torch optimizer
    class (built with ``lr``), or a factory ``params -> optimizer``.
    ``loss``: ``loss(student_outputs, teacher_outputs, batch, default_loss) ->
    tensor``; return ``default_loss + extra`` to extend the default, anything
    else to replace it. ``hints``: tensor names, or ``{name: kept_indices}``
    for pruned tensors. ``reestimate_bn_batches``: after training, recompute
    BatchNorm statistics over that many training batches.
    ``shuffle``: a :class:`~onnxopt.data.Dataset` (or data path) is read into
    memory and served in a new seeded order every epoch
    (:class:`~onnxopt.finetune.batches.ShuffledBatches`); other iterables are
    used as given. ``augment``: a per-batch hook ``(batch, rng) -> batch``
    (e.g. :class:`~onnxopt.finetune.augment.RandomShiftFlip`) or a name in
    :data:`~onnxopt.finetune.augment.AUGMENTATIONS`; needs ``shuffle``.
    ``schedule``: None/"constant", "cosine" (:class:`CosineLR`), or a callback.
    """
    student_m = _as_model(student, "student")
    teacher_m = _as_model(teacher, "teacher")
    augment = _resolve_named(augment, AUGMENTATIONS, "augmentation")
    if augment is not None and not shuffle:
        raise OnnxoptError("data augmentation needs shuffle=True (it runs on the shuffled in-memory batches)")
    if shuffle:
        opened = open_data(data, student_m, "training data")
        if isinstance(opened, Dataset):
            data = ShuffledBatches.from_dataset(opened, batch_size, seed=seed, transform=augment)
        elif augment is not None:
            raise OnnxoptError("data augmentation works on a Dataset or data path; augment your own iterable "
                               "in its own pipeline")
    schedule = _resolve_named(schedule, SCHEDULES, "learning-rate schedule")
    if schedule is not None:
        callbacks = [schedule, *callbacks]
    distiller = Distiller(student_m, teacher_m, lr=lr, optimizer=optimizer, loss=loss, temperature=temperature,
                          alpha=alpha, hints=hints, hint_weight=hint_weight, teacher_runtime=teacher_runtime,
                          learn_scales=learn_scales, keep_zeros=keep_zeros, threads=threads)
    result = distiller.fit(data, epochs=epochs, batch_size=batch_size, callbacks=callbacks, eval_data=eval_data,
                           progress=progress, max_steps=max_steps)
    if reestimate_bn_batches and not result.diverged:
        result.bn = reestimate_bn(distiller.executor, open_data(data, student_m), reestimate_bn_batches,
                                  batch_size=batch_size)
        if eval_data is not None and result.bn.updated:
            result.eval_after = distiller.evaluate(open_data(eval_data, student_m), batch_size)
    result.model = distiller.current_model()
    return result
