"""Latency timing in onnxruntime, fair across several models.

Timing two models one after the other favours whichever ran while the machine
was quieter (thermal state, other jobs, frequency scaling). So models are run
*interleaved*: round-robin blocks of runs, A B A B ..., each block in a fresh
session with intra-op spinning off, and only one session alive at a time (an
idle session whose threads spin would otherwise steal cores from the timed
one). Each fresh session gets ``warmup`` untimed runs before its block.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from onnxopt.runtime.session import make_session


@dataclass
class BenchTarget:
    """One model to time: anything :func:`make_session` accepts, with its input feeds."""

    label: str
    model: Any
    feeds: dict[str, np.ndarray]
    batch: int


@dataclass
class TimingResult:
    """Latency statistics of one model on one provider (milliseconds; throughput in samples/s)."""

    label: str
    provider: str
    batch: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # batch / median latency
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_latencies(cls, label: str, provider: str, batch: int, seconds: Sequence[float]) -> "TimingResult":
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        median = float(np.median(ms))
        return cls(label, provider, batch, len(ms), median, float(np.percentile(ms, 90)), float(ms.mean()),
                   float(ms.min()), batch * 1000.0 / median if median > 0 else float("inf"),
                   [round(float(x), 6) for x in ms])


def time_runs(sess, feeds: dict[str, np.ndarray], runs: int, warmup: int = 0,
              on_run: Callable[[], None] | None = None) -> list[float]:
    """Seconds per ``sess.run`` for ``runs`` timed runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        sess.run(None, feeds)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        out.append(time.perf_counter() - t0)
        if on_run:
            on_run()
    return out


def time_interleaved(targets: Sequence[BenchTarget], *, provider: str = "cpu", threads: int | None = None,
                     warmup: int = 5, runs: int = 50, block: int = 10,
                     on_run: Callable[[str], None] | None = None) -> list[TimingResult]:
    """Time every target ``runs`` times in round-robin blocks of ``block`` runs (see module docs).

    A single target is timed in one block (one session, ``warmup`` runs once).
    ``on_run(label)`` is called after each timed run (for progress bars).
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    block = runs if len(targets) == 1 else max(1, min(block, runs))
    latencies: list[list[float]] = [[] for _ in targets]
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for i, target in enumerate(targets):
            sess = make_session(target.model, provider, threads=threads, spin=False)
            tick = (lambda label=target.label: on_run(label)) if on_run else None
            latencies[i] += time_runs(sess, target.feeds, n, warmup, tick)
            del sess
            gc.collect()  # free the session (and its threads) before the next one starts
        done += n
    return [TimingResult.from_latencies(t.label, provider, t.batch, lat) for t, lat in zip(targets, latencies)]
