"""Per-stage numbers for the report: accuracy, latency, MACs, parameters, file size.

Every stage is saved as a real ONNX file first, so the file size is what a
user would deploy and the sessions load exactly that file. Latency uses
:func:`~onnxopt.runtime.timing.time_interleaved`: the stages are timed
round-robin in fresh sessions with a fixed thread count, so no stage is
favoured by running while the machine happened to be quieter.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxopt.analysis.summary import compute_macs, model_file_bytes, parameter_stats
from onnxopt.data import Dataset, input_specs
from onnxopt.ir.io import save_model
from onnxopt.pipeline.context import Stage
from onnxopt.runtime.compare import fixed_batch
from onnxopt.runtime.evaluate import evaluate
from onnxopt.runtime.session import make_session
from onnxopt.runtime.timing import BenchTarget, time_interleaved


@dataclass
class Latency:
    """CPU latency of one stage at one batch size (milliseconds per run)."""

    batch: int
    median_ms: float
    p90_ms: float
    runs: int

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch


@dataclass
class StageMeasurement:
    stage: str
    top1: float | None          # percent on the eval data; None without labels
    eval_samples: int
    macs: int                   # per sample for a dynamic batch
    params: int
    file_bytes: int
    nodes: int
    latency: list[Latency] = field(default_factory=list)
    path: str | None = None     # the stage's model file, when kept

    def latency_at(self, batch: int) -> Latency | None:
        return next((lat for lat in self.latency if lat.batch == batch), None)


@dataclass(frozen=True)
class MeasureSettings:
    """How hard to measure (the report step's options)."""

    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 64)
    runs: int = 20
    warmup: int = 3
    eval_batch: int = 64
    eval_limit: int | None = None


def stage_file_name(index: int, stage: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stage)
    return f"{index:02d}-{safe}.onnx"


def save_stages(stages: Sequence[Stage], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [save_model(s.model, folder / stage_file_name(i, s.name)) for i, s in enumerate(stages)]


def timing_inputs(dataset: Dataset, batch: int) -> dict[str, np.ndarray]:
    """``batch`` real samples (repeated when the data holds fewer) as input feeds."""
    arrays = dataset.arrays(limit=batch)
    out = {}
    for spec in dataset.specs:
        a = arrays[spec.name]
        reps = -(-batch // len(a))
        out[spec.name] = np.ascontiguousarray(np.concatenate([a] * reps)[:batch]) if reps > 1 else a[:batch]
    return out


def top1_of(path: Path, dataset: Dataset, settings: MeasureSettings) -> tuple[float | None, int]:
    from onnxopt.ir.io import load_model

    size = fixed_batch(input_specs(load_model(path)))
    limit = settings.eval_limit
    if size is not None:  # a fixed-batch model runs whole batches only
        n = min(len(dataset), limit) if limit else len(dataset)
        limit = n - n % size
        if limit == 0:
            return None, 0
    sess = make_session(path, threads=settings.threads)
    res = evaluate(sess, dataset, batch_size=size or settings.eval_batch, limit=limit)
    return res.top1, res.samples


@contextmanager
def frozen_heap():
    """Leave the objects that exist now out of garbage collection while timing.

    The timer collects garbage between sessions so one session's threads are
    gone before the next starts; with torch loaded (a distill step ran) a
    full collection walks millions of objects, a quarter second each time.
    Freezing the existing heap keeps each collection to the new objects (the
    sessions); the heap is unfrozen afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def measure_latency(paths: Sequence[Path], labels: Sequence[str], dataset: Dataset,
                    settings: MeasureSettings) -> list[list[Latency]]:
    """Per stage, the latency at each batch size it can run (a fixed-batch model only its own)."""
    from onnxopt.ir.io import load_model

    fixed = [fixed_batch(input_specs(load_model(p))) for p in paths]
    result: list[list[Latency]] = [[] for _ in paths]
    for batch in settings.batch_sizes:
        feeds = timing_inputs(dataset, batch)
        chosen = [i for i, f in enumerate(fixed) if f is None or f == batch]
        if not chosen:
            continue
        targets = [BenchTarget(labels[i], paths[i], feeds, batch) for i in chosen]
        with frozen_heap():
            timings = time_interleaved(targets, provider="cpu", threads=settings.threads, warmup=settings.warmup,
                                       runs=settings.runs, block=max(1, settings.runs // 2))
        for i, t in zip(chosen, timings):
            result[i].append(Latency(batch, t.median_ms, t.p90_ms, t.runs))
    return result


def measure_stages(stages: Sequence[Stage], dataset: Dataset, folder: Path,
                   settings: MeasureSettings = MeasureSettings()) -> list[StageMeasurement]:
    """Save every stage under ``folder`` and measure it (see module docs)."""
    paths = save_stages(stages, folder)
    out = []
    for stage, path in zip(stages, paths):
        top1, samples = top1_of(path, dataset, settings)
        out.append(StageMeasurement(stage=stage.name, top1=top1, eval_samples=samples,
                                    macs=compute_macs(stage.model).total, params=parameter_stats(stage.model)[0],
                                    file_bytes=model_file_bytes(path), nodes=len(stage.model.graph.nodes),
                                    path=str(path)))
    for m, lat in zip(out, measure_latency(paths, [s.name for s in stages], dataset, settings)):
        m.latency = lat
    return out
