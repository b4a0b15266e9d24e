"""``onnxopt bench MODEL [MODEL ...]``: latency and throughput in onnxruntime.

Several models are timed interleaved (see :mod:`onnxopt.runtime.timing`) and
reported as speed-ups relative to the first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxopt.cli.args import ModelArgs, ProviderArgs, ReportArgs, input_shape, positive_int
from onnxopt.cli.report import Printer, format_table, progress, write_json
from onnxopt.data import input_specs, random_dataset
from onnxopt.errors import DataError
from onnxopt.ir import load_model
from onnxopt.runtime.providers import parse_providers
from onnxopt.runtime.session import require_provider_installed
from onnxopt.runtime.timing import BenchTarget, TimingResult, time_interleaved


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="measure latency and throughput of one or more models",
        description="Measure median and p90 latency (ms) and throughput (samples/s) in onnxruntime on random "
                    "inputs. Several models are run interleaved, in round-robin blocks with one live session "
                    "at a time, and compared with the first.")
    ModelArgs.add(p, many=True)
    ProviderArgs.add(p)
    g = p.add_argument_group("timing")
    g.add_argument("--batch", type=positive_int, default=None, metavar="N",
                   help="batch size for a dynamic batch dim (default 1); a model with a fixed batch must match it")
    g.add_argument("--warmup", type=int, default=5, metavar="W",
                   help="untimed runs each time a session is created, before its timed runs (default 5)")
    g.add_argument("--runs", type=positive_int, default=50, metavar="R", help="timed runs per model (default 50)")
    g.add_argument("--block", type=positive_int, default=10, metavar="B",
                   help="timed runs per session when models are interleaved (default 10)")
    g.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME:DxD...",
                   help="full shape of an input with dynamic dims, e.g. x:8x3x224x224 (repeatable; overrides --batch)")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


def bench_target(path: Path, batch: int | None, shapes: dict[str, tuple[int, ...]]) -> BenchTarget:
    """A model file with random feeds of the requested batch (its fixed batch must agree)."""
    model = load_model(path)
    specs = input_specs(model)
    for s in specs:
        fixed = s.shape[0] if s.shape and isinstance(s.shape[0], int) and s.shape[0] >= 0 else None
        if batch is not None and fixed is not None and fixed != batch and s.name not in shapes:
            raise DataError(f"{path}: input {s.name!r} has a fixed batch of {fixed}; --batch {batch} does not fit")
    feeds = random_dataset(specs, 1, batch=batch or 1, shape_overrides=shapes).arrays()
    first = next(iter(feeds.values()), None)
    actual = int(first.shape[0]) if first is not None and first.ndim else 1
    return BenchTarget(str(path), path, feeds, actual)


def speedups(results: list[TimingResult]) -> list[float]:
    """Median-latency speed-up of each result relative to the first (per provider)."""
    base = {}
    out = []
    for r in results:
        base.setdefault(r.provider, r.median_ms)
        out.append(base[r.provider] / r.median_ms if r.median_ms > 0 else float("inf"))
    return out


def run(args) -> int:
    providers = parse_providers(args.providers)
    for info in providers:
        require_provider_installed(info.short)
    if args.warmup < 0:
        raise DataError("--warmup must be >= 0")
    shapes = dict(args.input_shape)
    targets = [bench_target(Path(p), args.batch, shapes) for p in args.models]
    results: list[TimingResult] = []
    with progress(len(targets) * len(providers) * args.runs, "bench", quiet=args.quiet, unit="run") as bar:
        for info in providers:
            results += time_interleaved(targets, provider=info.short, threads=args.threads, warmup=args.warmup,
                                        runs=args.runs, block=args.block, on_run=lambda _label: bar.update(1))
    ratios = speedups(results)
    if args.json is not None:
        write_json({"runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                    "results": [dict(vars(r), speedup=s) for r, s in zip(results, ratios)]}, args.json)
    out = Printer(quiet=args.quiet, json_dest=args.json)
    rows = [(r.label, r.provider, r.batch, f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:.1f}",
             f"{s:.2f}x") for r, s in zip(results, ratios)]
    out(format_table(["model", "provider", "batch", "median ms", "p90 ms", "samples/s", "speed-up"], rows))
    if len(targets) > 1:
        out(f"\nspeed-up = first model's median latency / this model's (same provider); "
            f"{args.runs} runs each, interleaved in blocks of {min(args.block, args.runs)}")
    return 0
