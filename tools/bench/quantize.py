"""INT8 quantization side by side: onnxruntime's quantize_static vs onnxopt's quantizer, against FP32.

For each model: the FP32 original; ``onnxruntime.quantization.quantize_static``
(QDQ, per-channel int8 weights, uint8 activations, ``reduce_range`` where the
CPU lacks VNNI - the settings onnxopt picks for this host too) with MinMax,
Percentile and Entropy calibration, each once on the model as given and once
after ``quant_pre_process`` (what onnxruntime's docs ask for first); and
onnxopt's quantizer with each of its methods. All get the same calibration
images. Columns: top-1 on the eval set and the drop vs FP32 (points), latency
at batch 1 and 64 on the CPU provider (median and p90 ms, and the ratio to
FP32), file size, the quantizer's wall time (quant_pre_process and
quantize_static apart and together; calibration included) and its peak RSS,
and how many Conv/Gemm/MatMul onnxruntime runs as integer vs float kernels.

Each quantizer runs in its own subprocess (``--worker``), so its wall time
and peak RSS are its own. A quantizer that cannot be imported gets
``missing: <reason>`` in its cells, one that fails ``error: <reason>``;
nothing is skipped silently.

Latency: see :mod:`tools.bench.timing` - one live session at a time,
variants interleaved in rounds, a round repeated (up to ``--max-repeats``)
when other processes used more than ``--disturbance`` cores meanwhile; the
disturbance log goes into the JSON.

    python tools/bench/quantize.py --out bench-out [--models models/resnet.onnx ...]
        [--eval-data full|sample|random] [--calib 512] [--runs 40] [--quick]

Writes OUT/quantize.json, OUT/quantize.md, OUT/quantize.png (top-1 vs batch-64
latency) and the quantized models under OUT/quantize-models/; prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tools.bench`` importable
    sys.path.insert(0, str(ROOT))

from tools.bench.common import (  # noqa: E402
    EVAL_CHOICES,
    MISSING,
    BenchData,
    DataChoice,
    Panel,
    Series,
    append_notes,
    default_models,
    environment,
    load_bench_data,
    quick_model,
    save_plot,
    write_results,
)
from tools.bench.timing import (  # noqa: E402
    cpu_flags,
    cpu_model,
    disturbance_summary,
    machine_load,
    time_guarded,
)

ORT_METHODS = ("minmax", "percentile", "entropy")
ONNXOPT_METHODS = ("minmax", "percentile", "entropy", "mse")
#: onnxopt variant suffixes (``percentile+bc+budget``): bias correction (sequential / one-shot), cross-layer
#: equalization, and the accuracy budget (``--budget-drop`` points on a validation split of the train set)
ONNXOPT_EXTRAS = ("bc", "bc1", "cle", "budget")
FAMILIES = ("ort", "onnxopt")
BATCHES = (1, 64)
HEAD_COLUMNS = ("model", "variant", "top1", "drop_pts")
TAIL_COLUMNS = ("size_kb", "pre_s", "quant_s", "total_s", "peak_rss_mb", "int_kernels", "float_kernels")


def columns_for(batches) -> list[str]:
    """The markdown columns: latency median, p90 and ratio to FP32 per batch size."""
    timed = [f"b{b}_{s}" for b in batches for s in ("ms", "p90", "vs_fp32")]
    return [*HEAD_COLUMNS, *timed, *TAIL_COLUMNS]


#: ``quantize_static`` calibration method names
ORT_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
CALIB_BATCH = 16


# -- the variants ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One column of the comparison: FP32, an onnxruntime setting or an onnxopt method."""

    family: str            # "fp32", "ort" or "onnxopt"
    method: str | None = None
    preprocess: bool = False

    @property
    def label(self) -> str:
        if self.family == "fp32":
            return "fp32"
        return f"{self.family}-{self.method}" + ("+pre" if self.preprocess else "")


