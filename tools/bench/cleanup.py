"""Benchmark onnxopt's cleanup pipeline against onnxslim on exported graphs.

For each model: node count before, after onnxopt's ``cleanup`` and after
``onnxslim.slim``; the time each takes (median of ``--runs``, loading the file
included for both, saving excluded); and the max absolute output difference of
each result vs the original in onnxruntime (optimizations off, batch 2, random
inputs). A missing onnxslim is reported as ``missing`` in its columns; a tool
that fails on a model gets ``error: ...`` in its cells - nothing is skipped.

    python tools/bench/cleanup.py --out bench-out [--models 'models/*.onnx' ...]

Writes ``OUT/cleanup.json`` and ``OUT/cleanup.md`` and prints the table.
Default models: tests/data/exported/*.onnx plus models/*.onnx if present.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tools.bench`` importable
    sys.path.insert(0, str(ROOT))

from onnxopt.data import input_specs, random_dataset  # noqa: E402
from onnxopt.ir import Model, load_model  # noqa: E402
from onnxopt.passes import create_pass  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from tools.bench.common import MISSING, environment, median_p90, peer_available, write_results  # noqa: E402

DEFAULT_GLOBS = (str(ROOT / "tests" / "data" / "exported" / "*.onnx"), str(ROOT / "models" / "*.onnx"))
COLUMNS = ("model", "nodes_before", "onnxopt_nodes", "onnxslim_nodes", "onnxopt_s", "onnxslim_s",
           "onnxopt_max_diff", "onnxslim_max_diff")
BATCH = 2


def model_files(patterns) -> list[Path]:
    """Files matching the globs, sorted, without duplicates."""
    seen: dict[Path, None] = {}
    for pattern in patterns:
        for f in sorted(glob.glob(pattern, recursive=True)):
            seen.setdefault(Path(f).resolve(), None)
    return list(seen)


def run_onnxopt(path: Path) -> onnx.ModelProto:
    model = load_model(path)
    return create_pass("cleanup")(model).model.to_onnx()


def run_onnxslim(path: Path) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(str(path))


def timed(fn: Callable[[Path], onnx.ModelProto], path: Path, runs: int) -> tuple[onnx.ModelProto, list[float]]:
    """The last result of ``runs`` calls and each call's wall time."""
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn(path)
        times.append(time.perf_counter() - t0)
    return result, times


def outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = make_session(proto, "cpu", threads=1, optimization="disable", spin=False)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def max_abs_diff(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    if len(ref) != len(got):
        raise ValueError(f"{len(got)} outputs instead of {len(ref)}")
    worst = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise ValueError(f"output shape {g.shape} instead of {r.shape}")
        if r.size:
            worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
    return worst


def short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {msg}"[:240]


def measure_tool(prefix: str, fn, path: Path, runs: int, ref, feeds) -> dict:
    """``{prefix}_nodes``, ``{prefix}_s`` (median), ``{prefix}_s_p90``, ``{prefix}_times``, ``{prefix}_max_diff``."""
    row: dict = {}
    try:
        result, times = timed(fn, path, runs)
    except Exception as exc:
        err = short_error(exc)
        return {f"{prefix}_nodes": err, f"{prefix}_s": err, f"{prefix}_max_diff": err}
    med, p90 = median_p90(times)
    row.update({f"{prefix}_nodes": len(result.graph.node), f"{prefix}_s": med, f"{prefix}_s_p90": p90,
                f"{prefix}_times": times})
    try:
        row[f"{prefix}_max_diff"] = max_abs_diff(ref, outputs(result, feeds))
    except Exception as exc:
        row[f"{prefix}_max_diff"] = short_error(exc)
    return row


def bench_model(path: Path, runs: int, have_slim: bool) -> dict:
    original = onnx.load(str(path))
    row: dict = {"model": path.name, "path": str(path), "nodes_before": len(original.graph.node)}
    feeds = random_dataset(input_specs(Model.from_onnx(original)), n=1, batch=BATCH, seed=0).arrays()
    ref = outputs(original, feeds)
    row.update(measure_tool("onnxopt", run_onnxopt, path, runs, ref, feeds))
    if have_slim:
        row.update(measure_tool("onnxslim", run_onnxslim, path, runs, ref, feeds))
    else:
        row.update({"onnxslim_nodes": MISSING, "onnxslim_s": MISSING, "onnxslim_max_diff": MISSING})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="onnxopt cleanup vs onnxslim: node counts, time, output drift")
    ap.add_argument("--out", type=Path, required=True, help="folder for cleanup.json and cleanup.md")
    ap.add_argument("--models", nargs="+", metavar="GLOB", default=list(DEFAULT_GLOBS),
                    help="model files or globs (default: tests/data/exported/*.onnx and models/*.onnx)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool and model; the median is reported")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    files = model_files(args.models)
    if not files:
        print(f"no model matches {' '.join(args.models)}", file=sys.stderr)
        return 2
    have_slim = peer_available("onnxslim")
    if not have_slim:
        print("onnxslim is not installed: its columns read 'missing' (pip install onnxslim)", file=sys.stderr)
    rows = []
    for f in files:
        print(f"{f.name} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(f, args.runs, have_slim))
    table = write_results(args.out, "cleanup", rows, COLUMNS,
                          meta={"runs": args.runs, "batch": BATCH, "environment": environment(["onnxslim"])})
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
