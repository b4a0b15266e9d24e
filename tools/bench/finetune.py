"""Pruning + fine-tuning: distillation against label fine-tuning against none, same epochs and data; then INT8.

For each ``--targets`` MACs fraction, the model is pruned once
(:func:`onnxopt.prune.structured.prune_structured`, ``--importance`` on the
calibration images, channel counts rounded to ``--round-to``) and the same
pruned student is trained by each ``--variants`` entry with the same data,
epochs, batch size, optimizer, learning-rate schedule and augmentation:

* ``distill``: :func:`onnxopt.finetune.finetune`'s default loss, T^2 x KL to
  the unpruned teacher's softened logits + alpha x cross-entropy on labels;
* ``labels``: cross-entropy on the labels only (the same loop with the loss
  replaced, so the only difference is the teacher's signal);
* ``none``: the pruned model as it is.

``--scratch`` adds, per target, a net of the pruned model's exact widths built
in torch (tools/train_reference.py's ResNet blocks) and trained from random
weights with the reference models' own recipe (SGD + OneCycle, label
smoothing, ``--scratch-epochs``), for the "above a net of the same width
trained from scratch" comparison.

``--int8 VARIANT`` quantizes that variant's model
(:func:`onnxopt.quantize.quantize`, calibrated on the bundled 512 calib
images) and times FP32, pruned and pruned+INT8 at batch 64 (interleaved
blocks, medians; 2 threads).

Every trained model and a row per run go to OUT (``finetune.json`` is
rewritten after each run, and finished runs are reused on a rerun with the
same settings, so a long benchmark can be resumed). Top-1 is on the full
Fashion-MNIST test split (``--eval-data full``) or the bundled 2000-image
eval split (``sample``).

    python tools/bench/finetune.py --out bench-ft [--model models/resnet.onnx] [--targets 0.5,0.25]
        [--variants distill,labels,none] [--epochs 3] [--int8 distill] [--scratch] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tools.bench`` importable
    sys.path.insert(0, str(ROOT))

from onnxopt.analysis.summary import compute_macs, parameter_stats  # noqa: E402
from onnxopt.data import Dataset, input_specs  # noqa: E402
from onnxopt.ir import Model, load_model, save_model  # noqa: E402
from onnxopt.ir.model import constant_array  # noqa: E402
from onnxopt.prune.structured import prune_structured  # noqa: E402
from onnxopt.runtime import make_session  # noqa: E402
from onnxopt.runtime.evaluate import evaluate  # noqa: E402
from onnxopt.runtime.timing import BenchTarget, time_interleaved  # noqa: E402
from tools.bench.common import SAMPLE_NPZ, environment, markdown_table  # noqa: E402

VARIANTS = ("distill", "labels", "none")
COLUMNS = ("target", "variant", "macs_ratio", "params_k", "epochs", "steps", "train_s", "top1", "drop_pts",
           "b64_vs_fp32", "size_kb")


def settings_key(args) -> dict:
    """What a finished run depends on: a rerun with the same key reuses it."""
    return {k: getattr(args, k) for k in ("model", "epochs", "batch_size", "lr", "temperature", "alpha",
                                          "importance", "round_to", "augment", "train_samples", "seed",
                                          "eval_data", "scratch_epochs", "max_steps")}


def load_train(args, name: str) -> dict[str, np.ndarray]:
    from onnxopt.data.fashion_mnist import normalize

    images, labels = _train_uint8(args)
    return {name: normalize(images).astype(np.float32), "labels": labels.astype(np.int64)}


def load_eval(args, specs) -> Dataset:
    name = specs[0].name
    if args.eval_data == "full":
        from onnxopt.data.fashion_mnist import load_fashion_mnist, normalize

        images, labels = load_fashion_mnist("test")
        arrays = {name: normalize(images).astype(np.float32), "labels": labels.astype(np.int64)}
        desc = "Fashion-MNIST test split (10,000)"
    else:
        with np.load(SAMPLE_NPZ) as z:
            arrays = {name: z["eval/input"], "labels": z["eval/labels"].astype(np.int64)}
        desc = "bundled eval split (2,000)"
    if args.quick:
        arrays = {k: v[:500] for k, v in arrays.items()}
    return Dataset(lambda: iter([arrays]), specs, desc, length=len(arrays["labels"]), has_labels=True)


def calib_dataset(specs) -> Dataset:
    with np.load(SAMPLE_NPZ) as z:
        arrays = {specs[0].name: z["calib/input"]}
    return Dataset(lambda: iter([arrays]), specs, "bundled calib split (512)", length=len(arrays[specs[0].name]))


def top1(path: Path, data: Dataset, threads: int) -> float:
    return evaluate(make_session(path, "cpu", threads=threads, spin=False), data, batch_size=256).top1


def labels_only_loss(student_out, teacher_out, batch, default_loss):
    """Cross-entropy on the labels only: replaces the distillation loss (same loop, same data)."""
    import torch.nn.functional as F

    logits = next(iter(student_out.values()))
    return F.cross_entropy(logits, batch["labels"])


def train_variant(variant: str, student: Path, teacher: Path, train: dict, args, out: Path) -> dict:
    from onnxopt.finetune import finetune
    from onnxopt.finetune.batches import ShuffledBatches
    from onnxopt.finetune.callbacks import CosineLR
    from onnxopt.finetune.augment import AUGMENTATIONS

    augment = AUGMENTATIONS[args.augment]
    data = ShuffledBatches(train, args.batch_size, seed=args.seed, transform=augment() if augment else None)
    started = time.perf_counter()
    res = finetune(student, teacher, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                   temperature=args.temperature, alpha=args.alpha, threads=args.threads,
                   loss=labels_only_loss if variant == "labels" else None, callbacks=[CosineLR(warmup=0.03)],
                   progress=sys.stderr.isatty(), max_steps=args.max_steps)
    train_s = time.perf_counter() - started
    if res.diverged:
        raise SystemExit(f"{variant}: {res.message}")
    save_model(res.model, out)
    return {"steps": res.steps, "epochs": res.epochs, "train_s": round(train_s, 1),
            "final_loss": res.losses[-1] if res.losses else None}


# -- from scratch (torch, the reference recipe) ------------------------------------------------------------


def conv_widths(model: Model) -> list[int]:
    """Output channels of the Conv nodes in graph order (the pruned ResNet's widths)."""
    widths = []
    for node in model.graph.nodes:
        if node.op == "Conv":
            w = constant_array(node.inputs[1])
            widths.append(int(w.shape[0]))
    return widths


def train_scratch(pruned: Model, args, out: Path, eval_data: Dataset) -> dict:
    """The pruned net's exact widths, random init, trained with train_reference.py's recipe; exported to ONNX."""
    import torch
    from torch import nn

    from tools import train_reference as tr

    widths = conv_widths(pruned)
    # graph order of the reference ResNet: stem, then per block conv1, conv2, shortcut
    stem, rest = widths[0], widths[1:]
    if len(rest) % 3:
        raise SystemExit(f"--scratch knows the reference ResNet layout (stem + 3 convs per block); got {widths}")

    class Block(tr.BasicBlock):
        def __init__(self, cin, mid, cout, stride):
            super().__init__(cin, cout, stride)
            self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid)
            self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)

    ref = tr.MODELS["resnet"]
    net = tr.ResNet(**ref["kwargs"])
    net.stem = nn.Sequential(*tr.conv_bn_act(1, stem))
    blocks, c = [], stem
    for (cout, stride, _n), i in zip(ref["kwargs"]["stages"], range(0, len(rest), 3)):
        mid, cout2 = rest[i], rest[i + 1]
        blocks.append(Block(c, mid, cout2, stride))
        c = cout2
    net.layers = nn.Sequential(*blocks)
    net.fc = nn.Linear(c, 10)

    spec = dict(ref, epochs=args.scratch_epochs)
    x_u8, y = _train_uint8(args)
    data = tr.TrainData(x_u8, y)
    test = eval_data.arrays()
    test_x, test_y = torch.from_numpy(test[eval_data.specs[0].name]), torch.from_numpy(test["labels"])
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, _hist = _fit_reference(tr, net, spec, data, test_x, test_y, args)
    train_s = time.perf_counter() - started
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(out), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return {"steps": None, "epochs": args.scratch_epochs, "train_s": round(train_s, 1)}