def variants_for(families, ort_methods, onnxopt_methods) -> list[Variant]:
    out = [Variant("fp32")]
    if "ort" in families:
        out += [Variant("ort", m, pre) for m in ort_methods for pre in (False, True)]
    if "onnxopt" in families:
        out += [Variant("onnxopt", m) for m in onnxopt_methods]
    return out


def host_reduce_range() -> bool:
    """7-bit weights when the CPU lacks VNNI (AVX2's u8*s8 multiply-add saturates int16), as onnxopt decides."""
    return not any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def peer_problem(module: str, names: tuple[str, ...]) -> str | None:
    """None if ``module`` imports and has ``names``; else why not (the ``missing: ...`` reason)."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # an ImportError, or a half-written module that raises on import
        return f"{module} does not import ({type(exc).__name__}: {_first_line(exc)})"
    lacking = [n for n in names if not hasattr(mod, n)]
    return f"{module} has no {', '.join(lacking)}" if lacking else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# -- the worker: one quantizer run in its own process ------------------------------------------------
@dataclass
class WorkerSpec:
    family: str
    method: str
    preprocess: bool
    model: str
    output: str
    calib: str            # npz keyed by the model's input name
    reduce_range: bool
    module: str           # onnxopt's quantizer module (for --onnxopt-module)
    validation: str | None = None  # labelled npz for the ``budget`` extra (train images, not the eval set)
    max_drop: float = 0.1


@dataclass
class WorkerResult:
    pre_s: float | None = None
    quant_s: float | None = None
    total_s: float | None = None
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    missing: str | None = None
    error: str | None = None


def _rss_mb(field_name: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB.

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``execve``, so a
    worker would report the (larger) peak of the benchmark process that
    spawned it. ``VmHWM`` belongs to the address space that exec replaced.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def calibration_batches(arrays: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]


def run_ort(spec: WorkerSpec, res: WorkerResult) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration images, ``CALIB_BATCH`` at a time."""

        def __init__(self, batches):
            self.batches = batches
            self.rewind()

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(self.batches)

    with np.load(spec.calib) as z:
        reader = Reader(calibration_batches({k: z[k] for k in z.files}, CALIB_BATCH))
    with tempfile.TemporaryDirectory(prefix="bench-ortq-") as tmp:
        source = spec.model
        t0 = time.perf_counter()
        if spec.preprocess:
            source = str(Path(tmp) / "pre.onnx")
            quant_pre_process(spec.model, source)
        t1 = time.perf_counter()
        quantize_static(source, spec.output, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=spec.reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION[spec.method]))
        t2 = time.perf_counter()
    res.pre_s = t1 - t0 if spec.preprocess else None
    res.quant_s, res.total_s = t2 - t1, t2 - t0


def run_onnxopt(spec: WorkerSpec, res: WorkerResult) -> None:
    problem = peer_problem(spec.module, ("quantize", "QuantizeConfig"))
    if problem:
        res.missing = problem
        return
    mod = importlib.import_module(spec.module)
    from onnxopt.data import input_specs, open_dataset
    from onnxopt.ir import load_model, save_model

    method, *extras = spec.method.split("+")
    t0 = time.perf_counter()
    model = load_model(spec.model)
    dataset = open_dataset(spec.calib, input_specs(model))
    options = {}
    if "bc" in extras or "bc1" in extras:
        options["bias_correction"] = "sequential" if "bc" in extras else "one-shot"
    if "cle" in extras:
        options["equalize"] = True
    validation = None
    if "budget" in extras:
        if spec.validation is None:
            res.missing = "the budget variant needs the Fashion-MNIST train split for validation"
            return
        validation = open_dataset(spec.validation, input_specs(model))
        options["max_drop"] = spec.max_drop
    # reduce_range stays auto with a budget (the A/B by accuracy decides); fixed otherwise, like onnxruntime's
    config = mod.QuantizeConfig(method=method, reduce_range=None if validation is not None else spec.reduce_range,
                                batch_size=CALIB_BATCH, **options)
    result = mod.quantize(model, dataset, config, eval_data=validation) if validation is not None \
        else mod.quantize(model, dataset, config)
    save_model(result.model, spec.output)
    res.quant_s = res.total_s = time.perf_counter() - t0
    res.notes = list(getattr(result.report, "notes", []))


