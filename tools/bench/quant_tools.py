"""INT8 accuracy tools measured: cross-layer equalization (CLE) and bias correction (BC), alone and together.

For each model (default: models/mobilenetv2.onnx and models/resnet.onnx),
each calibration method and weight granularity, the float model after
``create_pass("cleanup")`` is quantized with :func:`onnxopt.quantize.quantize`:

* ``int8``: as is;
* ``+cle``: after the ``equalize_cross_layer`` pass (exact: pairs with a
  ReLU6 between them are left alone);
* ``+cle-relu6``: the pass with ``relu6_as_relu=True`` (AIMET's approach:
  ReLU6 inside equalized pairs becomes ReLU, which changes the float model;
  its own top-1 is in the ``float_top1`` column); only for models with ReLU6;
* each of these followed by ``correct_bias`` one-shot (``+bc``) and
  sequential (``+bc-seq``) on the quantized model.

Columns: top-1 on the eval set, the drop vs FP32 (points), the SQNR of the
logits vs the original FP32 logits (dB; finer than top-1 on 2000 images,
where one image is 0.05 points), top-1 agreement with FP32, the change vs
plain ``int8`` of the same method and weights (points and dB), CLE pairs,
corrected layers, the tools' wall time, and how many Conv/Gemm onnxruntime
runs as integer kernels (the tools must not break the fusion).

Writes OUT/quant_tools.json and OUT/quant_tools.md; prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tools.bench`` importable
    sys.path.insert(0, str(ROOT))

from tools.bench.common import (  # noqa: E402
    EVAL_CHOICES,
    BenchData,
    DataChoice,
    append_notes,
    environment,
    load_bench_data,
    quick_model,
    write_results,
)

MODELS = ("mobilenetv2", "resnet")
METHODS = ("minmax", "percentile", "entropy", "mse")
WEIGHTS = ("per-channel", "per-tensor")
CLE_KINDS = ("none", "exact", "relu6")
BC_KINDS = ("none", "one-shot", "sequential")
COLUMNS = ("model", "method", "weights", "variant", "top1", "drop_pts", "sqnr_db", "agree_pct", "vs_int8_pts",
           "vs_int8_db", "float_top1", "cle_pairs", "bc_layers", "tool_s", "int_kernels", "float_kernels")


def variant_label(cle: str, bc: str) -> str:
    parts = ["int8"]
    parts += {"none": [], "exact": ["cle"], "relu6": ["cle-relu6"]}[cle]
    parts += {"none": [], "one-shot": ["bc"], "sequential": ["bc-seq"]}[bc]
    return "+".join(parts)


def float_label(cle: str) -> str:
    """The row of the float model a CLE variant quantizes: fp32+cle, fp32+cle-relu6."""
    return "fp32+" + variant_label(cle, "none").removeprefix("int8+")


# -- measuring -------------------------------------------------------------------------------------
def logits(model, x: np.ndarray, threads: int, batch: int = 500) -> np.ndarray:
    """The model's first output on ``x`` in onnxruntime CPU with all optimizations (integer kernels)."""
    from onnxopt.runtime import make_session

    sess = make_session(model, "cpu", threads=threads, spin=False)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def scores(out: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict:
    from onnxopt.quantize.quality import sqnr_db

    return {"top1": 100.0 * float(np.mean(out.argmax(1) == labels)), "sqnr_db": sqnr_db(ref, out),
            "agree_pct": 100.0 * float(np.mean(out.argmax(1) == ref.argmax(1)))}


def kernel_counts(model) -> tuple[int | None, int | None]:
    from onnxopt.errors import OnnxoptError
    from onnxopt.quantize.fusion import fusion_report

    try:
        rep = fusion_report(model)
    except OnnxoptError:  # onnxruntime cannot load it: the cells say '-', the top-1 run reports the error
        return None, None
    return rep.integer_count, len(rep.float_compute)


def equalized_models(cleaned, relu6_wanted: bool) -> dict[str, tuple[object, dict, float]]:
    """cle kind -> (float model, pass stats, seconds); ``relu6`` only where the model has ReLU6 pairs."""
    from onnxopt.passes import create_pass

    out = {"none": (cleaned, {}, 0.0)}
    for kind in ("exact", "relu6"):
        t0 = time.perf_counter()
        res = create_pass("equalize_cross_layer", {"relu6_as_relu": kind == "relu6"})(cleaned.copy())
        seconds = time.perf_counter() - t0
        if kind == "relu6" and (not relu6_wanted or not res.stats.get("relu6_replaced")):
            continue
        out[kind] = (res.model, dict(res.stats), seconds)
    return out


def bench_model(path: Path, data: BenchData, args) -> list[dict]:
    from onnxopt.ir import load_model
    from onnxopt.passes import create_pass
    from onnxopt.quantize import QuantizeConfig, quantize
    from onnxopt.quantize.bias_correction import correct_bias

    name = path.stem
    cleaned = create_pass("cleanup")(load_model(path)).model
    calib = data.calib_dataset()
    x, y = data.eval_x, data.eval_y
    ref = logits(cleaned, x, args.threads)
    fp32 = scores(ref, ref, y)
    rows = [{"model": name, "method": "-", "weights": "-", "variant": "fp32", **fp32, "drop_pts": 0.0,
             "float_top1": fp32["top1"]}]
    floats = equalized_models(cleaned, "relu6" in args.cle)
    for kind, (fm, st, secs) in floats.items():
        if kind != "none":
            s = scores(logits(fm, x, args.threads), ref, y)
            rows.append({"model": name, "method": "-", "weights": "-", "variant": float_label(kind), **s,
                         "drop_pts": fp32["top1"] - s["top1"], "float_top1": s["top1"],
                         "cle_pairs": st.get("pairs"), "relu6_replaced": st.get("relu6_replaced"), "tool_s": secs})
    for method in args.methods:
        for weights in args.weights:
            config = QuantizeConfig(method=method, weights=weights, threads=args.threads)
            base = None
            for cle in args.cle:
                if cle not in floats:
                    continue
                fm, cle_stats, cle_s = floats[cle]
                float_top1 = fp32["top1"] if cle == "none" else next(
                    r["top1"] for r in rows if r["variant"] == float_label(cle))
                print(f"  {name} {method} {weights} cle={cle} ...", file=sys.stderr, flush=True)
                result = quantize(fm, calib, config)
                for bc in args.bc:
                    qm = result.model if bc == "none" else result.model.copy()
                    tool_s, bc_layers = cle_s, None
                    if bc != "none":
                        t0 = time.perf_counter()
                        st = correct_bias(fm, qm, calib, max_samples=args.bc_samples,
                                          sequential=bc == "sequential", threads=args.threads)
                        tool_s += time.perf_counter() - t0
                        bc_layers = len(st.corrected)
                    s = scores(logits(qm, x, args.threads), ref, y)
                    row = {"model": name, "method": method, "weights": weights, "variant": variant_label(cle, bc),
                           "cle": cle, "bc": bc, **s, "drop_pts": fp32["top1"] - s["top1"], "float_top1": float_top1,
                           "cle_pairs": cle_stats.get("pairs") if cle != "none" else None,
                           "relu6_replaced": cle_stats.get("relu6_replaced") if cle != "none" else None,
                           "bc_layers": bc_layers, "tool_s": tool_s if (cle != "none" or bc != "none") else None}
                    row["int_kernels"], row["float_kernels"] = kernel_counts(qm) if args.kernels else (None, None)
                    if cle == "none" and bc == "none":
                        base = row
                    if base is not None:
                        row["vs_int8_pts"] = row["top1"] - base["top1"]
                        row["vs_int8_db"] = row["sqnr_db"] - base["sqnr_db"]
                    rows.append(row)
    return rows


# -- command line --------------------------------------------------------------------------------------
def _csv(ap, text: str, allowed, opt: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        ap.error(f"{opt}: unknown {', '.join(bad) or '(empty)'} (choose from {', '.join(allowed)})")
    return items


def parse_args(argv):
    ap = argparse.ArgumentParser(description="INT8 accuracy tools: cross-layer equalization and bias correction")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="folder for quant_tools.json/.md "
                                                                         "(default bench-out/)")
    ap.add_argument("--models", nargs="+", type=Path,
                    help=f"float ONNX models (default: models/{{{','.join(MODELS)}}}.onnx)")
    ap.add_argument("--eval-data", choices=EVAL_CHOICES, default="sample",
                    help="sample (default): eval split of models/fashion_mnist_sample.npz (2000 images); full: the "
                         "10k Fashion-MNIST test set; random: random inputs labelled by FP32")
    ap.add_argument("--eval-limit", type=int, metavar="N", help="use only the first N eval samples")
    ap.add_argument("--calib", type=int, default=512, metavar="N", help="calibration images (default 512)")
    ap.add_argument("--methods", default="minmax,percentile", help="calibration methods (default minmax,percentile)")
    ap.add_argument("--weights", default="per-channel,per-tensor",
                    help="weight granularities (default per-channel,per-tensor)")
    ap.add_argument("--cle", default=",".join(CLE_KINDS), help="CLE variants: none, exact, relu6 (default all)")
    ap.add_argument("--bc", default=",".join(BC_KINDS), help="bias correction: none, one-shot, sequential "
                                                             "(default all)")
    ap.add_argument("--bc-samples", type=int, default=256, help="calibration samples for bias correction (256)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    ap.add_argument("--no-kernels", dest="kernels", action="store_false",
                    help="skip counting integer kernels in onnxruntime's optimized graph")
    ap.add_argument("--quick", action="store_true", help="smoke mode: one model, 256 eval samples, 64 calibration "
                                                         "images, minmax per-channel")
    args = ap.parse_args(argv)
    if args.quick:
        args.models = args.models or [quick_model()]
        args.eval_limit = args.eval_limit or 256
        args.calib = min(args.calib, 64)
        args.methods, args.weights = "minmax", "per-channel"
    args.methods = _csv(ap, args.methods, METHODS, "--methods")
    args.weights = _csv(ap, args.weights, WEIGHTS, "--weights")
    args.cle = _csv(ap, args.cle, CLE_KINDS, "--cle")
    args.bc = _csv(ap, args.bc, BC_KINDS, "--bc")
    if "none" not in args.cle:
        args.cle.insert(0, "none")  # the baseline every row is compared with
    if "none" not in args.bc:
        args.bc.insert(0, "none")
    if min(args.calib, args.threads, args.bc_samples) < 1:
        ap.error("--calib, --threads and --bc-samples must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = args.models or [p for p in (ROOT / "models" / f"{m}.onnx" for m in MODELS) if p.is_file()]
    if not models:
        print("no model given and none of the reference models in models/; pass --models", file=sys.stderr)
        return 2
    choice = DataChoice(args.eval_data, args.eval_limit, args.calib, quick=args.quick)
    rows, data_notes = [], {}
    t0 = time.perf_counter()
    for path in models:
        print(f"{path} ...", file=sys.stderr, flush=True)
        data = load_bench_data(path, choice)
        data_notes[path.stem] = data.description
        rows += bench_model(path, data, args)
    meta = {"environment": environment(), "data": data_notes, "seconds": time.perf_counter() - t0,
            "settings": {"methods": args.methods, "weights": args.weights, "cle": args.cle, "bc": args.bc,
                         "bc_samples": args.bc_samples, "calib_images": args.calib, "threads": args.threads,
                         "activations": "asymmetric (uint8)", "reduce_range": "auto (this host)"}}
    table = write_results(args.out, "quant_tools", rows, COLUMNS, meta=meta)
    append_notes(args.out / "quant_tools.md", [
        f"{m}: {d}" for m, d in data_notes.items()] + [
        "sqnr_db: logits vs the original FP32 model's; vs_int8_*: change vs plain int8 of the same method/weights",
        "float_top1: top-1 of the float model that was quantized (cle-relu6 changes it: ReLU6 -> ReLU)",
        "tool_s: wall time of CLE (pass) + bias correction; quantization itself not included"])
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
