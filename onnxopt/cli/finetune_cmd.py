"""``onnxopt finetune STUDENT --teacher TEACHER --data DATA -o OUT``: distillation fine-tuning.

Trains the student's weights (only initializer values change; the graph is
exactly the one the optimizer produced) towards the teacher's outputs, then
writes a validated model (onnx full check + an onnxruntime session) and
reports top-1 accuracy before and after on ``--eval`` data with labels.

Needs torch (``pip install 'onnxopt[finetune]'``); this module imports it
only when the command runs, so ``onnxopt --help`` works without it.
Exit codes: 0 done, 1 training diverged (NaN loss; the last good weights are
written) or the written model failed validation, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from onnxopt.cli.args import (
    DataArgs,
    OutputArgs,
    ReportArgs,
    check_output_path,
    non_negative_float,
    positive_float,
    positive_int,
)
from onnxopt.cli.report import (
    Printer,
    format_fields,
    format_float,
    stderr_is_tty,
    write_json,
)
from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import OnnxoptError
from onnxopt.ir import load_model

TEACHER_RUNTIMES = ("onnxruntime", "torch")
OPTIMIZER_HELP = "adam (default), adamw or sgd (momentum 0.9)"


def add_parser(sub):
    p = sub.add_parser(
        "finetune", help="fine-tune an optimized student by distillation from its teacher (needs torch)",
        description="Distill TEACHER into STUDENT on --data: KL divergence on temperature-softened logits "
                    "(x T^2), plus --alpha x cross-entropy when the data has labels, plus optional feature hints. "
                    "Only weight values change; exact zeros (pruned weights) stay zero and INT8 weights are "
                    "re-quantized with their existing scales. Exit 1 if the loss became NaN (the last good "
                    "weights are still written).")
    p.add_argument("model", metavar="STUDENT", type=Path, help="the model to fine-tune (never modified)")
    p.add_argument("--teacher", type=Path, required=True, metavar="TEACHER", help="the teacher model (run frozen)")
    DataArgs.add(p, "--data", required=True,
                 help="training data: FILE.npz[:SPLIT] keyed by input name (optional 'labels'), FILE.npy, or a folder")
    OutputArgs.add(p)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=1, help="passes over --data (default 1)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (default 1e-4)")
    t.add_argument("--optimizer", default="adam", help=OPTIMIZER_HELP)
    t.add_argument("--batch-size", type=positive_int, default=64, help="samples per step (default 64)")
    t.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    t.add_argument("--temperature", type=positive_float, default=4.0, help="softening temperature T (default 4)")
    t.add_argument("--alpha", type=non_negative_float, default=0.5,
                   help="weight of the cross-entropy on labels (default 0.5)")
    t.add_argument("--hint", nargs="+", action="extend", default=[], metavar="TENSOR",
                   help="intermediate tensor(s) to match with MSE (same name in student and teacher)")
    t.add_argument("--hint-weight", type=non_negative_float, default=1.0, help="weight of the hint loss (default 1)")
    t.add_argument("--plan", type=Path, metavar="PLAN.json",
                   help="pruning plan: kept channel indices of pruned --hint tensors (the teacher's tensors are "
                        "cut to them before comparing)")
    t.add_argument("--teacher-runtime", choices=TEACHER_RUNTIMES, default="onnxruntime",
                   help="run the teacher in onnxruntime (default) or the torch executor")
    t.add_argument("--learn-scales", action="store_true", help="train QuantizeLinear/DequantizeLinear scales too")
    t.add_argument("--keep-zeros", action=argparse.BooleanOptionalAction, default=True,
                   help="hold weights that are exactly 0 at the start at 0 (default on: pruned weights stay pruned)")
    t.add_argument("--reestimate-bn", type=int, default=0, metavar="BATCHES",
                   help="after training, recompute BatchNormalization statistics over this many batches")
    t.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="learning rate: cosine decay after a short warm-up (default), or constant")
    t.add_argument("--augment", choices=["none", "shift-flip", "shift"], default="none",
                   help="image augmentation per batch: random shifts of up to 2 pixels (+ horizontal flips); "
                        "default none")
    t.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="read --data into memory and reshuffle it every epoch (default on; --no-shuffle streams "
                        "it in file order)")
    t.add_argument("--seed", type=int, default=0, help="seed of the shuffling and augmentation (default 0)")
    t.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch and onnxruntime")
    p.add_argument("--eval", dest="eval_data", metavar="DATA",
                   help="held-out data (with 'labels' for accuracy) to evaluate before and after")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


def kept_channels_from_plan(path: Path) -> dict[str, list[int]]:
    """{tensor: kept channel indices} from a pruning plan JSON.

    Accepted layouts: ``{tensor: [indices]}``; the same mapping under a
    ``"kept_channels"`` or ``"kept"`` key; or ``{"tensors": [{"name"|"tensor":
    ..., "kept": [...]}, ...]}``.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OnnxoptError(f"plan file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise OnnxoptError(f"{path}: not a readable JSON pruning plan ({exc})") from exc
    if isinstance(doc, dict):
        for key in ("kept_channels", "kept"):
            if isinstance(doc.get(key), dict):
                doc = doc[key]
                break
        if isinstance(doc.get("tensors"), list):
            doc = {e.get("name", e.get("tensor")): e.get("kept") for e in doc["tensors"] if isinstance(e, dict)}
    if not isinstance(doc, dict):
        raise OnnxoptError(f"{path}: a pruning plan must be a JSON object of tensor -> kept channel indices")
    out: dict[str, list[int]] = {}
    for name, kept in doc.items():
        if isinstance(kept, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
            out[str(name)] = kept
    if not out:
        raise OnnxoptError(f"{path}: holds no tensor -> kept channel index lists")
    return out


def resolve_hints(names: list[str], plan: Path | None) -> dict[str, list[int] | None]:
    if plan is not None and not names:
        raise OnnxoptError("--plan gives kept channels for --hint tensors; name at least one --hint")
    kept = kept_channels_from_plan(plan) if plan is not None else {}
    return {n: kept.get(n) for n in names}


def open_named_or_file(source: str, specs, image, flag: str):
    """``fashion-mnist`` / ``fashion-mnist:test`` (the Debian package's full splits) or a data file/folder."""
    from onnxopt.pipeline.data import open_named

    named = open_named(source, specs, f"{flag} {source}")
    return named if named is not None else open_dataset(source, specs, image)


def _input_files(path: Path) -> list[Path]:
    from onnxopt.analysis.summary import external_data_files

    return [path, *external_data_files(path)]


@dataclass
class FinetuneReport:
    student: str
    teacher: str
    output: str
    epochs: int
    steps: int
    first_loss: float | None
    last_loss: float | None
    top1_before: float | None = None
    top1_after: float | None = None
    teacher_top1: float | None = None
    eval_kl_before: float | None = None
    eval_kl_after: float | None = None
    eval_samples: int | None = None
    diverged: bool = False
    stopped_early: bool = False
    message: str = ""
    masked_zeros: int = 0
    hints: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _top1(session_source, dataset, batch_size: int, threads: int | None) -> float | None:
    from onnxopt.runtime import make_session
    from onnxopt.runtime.evaluate import evaluate

    if dataset is None or not dataset.has_labels:
        return None
    return evaluate(make_session(session_source, threads=threads), dataset, batch_size=batch_size).top1


def run(args) -> int:
    from onnxopt.finetune import finetune
    from onnxopt.finetune.distill import use_threads
    from onnxopt.runtime.validate import save_validated

    out = check_output_path(args, args.model)
    protect = [] if args.in_place else _input_files(args.model)
    protect += _input_files(args.teacher) if Path(args.teacher).exists() else []
    if out.resolve() in {p.resolve() for p in protect}:
        raise OnnxoptError(f"output {out} is one of the input models' files; choose another name")
    if args.reestimate_bn < 0:
        raise OnnxoptError("--reestimate-bn must be >= 0")
    hints = resolve_hints(args.hint, args.plan)
    student = load_model(args.model)
    teacher = load_model(args.teacher)
    specs = input_specs(student)
    image = DataArgs.parse(args).image
    data = open_named_or_file(args.data, specs, image, "--data")
    eval_ds = open_named_or_file(args.eval_data, specs, image, "--eval") if args.eval_data else None
    if args.threads:
        use_threads(args.threads)
    show = Printer(quiet=args.quiet, json_dest=args.json)
    top1_before = _top1(args.model, eval_ds, args.batch_size, args.threads)
    teacher_top1 = _top1(args.teacher, eval_ds, args.batch_size, args.threads)
    result = finetune(student, teacher, data, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                      temperature=args.temperature, alpha=args.alpha, hints=hints, hint_weight=args.hint_weight,
                      eval_data=eval_ds, batch_size=args.batch_size, teacher_runtime=args.teacher_runtime,
                      learn_scales=args.learn_scales, keep_zeros=args.keep_zeros,
                      reestimate_bn_batches=args.reestimate_bn, max_steps=args.max_steps,
                      progress=not args.quiet and stderr_is_tty(), threads=args.threads, shuffle=args.shuffle,
                      augment=None if args.augment == "none" else args.augment, schedule=args.schedule,
                      seed=args.seed)
    save_validated(result.model, out, external_data=args.external_data, protect=protect)
    report = FinetuneReport(
        student=str(args.model), teacher=str(args.teacher), output=str(out), epochs=result.epochs,
        steps=result.steps, first_loss=result.losses[0] if result.losses else None,
        last_loss=result.losses[-1] if result.losses else None, top1_before=top1_before,
        top1_after=_top1(out, eval_ds, args.batch_size, args.threads), teacher_top1=teacher_top1,
        eval_kl_before=(result.eval_before or {}).get("eval_kl"), eval_kl_after=(result.eval_after or {}).get("eval_kl"),
        eval_samples=(result.eval_after or {}).get("eval_samples"), diverged=result.diverged,
        stopped_early=result.stopped_early, message=result.message, masked_zeros=result.masked_zeros,
        hints={k: (len(v) if v is not None else None) for k, v in hints.items()}, notes=result.notes)
    if result.bn is not None:
        report.notes.append(f"BatchNorm statistics re-estimated for {len(result.bn.updated)} node(s) over "
                            f"{result.bn.batches} batches" + (f"; kept for {len(result.bn.skipped)}" if result.bn.skipped else ""))
    if args.json is not None:
        write_json(report, args.json)
    print_report(show, report)
    if result.diverged:
        print(f"onnxopt finetune: {result.message}; wrote those weights to {out}", file=sys.stderr)
        return 1
    return 0


def print_report(show: Printer, r: FinetuneReport) -> None:
    def pct(v):
        return f"{v:.2f}%" if v is not None else "n/a"

    rows = [("student", r.student), ("teacher", r.teacher), ("written", r.output),
            ("training", f"{r.steps} steps, {r.epochs} epoch(s); loss {format_float(r.first_loss)} -> "
                         f"{format_float(r.last_loss)}")]
    if r.eval_kl_before is not None:
        rows.append(("KL to teacher", f"{format_float(r.eval_kl_before)} -> {format_float(r.eval_kl_after)} "
                                      f"on {r.eval_samples} eval samples"))
    if r.top1_before is not None:
        rows.append(("top-1", f"{pct(r.top1_before)} -> {pct(r.top1_after)} (teacher {pct(r.teacher_top1)})"))
    if r.masked_zeros:
        rows.append(("zeros kept", str(r.masked_zeros)))
    show(format_fields(rows))
    for note in r.notes:
        show(f"note: {note}")
    if not r.diverged:
        show(r.message)