def worker_main(spec_json: str) -> int:
    """Entry of ``--worker``: quantize once, print one JSON line (the :class:`WorkerResult`)."""
    spec = WorkerSpec(**json.loads(spec_json))
    res = WorkerResult(base_rss_mb=_rss_mb("VmRSS"))
    try:
        (run_ort if spec.family == "ort" else run_onnxopt)(spec, res)
    except Exception as exc:  # reported in the row, never a crash of the benchmark
        res.error = f"{type(exc).__name__}: {_first_line(exc)}"
    res.peak_rss_mb = _rss_mb("VmHWM")
    print("\n" + json.dumps(asdict(res)), flush=True)
    return 0


def quantize_in_subprocess(spec: WorkerSpec, timeout: float) -> WorkerResult:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return WorkerResult(error=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return WorkerResult(error=f"worker exit {proc.returncode}: {tail[:200]}")
    return WorkerResult(**json.loads(lines[-1]))


# -- measuring one model -----------------------------------------------------------------------------
def kernel_counts(path: Path) -> tuple[int | None, int | None]:
    """(integer, float) Conv/Gemm/MatMul kernels in onnxruntime's optimized CPU graph; None if unknown."""
    try:
        from onnxopt.quantize.fusion import analyse_optimized, optimized_graph
    except Exception:  # the analysis lives beside onnxopt's quantizer; without it the cells read '-'
        return None, None
    try:
        rep = analyse_optimized(optimized_graph(path, threads=1))
    except Exception:
        return None, None
    return rep.integer_count, len(rep.float_compute)


def accuracy(path: Path, data: BenchData, threads: int) -> float | None:
    from onnxopt.runtime import make_session
    from onnxopt.runtime.evaluate import evaluate

    sess = make_session(path, "cpu", threads=threads, spin=False)
    return evaluate(sess, data.eval_dataset(), batch_size=64).top1


def bench_model(model_path: Path, data: BenchData, variants: list[Variant], args, work: Path,
                problems: dict[str, str | None], log: list[dict]) -> list[dict]:
    from onnxopt.runtime.timing import BenchTarget

    name = model_path.stem
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    calib_path = mdir / "calib.npz"
    np.savez(calib_path, **data.calib)
    rows: dict[str, dict] = {}
    files: dict[str, Path] = {}
    for v in variants:
        row = {"model": name, "variant": v.label, "family": v.family, "method": v.method,
               "preprocess": v.preprocess}
        rows[v.label] = row
        if v.family == "fp32":
            files[v.label] = model_path
            continue
        if problems.get(v.family):
            _fill(row, f"{MISSING}: {problems[v.family]}", args.batches)
            continue
        out = mdir / f"{v.label}.onnx"
        print(f"  {name}: {v.label} ...", file=sys.stderr, flush=True)
        spec = WorkerSpec(v.family, v.method, v.preprocess, str(model_path), str(out), str(calib_path),
                          args.reduce_range, args.onnxopt_module, validation_npz(mdir, data, args),
                          args.budget_drop)
        res = quantize_in_subprocess(spec, args.worker_timeout)
        if res.missing or res.error:
            _fill(row, f"{MISSING}: {res.missing}" if res.missing else f"error: {res.error}", args.batches)
            continue
        row.update({"pre_s": res.pre_s, "quant_s": res.quant_s, "total_s": res.total_s,
                    "peak_rss_mb": res.peak_rss_mb, "base_rss_mb": res.base_rss_mb, "notes": res.notes,
                    "file": str(out)})
        row["status"] = "ok"
        files[v.label] = out
    rows["fp32"]["status"] = "ok"
    for label, path in files.items():
        row = rows[label]
        try:
            row["top1"] = accuracy(path, data, args.threads)
        except Exception as exc:
            _fill(row, f"error: {type(exc).__name__}: {_first_line(exc)}", args.batches)
            files[label] = None
            continue
        row["size_kb"] = path.stat().st_size / 1024.0
        row["int_kernels"], row["float_kernels"] = kernel_counts(path)
    files = {k: p for k, p in files.items() if p is not None}
    base = rows["fp32"].get("top1")
    for row in rows.values():
        if isinstance(row.get("top1"), float) and isinstance(base, float):
            row["drop_pts"] = base - row["top1"]
    for batch in args.batches:
        key = f"b{batch}"
        fits = data.batch_fits(batch)
        if not fits:
            for label in files:
                rows[label][f"{key}_ms"] = f"n/a: the model's batch is fixed at {data.fixed_batch}"
            continue
        feeds = data.feeds(batch)
        targets = [BenchTarget(label, str(p), feeds, batch) for label, p in files.items()]
        print(f"  {name}: timing batch {batch} ({len(targets)} variants) ...", file=sys.stderr, flush=True)
        timing = time_guarded(targets, phase=f"{name} b{batch}", threads=args.threads, runs=args.runs,
                              block=args.block, warmup=args.warmup, threshold=args.disturbance,
                              max_repeats=args.max_repeats)
        log += [r.to_dict() for r in timing.log]
        fp32_ms = timing.results[0].median_ms if targets and targets[0].label == "fp32" else None
        for t in timing.results:
            row = rows[t.label]
            row[f"{key}_ms"], row[f"{key}_p90"] = t.median_ms, t.p90_ms
            row[f"{key}_vs_fp32"] = t.median_ms / fp32_ms if fp32_ms else None
            row[f"{key}_latencies_ms"] = t.latencies_ms
        row_disturbed = timing.disturbed_rounds()
        for label in files:
            rows[label][f"{key}_disturbed_rounds"] = row_disturbed
            rows[label][f"{key}_worst_others_cores"] = timing.worst_kept()
    return list(rows.values())


def _fill(row: dict, text: str, batches=BATCHES) -> None:
    """A variant that could not be built: its first cell says why, the others the short status."""
    row["status"] = text
    short = text.split(":", 1)[0]
    for c in columns_for(batches)[2:]:
        row[c] = short
    row["top1"] = text


# -- output ------------------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path, batch: int) -> Path | None:
    """top-1 vs the batch-``batch`` median latency, one panel per model, one marker per variant."""
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        panels.append(Panel(model, [Series(r["variant"], [_num(r.get(f"b{batch}_ms"))], [_num(r.get("top1"))],
                                           marker=METHOD_MARKERS.get(r["method"], "*"), color=_color(r))
                                    for r in mine]))
    return save_plot(path, panels, xlabel=f"batch-{batch} latency, median ms (CPU)", ylabel="top-1 %",
                     title="INT8 quantization: accuracy vs latency")


#: plot markers: the shape says the calibration method, the colour the quantizer (see :func:`_color`)
METHOD_MARKERS = {"minmax": "o", "percentile": "s", "entropy": "^", "mse": "D"}


def _color(row: dict) -> str:
    if row["family"] == "fp32":
        return "black"
    if row["family"] == "ort":
        return "tab:red" if row["preprocess"] else "tab:orange"
    return "tab:blue"


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="INT8 quantization: onnxruntime quantize_static vs onnxopt, vs FP32")
    ap.add_argument("--out", type=Path, help="folder for quantize.json/.md/.png and the quantized models")
    ap.add_argument("--models", nargs="+", type=Path, help="float ONNX models (default: the reference models in "
                                                             "models/, TorchScript exports)")
    ap.add_argument("--eval-data", choices=EVAL_CHOICES, default=None,
                    help="full (default): the 10k Fashion-MNIST test set (Debian package dataset-fashion-mnist; "
                         "an error without it); sample: eval split of models/fashion_mnist_sample.npz (the --quick "
                         "default); random: random inputs labelled by the FP32 model, so top-1 reads as agreement "
                         "(plumbing only; --quick uses it for a model that does not take 1x28x28)")
    ap.add_argument("--eval-limit", type=int, metavar="N", help="use only the first N eval samples")
    ap.add_argument("--calib", type=int, default=512, metavar="N", help="calibration images (default 512)")
    ap.add_argument("--quantizers", default="ort,onnxopt", help="families to run: ort, onnxopt (comma list)")
    ap.add_argument("--ort-methods", help=f"quantize_static calibration methods (default {','.join(ORT_METHODS)}; "
                                          "--quick: minmax)")
    ap.add_argument("--onnxopt-methods", help=f"onnxopt variants METHOD[+EXTRA...] (default "
                                              f"{','.join(ONNXOPT_METHODS)}; --quick: minmax); extras: bc "
                                              "(sequential bias correction), bc1 (one-shot), cle (cross-layer "
                                              "equalization), budget (--budget-drop on --validation images)")
    ap.add_argument("--onnxopt-module", default="onnxopt.quantize",
                    help="module providing onnxopt's quantize() and QuantizeConfig (a module that does not import "
                         "makes its rows read 'missing: ...')")
    ap.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                    help="7-bit weights for both quantizers (default: on where this CPU lacks VNNI)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--batches", default="1,64", help="latency batch sizes (default 1,64)")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per variant and batch (default 40)")
    ap.add_argument("--block", type=int, default=10, help="runs per block (one fresh session each; default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per fresh session (default 3)")
    ap.add_argument("--disturbance", type=float, default=0.15, metavar="CORES",
                    help="repeat a round when others used more than this many cores meanwhile (default 0.15)")
    ap.add_argument("--max-repeats", type=int, default=2, help="repeats of a disturbed round (default 2)")
    ap.add_argument("--worker-timeout", type=float, default=1800.0, help="seconds per quantizer run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: one small model, 64 eval samples, 32 calibration images, minmax only, "
                         "2 timed runs")
    ap.add_argument("--validation", type=int, default=5000, metavar="N",
                    help="labelled train images the 'budget' variants measure their accuracy budget on "
                         "(default 5000; 0 = none)")
    ap.add_argument("--budget-drop", type=float, default=0.1, metavar="POINTS",
                    help="top-1 drop the 'budget' variants allow on the validation images (default 0.1)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is None and args.out is None:
        ap.error("--out is required")
    args.quantizers = _csv(ap, args.quantizers, FAMILIES, "--quantizers")
    quick_methods = "minmax" if args.quick else None
    args.ort_methods = _csv(ap, args.ort_methods or quick_methods or ",".join(ORT_METHODS), ORT_METHODS,
                            "--ort-methods")
    args.onnxopt_methods = _csv(ap, args.onnxopt_methods or quick_methods or ",".join(ONNXOPT_METHODS),
                                ONNXOPT_METHODS, "--onnxopt-methods")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        ap.error("--batches takes a comma list of integers")
    if args.quick:
        args.models = args.models or [quick_model()]
        args.eval_limit = args.eval_limit or 64
        args.calib = min(args.calib, 32)
        args.runs, args.block, args.warmup, args.max_repeats = 2, 2, 1, 0
    if min(args.runs, args.block, args.threads, args.calib) < 1 or args.max_repeats < 0 or not args.batches:
        ap.error("--runs, --block, --threads and --calib must be >= 1, --max-repeats >= 0")
    if args.reduce_range is None:
        args.reduce_range = host_reduce_range()
    return args


def validation_npz(folder: Path, data: BenchData, args) -> str | None:
    """``--validation`` labelled Fashion-MNIST *train* images (never the eval set) as an npz, or None."""
    if not args.validation or tuple(data.eval_x.shape[1:]) != (1, 28, 28):
        return None
    path = folder / "validation.npz"
    if not path.exists():
        try:
            from onnxopt.data.fashion_mnist import load_fashion_mnist, normalize

            images, labels = load_fashion_mnist("train")
        except (FileNotFoundError, ValueError):
            return None
        # the last images of the train split (the calibration images are a class-balanced random sample)
        pick = np.arange(len(labels) - args.validation, len(labels))
        np.savez(path, **{data.input_name: normalize(images[pick]), "labels": labels[pick].astype(np.int64)})
    return str(path)


def _csv(ap, text: str, allowed, opt: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if opt == "--onnxopt-methods":  # method[+extra...]
        bad = [x for x in items if x.split("+")[0] not in allowed
               or any(e not in ONNXOPT_EXTRAS for e in x.split("+")[1:])]
        if bad:
            ap.error(f"{opt}: unknown {', '.join(bad)} (METHOD[+EXTRA...], methods {', '.join(allowed)}, "
                     f"extras {', '.join(ONNXOPT_EXTRAS)})")
        return items
    bad = [x for x in items if x not in allowed]
    if bad:
        ap.error(f"{opt}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    models = args.models or default_models()
    if not models:
        print("no model given and no reference model in models/; pass --models or --quick", file=sys.stderr)
        return 2
    choice = DataChoice(args.eval_data, args.eval_limit, args.calib, quick=args.quick)
    problems = {
        "ort": peer_problem("onnxruntime.quantization", ("quantize_static", "CalibrationDataReader"))
        if "ort" in args.quantizers else None,
        "onnxopt": peer_problem(args.onnxopt_module, ("quantize", "QuantizeConfig"))
        if "onnxopt" in args.quantizers else None,
    }
    for fam, why in problems.items():
        if why:
            print(f"{fam}: {MISSING} ({why}); its rows say so", file=sys.stderr)
    variants = variants_for(args.quantizers, args.ort_methods, args.onnxopt_methods)
    load_before = machine_load()
    work = args.out / "quantize-models"
    rows, log, data_notes = [], [], {}
    for path in models:
        print(f"{path} ...", file=sys.stderr, flush=True)
        try:
            data = load_bench_data(path, choice)
        except Exception as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        data_notes[path.stem] = data.description
        rows += bench_model(path, data, variants, args, work, problems, log)
    meta = {
        "environment": {**environment(["matplotlib"]), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
                        "load_before": load_before, "load_after": machine_load()},
        "settings": {"threads": args.threads, "inter_op_threads": 1, "spinning": False, "provider": "cpu",
                     "graph_optimization": "all", "runs": args.runs, "block": args.block, "warmup": args.warmup,
                     "batches": args.batches, "disturbance_threshold_cores": args.disturbance,
                     "max_repeats": args.max_repeats, "calib_images": args.calib, "calib_batch": CALIB_BATCH,
                     "reduce_range": args.reduce_range,
                     "ort": {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
                             "weight_type": "QInt8", "methods": args.ort_methods},
                     "onnxopt": {"module": args.onnxopt_module, "methods": args.onnxopt_methods},
                     "quick": args.quick},
        "data": data_notes,
        "missing": {k: v for k, v in problems.items() if v},
        "disturbance_log": log,
    }
    table = write_results(args.out, "quantize", rows, columns_for(args.batches), meta=meta)
    png = plot(rows, args.out / "quantize.png", 64 if 64 in args.batches else args.batches[-1])
    if png is None:
        print("matplotlib is not installed: no quantize.png", file=sys.stderr)
    notes = [f"data: {m}: {d}" for m, d in data_notes.items()]
    notes += [f"latency: onnxruntime {meta['environment']['onnxruntime']} CPU provider, {args.threads} intra-op "
              f"threads, spinning off, one live session; {args.runs} runs per variant in blocks of {args.block} "
              f"(warm-up {args.warmup}); ms per batch, median and p90; *_vs_fp32 = median / FP32 median",
              f"quantizers: QDQ, per-channel int8 weights, uint8 activations, reduce_range={args.reduce_range} "
              f"(CPU flags: {', '.join(cpu_flags()) or 'none'}); {args.calib} calibration images; pre_s = "
              "quant_pre_process, quant_s = quantize_static / onnxopt quantize() incl. calibration and save, "
              "total_s = both; peak_rss_mb = the quantizer process's peak RSS",
              disturbance_summary(log, args.disturbance)]
    append_notes(args.out / "quantize.md", notes)
    print(table)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