def _train_uint8(args):
    """The Fashion-MNIST train split as uint8 images and labels (a seeded subset with --train-samples)."""
    from onnxopt.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("train")
    if args.train_samples and args.train_samples < len(labels):
        pick = np.sort(np.random.default_rng(args.seed).choice(len(labels), size=args.train_samples, replace=False))
        images, labels = images[pick], labels[pick]
    return images, labels


def _fit_reference(tr, net, spec, data, test_x, test_y, args):
    """tools/train_reference.py's training loop (SGD nesterov, OneCycle, label smoothing) on ``net``."""
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    model = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.SGD(tr.param_groups(model, spec["weight_decay"]), lr=spec["lr"], momentum=0.9, nesterov=True)
    steps = math.ceil(data.n / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], epochs=spec["epochs"], steps_per_epoch=steps,
                                                pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    hist = []
    for epoch in range(spec["epochs"]):
        model.train()
        for xb, yb in data.batches(args.batch_size, gen):
            loss = crit(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(test_x).argmax(1) == test_y).float().mean()) * 100
        hist.append(acc)
        print(f"  scratch epoch {epoch + 1}/{spec['epochs']}: top-1 {acc:.2f}", flush=True)
    return model, hist


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--model", default=str(ROOT / "models" / "resnet.onnx"), help="teacher / model to prune")
    ap.add_argument("--targets", default="0.5", help="MACs fractions to prune to, comma-separated (default 0.5)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per variant (default 3)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed (default 2e-3)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.5, help="cross-entropy weight in the distillation loss")
    ap.add_argument("--importance", default="taylor", help="pruning criterion (default taylor)")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--augment", default="shift-flip", choices=["none", "shift-flip", "shift"])
    ap.add_argument("--train-samples", type=int, default=0, help="0 = the full 60k train split")
    ap.add_argument("--eval-data", choices=("full", "sample"), default="full")
    ap.add_argument("--int8", default=None, metavar="VARIANT", help="quantize this variant's model and time it")
    ap.add_argument("--int8-method", default="minmax", help="calibration method for --int8 (default minmax)")
    ap.add_argument("--scratch", action="store_true", help="also train the pruned widths from scratch (torch)")
    ap.add_argument("--scratch-epochs", type=int, default=8, help="epochs of the from-scratch recipe (default 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40, help="timed runs per model at batch 64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 256 train images, 500 eval, 1 epoch")
    args = ap.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not all(0 < t <= 1 for t in args.targets):
        ap.error(f"unknown variant(s) {bad}" if bad else "targets must be in (0, 1]")
    if args.quick:
        args.train_samples, args.epochs, args.eval_data, args.runs = 256, 1, "sample", 5
        args.scratch_epochs = 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "finetune.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    key = settings_key(args)
    done = {(r["target"], r["variant"]): r for r in previous.get("rows", [])} if previous.get("settings") == key else {}
    teacher_path = Path(args.model)
    teacher = load_model(teacher_path)
    specs = input_specs(teacher)
    eval_data = load_eval(args, specs)
    fp32_top1 = done.get((1.0, "fp32"), {}).get("top1")
    if fp32_top1 is None:
        fp32_top1 = top1(teacher_path, eval_data, args.threads)
    rows = [{"target": 1.0, "variant": "fp32", "macs_ratio": 1.0, "top1": fp32_top1, "drop_pts": 0.0,
             "params_k": parameter_stats(teacher)[0] / 1e3, "size_kb": teacher_path.stat().st_size / 1024}]
    # rows of other targets from an earlier run with the same settings stay in the results
    rows += [r for r in previous.get("rows", []) if previous.get("settings") == key
             and r["target"] not in args.targets and r["variant"] != "fp32"]
    base_macs = compute_macs(teacher).total
    train = None

    def save():
        doc = {"settings": key, "environment": environment(), "eval": eval_data.description, "rows": rows}
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(json_path)
        (out / "finetune.md").write_text(markdown_table(rows, COLUMNS) + "\n")

    print(f"FP32 {teacher_path.name}: top-1 {fp32_top1:.2f} on {eval_data.description}", flush=True)
    for target in args.targets:
        tag = f"macs{int(round(target * 100))}"
        pruned_path = out / f"{tag}.pruned.onnx"
        calib = calib_dataset(specs)
        if not pruned_path.exists():
            res = prune_structured(teacher, target_macs=target, importance=args.importance, dataset=calib,
                                   round_to=args.round_to, seed=args.seed)
            save_model(res.model, pruned_path)
            res.plan.save(out / f"{tag}.plan.json")
        pruned = load_model(pruned_path)
        macs_ratio = compute_macs(pruned).total / base_macs
        common = {"target": target, "macs_ratio": round(macs_ratio, 3), "params_k": parameter_stats(pruned)[0] / 1e3}
        for variant in args.variants + (["scratch"] if args.scratch else []):
            if (target, variant) in done:
                rows.append(done[(target, variant)])
                print(f"[{tag}] {variant}: reused top-1 {rows[-1]['top1']:.2f}", flush=True)
                continue
            path = out / f"{tag}.{variant}.onnx"
            info: dict = {"epochs": 0, "steps": 0, "train_s": 0.0}
            if variant == "none":
                path = pruned_path
            elif variant == "scratch":
                print(f"[{tag}] scratch: training the pruned widths from random weights ...", flush=True)
                info = train_scratch(pruned, args, path, eval_data)
            else:
                if train is None:
                    train = load_train(args, specs[0].name)
                print(f"[{tag}] {variant}: {args.epochs} epoch(s) on {len(train['labels'])} images ...", flush=True)
                info = train_variant(variant, pruned_path, teacher_path, train, args, path)
            acc = top1(path, eval_data, args.threads)
            rows.append({**common, "variant": variant, **info, "top1": acc, "drop_pts": round(fp32_top1 - acc, 2),
                         "size_kb": path.stat().st_size / 1024, "path": str(path)})
            print(f"[{tag}] {variant}: top-1 {acc:.2f} ({fp32_top1 - acc:+.2f} below FP32) "
                  f"after {info.get('train_s', 0):.0f} s", flush=True)
            save()
        if args.int8 and (target, args.int8) in {(r["target"], r["variant"]) for r in rows}:
            src = next(Path(r["path"]) for r in rows if r["target"] == target and r["variant"] == args.int8)
            q_path = out / f"{tag}.{args.int8}.int8.onnx"
            from onnxopt.quantize import QuantizeConfig, quantize

            started = time.perf_counter()
            q = quantize(load_model(src), calib, QuantizeConfig(method=args.int8_method))
            save_model(q.model, q_path)
            acc = top1(q_path, eval_data, args.threads)
            feeds = {specs[0].name: next(eval_data.batches(64))[specs[0].name]}
            timings = time_interleaved([BenchTarget("fp32", teacher_path, feeds, 64), BenchTarget("pruned", src, feeds, 64),
                                        BenchTarget("int8", q_path, feeds, 64)], threads=args.threads,
                                       runs=args.runs, block=10)
            med = {t.label: t.median_ms for t in timings}
            for r in rows:
                if r["target"] == target and r["variant"] == args.int8:
                    r["b64_vs_fp32"] = round(med["pruned"] / med["fp32"], 3)
            rows.append({**common, "variant": f"{args.int8}+int8", "top1": acc, "drop_pts": round(fp32_top1 - acc, 2),
                         "b64_vs_fp32": round(med["int8"] / med["fp32"], 3), "size_kb": q_path.stat().st_size / 1024,
                         "quantize_s": round(time.perf_counter() - started, 1), "b64_ms": med, "path": str(q_path),
                         "fused": q.report.fusion.integer_count if q.report.fusion else None})
            print(f"[{tag}] {args.int8}+int8: top-1 {acc:.2f} ({fp32_top1 - acc:+.2f}), batch-64 "
                  f"{med['fp32']:.1f} / {med['pruned']:.1f} / {med['int8']:.1f} ms (fp32 / pruned / int8)", flush=True)
            save()
    save()
    print()
    print(markdown_table(rows, COLUMNS))
    print(f"\nwrote {json_path} and {out / 'finetune.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
