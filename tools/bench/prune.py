"""Structured pruning: accuracy vs pruning ratio per importance criterion, with MACs, size and latency.

For each model and each ``--importance`` criterion (``random`` is the
control) and ``--ratios`` value, onnxopt's structured pruning
(:func:`onnxopt.prune.structured.prune_structured`, per-layer ratio) removes
channels; plus one ``--target-macs`` run per model (L1, bisected ratio). Each
pruned model gets: top-1 on the eval set *before any fine-tuning* and the drop
vs the unpruned model, MACs per sample
(:func:`onnxopt.analysis.summary.compute_macs`), parameters, file size and
batch-64 latency on the CPU provider. With ``--finetune-epochs E > 0`` the
``--finetune-importance`` models are also distilled from the unpruned one
(:func:`onnxopt.finetune.finetune`) and their top-1 after fine-tuning is added.

Models pruned to the same shapes (the same ratio under different criteria)
run at the same speed, so latency is timed once per distinct architecture
(``timed_as`` names the timed one), interleaved with the unpruned model; see
:mod:`tools.bench.timing` for the disturbance-checked rounds.

    python tools/bench/prune.py --out bench-out [--models ...] [--ratios 0.1,0.2,0.3,0.5,0.7]
        [--importance l1,l2,bn,activation,random] [--target-macs 0.5] [--finetune-epochs E] [--quick]

Writes OUT/prune.json, OUT/prune.md, OUT/prune.png (top-1 vs MACs) and the
pruned models under OUT/prune-models/; prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tools.bench`` importable
    sys.path.insert(0, str(ROOT))

from onnxopt.analysis.summary import compute_macs, parameter_stats  # noqa: E402
from onnxopt.ir import Model, load_model, save_model  # noqa: E402
from onnxopt.prune.importance import CRITERIA  # noqa: E402
from onnxopt.prune.structured import prune_structured  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from onnxopt.runtime.evaluate import evaluate  # noqa: E402
from onnxopt.runtime.timing import BenchTarget  # noqa: E402
from tools.bench.common import (  # noqa: E402
    EVAL_CHOICES,
    FASHION_SHAPE,
    MISSING,
    BenchData,
    DataChoice,
    Panel,
    Series,
    append_notes,
    default_models,
    environment,
    load_bench_data,
    peer_available,
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

IMPORTANCE = ("l1", "l2", "bn", "activation", "random")
#: per-layer ratios: the small models lose most of their accuracy by 0.2-0.3 before fine-tuning, so the criteria
#: differ mostly below that; 0.5 and 0.7 show where the MACs and latency go
RATIOS = (0.1, 0.2, 0.3, 0.5, 0.7)
HEAD_COLUMNS = ("model", "importance", "ratio", "target_macs", "top1", "drop_pts")
FINETUNE_COLUMNS = ("top1_ft", "ft_drop_pts")
SIZE_COLUMNS = ("macs_m", "macs_frac", "params_k", "size_kb")


def columns_for(batches, finetune: bool) -> list[str]:
    """The markdown columns: fine-tuned accuracy only when fine-tuning ran; latency per batch size."""
    timed = [f"b{b}_{s}" for b in batches for s in ("ms", "p90", "vs_base")]
    return [*HEAD_COLUMNS, *(FINETUNE_COLUMNS if finetune else ()), *SIZE_COLUMNS, *timed, "timed_as"]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def architecture(model: Model) -> tuple:
    """The shapes of every weight: models with equal signatures run at the same speed."""
    return tuple(sorted((n.op, tuple(tuple(t.shape or ()) for t in n.inputs if isinstance(t, gs.Constant)))
                        for n in model.graph.nodes))


def measure(model: Model, path: Path, data: BenchData, threads: int) -> dict:
    """top-1, MACs, parameters and file size of a saved model."""
    sess = make_session(path, "cpu", threads=threads, spin=False)
    params, _ = parameter_stats(model)
    macs = compute_macs(model)
    return {"top1": evaluate(sess, data.eval_dataset(), batch_size=64).top1, "macs": macs.total,
            "macs_m": macs.total / 1e6, "params": params, "params_k": params / 1e3,
            "size_kb": path.stat().st_size / 1024.0}


def train_data(data: BenchData, samples: int, seed: int):
    """Fine-tuning data: ``samples`` labelled train images when Fashion-MNIST is installed, else the calib images.

    The calibration images carry no labels, so without the train split the
    loss is distillation only.
    """
    from onnxopt.data import Dataset
    from onnxopt.data.fashion_mnist import load_fashion_mnist, normalize

    name = data.input_name
    train = None
    if tuple(data.eval_x.shape[1:]) == FASHION_SHAPE:
        try:
            train = load_fashion_mnist("train")
        except FileNotFoundError:
            pass
    if train is not None:
        images, labels = train
        pick = np.random.default_rng(seed).choice(len(labels), size=min(samples, len(labels)), replace=False)
        arrays = {name: normalize(images[pick]), "labels": labels[pick].astype(np.int64)}
        desc = f"{len(pick)} Fashion-MNIST train images"
    else:
        arrays = dict(data.calib)
        desc = f"{len(arrays[name])} calibration images (no labels: distillation only)"
    n = len(arrays[name])
    return Dataset(lambda: iter([arrays]), data.specs, desc, length=n, has_labels="labels" in arrays), desc


def prune_variants(model: Model, args, data: BenchData) -> list[tuple[dict, object]]:
    """(row stub, StructuredResult or an error text) for every criterion x ratio, then the MACs target."""
    jobs = [(imp, r, None) for imp in args.importance for r in args.ratios]
    if args.target_macs:
        jobs.append(("l1", None, args.target_macs))
    out = []
    for imp, ratio, target in jobs:
        stub = {"importance": imp, "ratio": ratio, "target_macs": target}
        dataset = data.calib_dataset() if CRITERIA[imp].needs_data else None
        t0 = time.perf_counter()
        try:
            res = prune_structured(model, ratio=ratio, target_macs=target, importance=imp, dataset=dataset,
                                   seed=args.seed, global_ranking=args.global_ranking, round_to=args.round_to)
        except Exception as exc:
            out.append((stub, f"error: {first_line(exc)}"))
            continue
        stub["prune_s"] = time.perf_counter() - t0
        if target is not None:
            stub["ratio"] = round(res.ratio, 4)
        stub["notes"] = list(dict.fromkeys(res.plan.notes))
        out.append((stub, res))
    return out


def label_of(row: dict) -> str:
    if row["importance"] == "-":
        return "unpruned"
    if row.get("target_macs"):
        return f"{row['importance']} macs<={row['target_macs']}"
    return f"{row['importance']} r{row['ratio']}"


def bench_model(path: Path, data: BenchData, args, work: Path, log: list[dict]) -> list[dict]:
    name = path.stem
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    base_model = load_model(path)
    base = {"model": name, "importance": "-", "ratio": 0.0, "file": str(path)}
    base.update(measure(base_model, path, data, args.threads))
    base["macs_frac"], base["drop_pts"] = 1.0, 0.0
    rows, models = [base], {"unpruned": (base_model, path)}
    for stub, res in prune_variants(base_model, args, data):
        row = {"model": name, **stub}
        rows.append(row)
        label = label_of(row)
        print(f"  {name}: {label} ...", file=sys.stderr, flush=True)
        if isinstance(res, str):
            _fill(row, res)
            continue
        out = mdir / (label.replace(" ", "_").replace("<=", "-macs") + ".onnx")
        try:
            save_model(res.model, out)
            row.update(measure(res.model, out, data, args.threads))
        except Exception as exc:
            _fill(row, f"error: {first_line(exc)}")
            continue
        row["file"] = str(out)
        row["macs_frac"] = row["macs"] / base["macs"] if base["macs"] else None
        row["drop_pts"] = base["top1"] - row["top1"]
        models[label] = (res.model, out)
    if args.finetune_epochs > 0:
        finetune_rows(rows, models, path, data, args)
    time_architectures(rows, models, name, data, args, log)
    return rows


def finetune_rows(rows: list[dict], models: dict, teacher: Path, data: BenchData, args) -> None:
    """Distil the ``--finetune-importance`` models from the unpruned one (the MACs-target model is l1's)."""
    chosen = [r for r in rows if r["importance"] == args.finetune_importance and label_of(r) in models
              and label_of(r) != "unpruned"]
    if not peer_available("torch"):
        for r in chosen:
            r["top1_ft"] = f"{MISSING}: torch (pip install 'onnxopt[finetune]')"
        return
    try:
        from onnxopt.finetune import finetune
        from onnxopt.finetune.distill import use_threads
    except Exception as exc:
        for r in chosen:
            r["top1_ft"] = f"{MISSING}: onnxopt.finetune ({first_line(exc)})"
        return
    use_threads(args.threads)
    train, desc = train_data(data, args.finetune_samples, args.seed)
    for r in chosen:
        label = label_of(r)
        print(f"  {r['model']}: fine-tuning {label} ({args.finetune_epochs} epoch(s), {desc}) ...", file=sys.stderr,
              flush=True)
        student, _ = models[label]
        t0 = time.perf_counter()
        try:
            res = finetune(student, teacher, train, epochs=args.finetune_epochs, lr=args.finetune_lr,
                           batch_size=64, threads=args.threads, progress=False)
            out = Path(models[label][1]).with_suffix(".ft.onnx")
            save_model(res.model, out)
            sess = make_session(out, "cpu", threads=args.threads, spin=False)
            r["top1_ft"] = evaluate(sess, data.eval_dataset(), batch_size=64).top1
        except Exception as exc:
            r["top1_ft"] = f"error: {first_line(exc)}"
            continue
        r["ft_s"] = time.perf_counter() - t0
        r["ft_data"] = desc
        r["ft_drop_pts"] = rows[0]["top1"] - r["top1_ft"]


def time_architectures(rows: list[dict], models: dict, name: str, data: BenchData, args, log: list[dict]) -> None:
    """Time each distinct architecture once per batch (interleaved with the unpruned model); share the numbers."""
    reps: dict[tuple, str] = {}
    for label, (model, _) in models.items():
        reps.setdefault(architecture(model), label)
    for batch in args.batches:
        key = f"b{batch}"
        if not data.batch_fits(batch):
            for r in rows:
                r[f"{key}_ms"] = f"n/a: the model's batch is fixed at {data.fixed_batch}"
            continue
        feeds = data.feeds(batch)
        targets = [BenchTarget(label, str(models[label][1]), feeds, batch) for label in reps.values()]
        print(f"  {name}: timing batch {batch} ({len(targets)} architectures) ...", file=sys.stderr, flush=True)
        timing = time_guarded(targets, phase=f"{name} b{batch}", threads=args.threads, runs=args.runs,
                              block=args.block, warmup=args.warmup, threshold=args.disturbance,
                              max_repeats=args.max_repeats)
        log += [r.to_dict() for r in timing.log]
        by_label = {t.label: t for t in timing.results}
        base_ms = by_label["unpruned"].median_ms
        for r in rows:
            label = label_of(r)
            if label not in models:
                continue
            rep = reps[architecture(models[label][0])]
            t = by_label[rep]
            r[f"{key}_ms"], r[f"{key}_p90"] = t.median_ms, t.p90_ms
            r[f"{key}_vs_base"] = t.median_ms / base_ms if base_ms else None
            r[f"{key}_latencies_ms"] = t.latencies_ms
            r["timed_as"] = rep
            r[f"{key}_disturbed_rounds"] = timing.disturbed_rounds()


def _fill(row: dict, text: str) -> None:
    """A variant that could not be built: top-1 says why; cells left empty read '-'."""
    row["status"] = text
    row["top1"] = text


# -- output ------------------------------------------------------------------------------------------
def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def plot(rows: list[dict], path: Path) -> Path | None:
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = [r for r in mine if r["importance"] == "-"]
        series = [Series("unpruned", [_num(r.get("macs_m")) for r in base], [_num(r.get("top1")) for r in base],
                         marker="*")]
        for imp in dict.fromkeys(r["importance"] for r in mine if r["importance"] != "-"):
            pts = base + [r for r in mine if r["importance"] == imp and not r.get("target_macs")]  # from ratio 0
            series.append(Series(imp, [_num(r.get("macs_m")) for r in pts], [_num(r.get("top1")) for r in pts],
                                 line=True))
        target = [r for r in mine if r.get("target_macs")]
        series.append(Series("l1 MACs target", [_num(r.get("macs_m")) for r in target],
                             [_num(r.get("top1")) for r in target], marker="X"))
        ft = [r for r in mine if isinstance(r.get("top1_ft"), float)]
        if ft:
            series.append(Series(f"{ft[0]['importance']} + fine-tuning", [_num(r.get("macs_m")) for r in ft],
                                 [_num(r.get("top1_ft")) for r in ft], marker="P"))
        panels.append(Panel(model, series))
    return save_plot(path, panels, xlabel="MACs per sample (millions)",
                     ylabel="top-1 % (lines: before fine-tuning)", title="Structured pruning: accuracy vs MACs")


def _floats(ap, text: str, opt: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error(f"{opt} takes a comma list of numbers")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="onnxopt structured pruning: accuracy vs ratio per importance, "
                                             "MACs, size, latency")
    ap.add_argument("--out", type=Path, required=True, help="folder for prune.json/.md/.png and the pruned models")
    ap.add_argument("--models", nargs="+", type=Path, help="float ONNX models (default: the reference models in "
                                                             "models/)")
    ap.add_argument("--ratios", help=f"pruning ratios (default {','.join(map(str, RATIOS))}; --quick: 0.5)")
    ap.add_argument("--importance", help=f"criteria (default {','.join(IMPORTANCE)}, random being the control; "
                                         "--quick: l1,random)")
    ap.add_argument("--target-macs", type=float, default=0.5, metavar="F",
                    help="also prune each model (l1) until MACs <= F x the original (default 0.5; 0: off)")
    ap.add_argument("--global", dest="global_ranking", action="store_true",
                    help="one ranking over all channel groups instead of the same ratio per layer")
    ap.add_argument("--round-to", type=int, default=1, metavar="N",
                    help="keep channel counts multiples of N (onnxopt's --round-to; default 1). onnxruntime's CPU "
                         "convolutions slow down for channel counts off a multiple of 8, so 8 is worth comparing")
    ap.add_argument("--seed", type=int, default=0, help="seed for random importance and data draws")
    ap.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                    help="distil the --finetune-importance models from the unpruned one for E epochs (default 0)")
    ap.add_argument("--finetune-importance", default="l1", help="which criterion's models to fine-tune (default l1)")
    ap.add_argument("--finetune-samples", type=int, default=6000, metavar="N",
                    help="train images for fine-tuning (default 6000; the calib images without Fashion-MNIST)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    ap.add_argument("--eval-data", choices=EVAL_CHOICES, default=None,
                    help="full (default; --quick: sample, or random for a model that does not take 1x28x28): the "
                         "Fashion-MNIST test set; sample: models/fashion_mnist_sample.npz eval split; random: random "
                         "inputs labelled by the unpruned model")
    ap.add_argument("--eval-limit", type=int, metavar="N", help="use only the first N eval samples")
    ap.add_argument("--calib", type=int, default=512, metavar="N",
                    help="images for --importance activation (default 512)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--batches", default="64", help="latency batch sizes (default 64)")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per architecture and batch (default 30)")
    ap.add_argument("--block", type=int, default=10, help="runs per block (one fresh session each; default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per fresh session (default 3)")
    ap.add_argument("--disturbance", type=float, default=0.15, metavar="CORES",
                    help="repeat a round when others used more than this many cores meanwhile (default 0.15)")
    ap.add_argument("--max-repeats", type=int, default=2, help="repeats of a disturbed round (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: one small model, ratio 0.5, l1 and random, 64 eval samples, 2 timed runs")
    args = ap.parse_args(argv)
    args.ratios = _floats(ap, args.ratios or ("0.5" if args.quick else ",".join(map(str, RATIOS))), "--ratios")
    args.batches = [int(b) for b in _floats(ap, args.batches, "--batches")]
    importance = args.importance or ("l1,random" if args.quick else ",".join(IMPORTANCE))
    args.importance = [x.strip() for x in importance.split(",") if x.strip()]
    bad = [x for x in args.importance + [args.finetune_importance] if x not in CRITERIA]
    if bad:
        ap.error(f"unknown importance {', '.join(bad)} (choose from {', '.join(CRITERIA)})")
    if args.quick:
        args.models = args.models or [quick_model()]
        args.eval_limit = args.eval_limit or 64
        args.calib = min(args.calib, 32)
        args.runs, args.block, args.warmup, args.max_repeats = 2, 2, 1, 0
    if any(not 0.0 <= r < 1.0 for r in args.ratios):
        ap.error("--ratios must be in [0, 1)")
    if not 0.0 <= args.target_macs <= 1.0:
        ap.error("--target-macs must be in (0, 1], or 0 for off")
    if min(args.runs, args.block, args.threads, args.calib, args.round_to) < 1 or args.max_repeats < 0 \
            or not args.batches:
        ap.error("--runs, --block, --threads, --calib and --round-to must be >= 1, --max-repeats >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = args.models or default_models()
    if not models:
        print("no model given and no reference model in models/; pass --models or --quick", file=sys.stderr)
        return 2
    choice = DataChoice(args.eval_data, args.eval_limit, args.calib, quick=args.quick, seed=args.seed)
    load_before = machine_load()
    rows, log, data_notes = [], [], {}
    for path in models:
        print(f"{path} ...", file=sys.stderr, flush=True)
        try:
            data = load_bench_data(path, choice)
        except Exception as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        data_notes[path.stem] = data.description
        rows += bench_model(path, data, args, args.out / "prune-models", log)
    meta = {
        "environment": {**environment(["matplotlib", "torch"]), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
                        "load_before": load_before, "load_after": machine_load()},
        "settings": {"ratios": args.ratios, "importance": args.importance, "target_macs": args.target_macs,
                     "global_ranking": args.global_ranking, "round_to": args.round_to, "seed": args.seed,
                     "finetune": {"epochs": args.finetune_epochs, "importance": args.finetune_importance,
                                  "samples": args.finetune_samples, "lr": args.finetune_lr},
                     "threads": args.threads, "inter_op_threads": 1, "spinning": False, "provider": "cpu",
                     "batches": args.batches, "runs": args.runs, "block": args.block, "warmup": args.warmup,
                     "disturbance_threshold_cores": args.disturbance, "max_repeats": args.max_repeats,
                     "quick": args.quick},
        "data": data_notes,
        "disturbance_log": log,
    }
    table = write_results(args.out, "prune", rows, columns_for(args.batches, args.finetune_epochs > 0), meta=meta)
    if plot(rows, args.out / "prune.png") is None:
        print("matplotlib is not installed: no prune.png", file=sys.stderr)
    notes = [f"data: {m}: {d}" for m, d in data_notes.items()]
    notes += [f"pruning: onnxopt structured, {'global' if args.global_ranking else 'per-layer'} ratio, channel "
              f"counts rounded to multiples of {args.round_to}; top1 before "
              "any fine-tuning; macs_m = MACs per sample (millions), macs_frac = vs the unpruned model; "
              f"target_macs rows: l1, ratio bisected until MACs <= F x the original",
              f"latency: onnxruntime {meta['environment']['onnxruntime']} CPU provider, {args.threads} intra-op "
              f"threads, spinning off, one live session; {args.runs} runs per architecture in blocks of "
              f"{args.block}; ms per batch, median and p90; timed_as = the model timed for that architecture "
              "(same shapes run at the same speed)",
              disturbance_summary(log, args.disturbance)]
    if args.finetune_epochs > 0:
        notes.append(f"fine-tuning: {args.finetune_epochs} epoch(s) of distillation from the unpruned model "
                     f"(onnxopt.finetune, lr {args.finetune_lr}, batch 64) for the {args.finetune_importance} models")
    append_notes(args.out / "prune.md", notes)
    print(table)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
