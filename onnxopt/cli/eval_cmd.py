"""``onnxopt eval``: top-1/top-5 accuracy and latency of a classifier."""

from __future__ import annotations

import json
import sys

from onnxopt.cli.args import DataArgs, ModelArgs, ProviderArgs, positive_int
from onnxopt.data import Dataset, input_specs, open_dataset
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir import load_model
from onnxopt.runtime import make_session, parse_providers
from onnxopt.runtime.evaluate import evaluate

DATASETS = ("fashion-mnist",)


def add_parser(sub):
    p = sub.add_parser("eval", help="accuracy (top-1/top-5) and latency of a classifier on labelled data",
                       description="Run a classifier over labelled data and report top-1/top-5 accuracy and "
                                   "per-batch latency for each provider. Data comes from --data (the project's "
                                   "data format, with a 'labels' array) or a --dataset shortcut.")
    ModelArgs.add(p)
    DataArgs.add(p, "--data", help="labelled data: FILE.npz[:SPLIT] with input arrays and 'labels', or a folder")
    p.add_argument("--dataset", choices=DATASETS,
                   help="evaluate on a whole installed data set instead of --data (fashion-mnist: the 10k test split "
                        "from the Debian package dataset-fashion-mnist, normalized as the reference models expect)")
    ProviderArgs.add(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per run (default 64)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples")
    p.add_argument("--output-name", default=None, help="which model output holds the logits (default: the first)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write results as JSON to FILE (stdout with no FILE)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only results")
    p.set_defaults(func=run)
    return p


def _builtin_dataset(name: str, specs) -> Dataset:
    from onnxopt.data import fashion_mnist

    if len(specs) != 1:
        raise DataError(f"--dataset {name} fits single-input models; this one has {len(specs)} inputs")
    try:
        images, labels = fashion_mnist.load_fashion_mnist("test")
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    x = fashion_mnist.normalize(images)
    spec = specs[0]
    if not spec.accepts_shape(x.shape):
        raise DataError(f"--dataset {name} gives images of shape [N, 1, 28, 28]; the model expects {list(spec.shape)}")
    arrays = {spec.name: x.astype(spec.dtype), "labels": labels}
    return Dataset(lambda: iter([arrays]), specs, f"{name} test split", length=len(labels), has_labels=True)


def run(args) -> int:
    if bool(args.data) == bool(args.dataset):
        raise OnnxoptError("give exactly one of --data or --dataset")
    model = load_model(args.model)
    specs = input_specs(model)
    if args.dataset:
        dataset = _builtin_dataset(args.dataset, specs)
    else:
        dataset = open_dataset(args.data, specs, DataArgs.parse(args).image)
    results = []
    for prov in parse_providers(args.providers):
        sess = make_session(args.model, prov, threads=args.threads)
        res = evaluate(sess, dataset, batch_size=args.batch_size, output=args.output_name, limit=args.limit,
                       progress=sys.stderr.isatty() and not args.quiet, provider=prov.short)
        del sess
        results.append(res)
    doc = {"model": str(args.model), "data": args.data or args.dataset, "results": [r.to_dict() for r in results]}
    if args.json == "-":
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            acc = (f"top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%" if r.top1 is not None else "no labels: accuracy n/a")
            print(f"{args.model} [{r.provider}] {r.samples} samples  {acc}  "
                  f"batch {r.batch_size}: {r.latency_ms_median:.2f} ms median, {r.latency_ms_p90:.2f} ms p90, "
                  f"{r.throughput:.0f} samples/s")
        if args.json:
            from pathlib import Path

            Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0
