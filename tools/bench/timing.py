"""Latency timing for the benchmarks on a small shared machine: interleaved rounds, disturbance-checked.

:func:`onnxopt.runtime.timing.time_interleaved` already keeps one live
session at a time (fresh session per block, intra-op spinning off) and runs
the variants round-robin. What a benchmark on a 2-core machine shared with
other jobs adds here:

* :class:`CpuMeter` measures how much CPU *other* processes used while we
  timed: the machine-wide busy time from ``/proc/stat`` minus this process's
  own user+system time from ``/proc/self/stat`` (every thread, so
  onnxruntime's pool is counted as ours), and the hypervisor's steal time
  separately. No psutil needed.
* :func:`time_guarded` times in *rounds* (one block per variant, the order
  rotated each round so no variant always runs first) and repeats a round
  that others disturbed by more than ``threshold`` cores, up to
  ``max_repeats`` times, keeping the least disturbed attempt. Every attempt
  goes into the disturbance log, so a reader sees how quiet the machine was.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from onnxopt.runtime.timing import BenchTarget, TimingResult, time_interleaved

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """CPU counters at one instant (clock ticks summed over all CPUs)."""

    wall: float
    busy: int   # user+nice+system+irq+softirq over all CPUs (idle, iowait and steal excluded)
    steal: int  # time the hypervisor gave our virtual CPUs to someone else
    own: int    # this process's user+system time, all threads


def _read_proc_stat(path: Path = Path("/proc/stat")) -> tuple[int, int]:
    fields = path.read_text().splitlines()[0].split()
    if fields[0] != "cpu":
        raise ValueError(f"unexpected first line in {path}")
    v = [int(x) for x in fields[1:]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return user + nice + system + irq + softirq, steal


def _read_own_ticks(path: Path = Path("/proc/self/stat")) -> int:
    text = path.read_text()
    rest = text[text.rindex(")") + 2:].split()  # the command name may hold spaces; fields resume after ')'
    return int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15 of proc(5))


def cpu_sample() -> CpuSample | None:
    """The counters now, or None where ``/proc`` is not readable (not Linux)."""
    try:
        busy, steal = _read_proc_stat()
        own = _read_own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    return CpuSample(time.perf_counter(), busy, steal, own)


@dataclass
class Disturbance:
    """CPU use during an interval, in cores (1.0 = one core fully busy for the whole interval)."""

    wall_s: float
    others_cores: float
    steal_cores: float
    own_cores: float

    @property
    def total(self) -> float:
        """Cores taken from us by others: other processes plus hypervisor steal."""
        return self.others_cores + self.steal_cores


def disturbance_between(a: CpuSample, b: CpuSample) -> Disturbance:
    wall = max(b.wall - a.wall, 1e-9)
    to_cores = 1.0 / (_CLK_TCK * wall)
    own = max(b.own - a.own, 0)
    others = max((b.busy - a.busy) - own, 0)
    return Disturbance(wall, others * to_cores, max(b.steal - a.steal, 0) * to_cores, own * to_cores)


class CpuMeter:
    """``with CpuMeter() as m: ...`` then ``m.result`` (None where /proc is unreadable)."""

    def __enter__(self) -> "CpuMeter":
        self.result: Disturbance | None = None
        self._start = cpu_sample()
        return self

    def __exit__(self, *exc) -> None:
        end = cpu_sample()
        if self._start is not None and end is not None:
            self.result = disturbance_between(self._start, end)


@dataclass
class PhaseRecord:
    """One timed attempt of one round, for the disturbance log."""

    phase: str
    round: int
    attempt: int
    wall_s: float | None
    others_cores: float | None
    steal_cores: float | None
    own_cores: float | None
    disturbed: bool
    kept: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("wall_s", "others_cores", "steal_cores", "own_cores"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        return d


@dataclass
class GuardedTiming:
    """Per-target results plus every attempt of every round."""

    results: list[TimingResult]
    log: list[PhaseRecord] = field(default_factory=list)

    def disturbed_rounds(self) -> int:
        """Rounds whose kept attempt was still above the threshold."""
        return sum(1 for r in self.log if r.kept and r.disturbed)

    def worst_kept(self) -> float | None:
        vals = [r.others_cores + r.steal_cores for r in self.log if r.kept and r.others_cores is not None]
        return max(vals) if vals else None


def time_guarded(targets: Sequence[BenchTarget], *, phase: str, threads: int | None, runs: int, block: int,
                 warmup: int, threshold: float = 0.15, max_repeats: int = 2,
                 provider: str = "cpu") -> GuardedTiming:
    """Time ``targets`` in rounds of one ``block`` each; repeat a round others disturbed by > ``threshold`` cores.

    A round is repeated at most ``max_repeats`` times; the least disturbed
    attempt is kept. Where ``/proc`` is unreadable, nothing is repeated and
    the log says ``None``.
    """
    if runs < 1 or block < 1:
        raise ValueError("runs and block must be >= 1")
    n = len(targets)
    latencies_ms: list[list[float]] = [[] for _ in targets]
    log: list[PhaseRecord] = []
    done = 0
    round_no = 0
    while done < runs:
        size = min(block, runs - done)
        order = [(round_no + i) % n for i in range(n)]  # rotate who goes first
        best: tuple[float, list[TimingResult], PhaseRecord] | None = None
        for attempt in range(max_repeats + 1):
            with CpuMeter() as meter:
                got = time_interleaved([targets[i] for i in order], provider=provider, threads=threads,
                                       warmup=warmup, runs=size, block=size)
            d = meter.result
            disturbed = d is not None and d.total > threshold
            rec = PhaseRecord(phase, round_no, attempt, d and d.wall_s, d and d.others_cores, d and d.steal_cores,
                              d and d.own_cores, disturbed)
            log.append(rec)
            score = d.total if d is not None else 0.0
            if best is None or score < best[0]:
                best = (score, got, rec)
            if not disturbed:
                break
        _, got, rec = best
        rec.kept = True
        for pos, i in enumerate(order):
            latencies_ms[i] += got[pos].latencies_ms
        done += size
        round_no += 1
    results = [TimingResult.from_latencies(t.label, provider, t.batch, [ms / 1000.0 for ms in lat])
               for t, lat in zip(targets, latencies_ms)]
    return GuardedTiming(results, log)


def disturbance_summary(log: Sequence[dict], threshold: float) -> str:
    """One line about a benchmark's disturbance log (rows of :meth:`PhaseRecord.to_dict`)."""
    kept = [r for r in log if r["kept"]]
    if not kept:
        return "disturbance: nothing timed"
    if all(r["others_cores"] is None for r in kept):
        return "disturbance: not measured (/proc unreadable)"
    load = sorted((r["others_cores"] or 0.0) + (r["steal_cores"] or 0.0) for r in kept)
    return (f"disturbance: {len(kept)} timing rounds kept, {sum(r['disturbed'] for r in kept)} of them still above "
            f"{threshold} cores used by other processes (median {load[len(load) // 2]:.2f}, worst {load[-1]:.2f} "
            f"cores); {len(log) - len(kept)} disturbed attempts were repeated")


def machine_load() -> dict:
    """Load averages and a one-second sample of others' CPU use, recorded before a benchmark starts."""
    out: dict = {}
    try:
        out["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        out["loadavg"] = None
    with CpuMeter() as meter:
        time.sleep(1.0)
    out["others_cores_1s"] = round(meter.result.total, 3) if meter.result else None
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")) -> list[str]:
    """Which of the ISA flags that matter for INT8 kernels this CPU has."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []
