"""``onnxopt quantize MODEL -o OUT --calib DATA``: INT8 post-training quantization (QDQ).

Cleans the graph first (BatchNorm folding must precede quantization),
calibrates activation ranges on DATA (or loads saved ones), inserts
QuantizeLinear/DequantizeLinear for the target runtime, saves OUT atomically
after validating it (onnx full check + onnxruntime CPU session), and reports
what onnxruntime actually fused: Conv/Gemm/MatMul running as integer kernels
versus float, and every node left float with the reason.

With ``--max-drop POINTS --eval DATA`` (top-1 on labelled data) or
``--min-sqnr DB`` (output SQNR, no labels) the most sensitive Conv/Gemm/MatMul
are left float until the budget is met (:mod:`onnxopt.quantize.fallback`);
``--sensitivity FILE`` saves the per-node analysis, ``--report FILE`` a JSON
report and a markdown summary beside it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from onnxopt.cli.args import DataArgs, OutputArgs, ReportArgs, check_output_path, non_negative_float, positive_int
from onnxopt.cli.report import Printer, format_float, format_table, to_jsonable, write_json, write_text
from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import CheckFailed, DataError, OnnxoptError
from onnxopt.ir import load_model
from onnxopt.quantize.config import Activations, BiasCorrection, Method, QuantizeConfig, Weights, parse_target

#: calibration samples reused for the float-vs-quantized output comparison
QUALITY_SAMPLES = 256
#: a speed-up under this (FP32 median / INT8 median) gets a note: short runs on a shared machine vary by ~5%
SLOWER_THAN_FP32 = 0.95
#: latency in the report: short interleaved runs (timed runs per model, runs per block, warm-up runs per session)
LATENCY_RUNS, LATENCY_BLOCK, LATENCY_WARMUP = 20, 5, 3
#: sensitivity rows printed (the JSON and the markdown hold them all)
SENSITIVITY_SHOWN = 5


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize", help="INT8 post-training quantization to a QDQ model that onnxruntime runs as integer kernels",
        description="Quantize a float model to INT8 (QuantizeLinear/DequantizeLinear). The cleanup pipeline runs "
                    "first, activation ranges come from --calib data (or --load-ranges), and the result is "
                    "validated and checked for fusion: how many Conv/Gemm/MatMul onnxruntime's CPU provider "
                    "runs as integer kernels and which nodes stay float, and why.")
    p.add_argument("model", metavar="MODEL", type=Path, help="the float ONNX model (never modified)")
    OutputArgs.add(p)
    DataArgs.add(p, "--calib", help="calibration inputs: FILE.npz keyed by input name, FILE.npz:SPLIT, FILE.npy, "
                                    "or a folder of .npy/.npz files or images (a few hundred representative samples)")
    g = p.add_argument_group("quantization")
    g.add_argument("--method", choices=[m.value for m in Method], default=Method.MINMAX.value,
                   help="how activation ranges are chosen: minmax (default), percentile, entropy (KL, as "
                        "TensorRT), mse (least expected quantization error)")
    g.add_argument("--percentile", type=float, default=99.999, metavar="P",
                   help="for --method percentile: keep P%% of the values (default 99.999)")
    g.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization of Conv pairs before quantizing (exact through Relu/LeakyRelu; "
                        "pairs with ReLU6 between them are skipped); helps nets whose per-tensor weight ranges "
                        "differ a lot between channels")
    g.add_argument("--bias-correction", choices=[b.value for b in BiasCorrection], default=BiasCorrection.OFF.value,
                   help="remove the mean output shift quantization adds to each Conv/Gemm, measured on --calib: "
                        "one-shot (one pass) or sequential (one pass per layer, stronger, slower); default off")
    g.add_argument("--moving-average", action="store_true",
                   help="for --method minmax: a moving average of per-batch min/max instead of the global extremes")
    g.add_argument("--activations", choices=[a.value for a in Activations], default=None,
                   help="asymmetric: uint8 with a zero point (CPU default); symmetric: int8, zero point 0 "
                        "(TensorRT's only choice)")
    g.add_argument("--weights", choices=[w.value for w in Weights], default=Weights.PER_CHANNEL.value,
                   help="int8 symmetric weight scales per output channel (default) or one per tensor")
    g.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights, for CPUs without VNNI (AVX2's u8*s8 multiply-add saturates int16); "
                        "default: on for --target cpu when this CPU lacks VNNI")
    g.add_argument("--target", default="cpu", metavar="{cpu,tensorrt}",
                   help="runtime the QDQ placement is shaped for: cpu (onnxruntime CPU provider, default) or "
                        "tensorrt (explicit quantization); cuda has no INT8 convolution kernels and is refused")
    g.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NODE_OR_OPTYPE",
                   help="node names or op types to keep in float")
    g.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="calibration batch size (default 16); memory use does not grow with the sample count")
    g.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="onnxruntime intra-op threads for calibration (default: onnxruntime's choice)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--save-ranges", type=Path, metavar="FILE",
                   help="also write the calibrated ranges as JSON, to re-apply later without data")
    r.add_argument("--load-ranges", type=Path, metavar="FILE",
                   help="use ranges saved by --save-ranges instead of calibrating (no --calib needed)")
    acc = p.add_argument_group("accuracy", "budgets exit 1 when even leaving nodes float cannot meet them; the "
                                           "model (the most accurate one tried) and the reports are still written")
    acc.add_argument("--eval", dest="eval_data", metavar="DATA",
                     help="labelled eval data (FILE.npz:SPLIT with 'labels'): FP32 vs INT8 top-1 in the summary, "
                          "and the data --max-drop, --min-sqnr and --sensitivity measure on")
    acc.add_argument("--max-drop", type=non_negative_float, metavar="POINTS",
                     help="most top-1 accuracy (percentage points, on --eval) the INT8 model may lose; if it loses "
                          "more, the most sensitive Conv/Gemm/MatMul are left float one by one until it does not. "
                          "With auto --reduce-range on a CPU without VNNI, 7-bit and 8-bit weights are both tried "
                          "and the more accurate kept")
    acc.add_argument("--min-sqnr", type=finite_float, metavar="DB",
                     help="least output SQNR (dB, worst output vs the float model; no labels needed, measured on "
                          "--eval or else --calib data); nodes are left float as for --max-drop")
    acc.add_argument("--sensitivity", type=Path, metavar="FILE",
                     help="write the per-node sensitivity as JSON: output SQNR (and top-1 with labels) with only each "
                          "Conv/Gemm/MatMul quantized and with only it left float")
    acc.add_argument("--sqnr-samples", type=positive_int, default=256, metavar="N",
                     help="samples the SQNR is measured on when no top-1 is (default 256); top-1 uses all of --eval")
    rep = p.add_argument_group("report")
    rep.add_argument("--report", type=Path, metavar="FILE",
                     help="write a JSON report (config, ranges, fused-kernel counts, nodes left float and why, "
                          "accuracy and latency against FP32) and a markdown summary beside it (FILE with .md)")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


def build_config(args) -> QuantizeConfig:
    return QuantizeConfig(method=args.method, activations=args.activations, weights=args.weights,
                          reduce_range=args.reduce_range, target=parse_target(args.target),
                          exclude=tuple(args.exclude), percentile=args.percentile,
                          moving_average=args.moving_average, batch_size=args.batch_size, threads=args.threads,
                          max_drop=args.max_drop, min_sqnr=args.min_sqnr, equalize=args.equalize,
                          bias_correction=args.bias_correction)


def _float_reasons(float_nodes: list[dict]) -> list[tuple[str, str, int]]:
    """(op, reason, count) rows, most frequent first."""
    counts: dict[tuple[str, str], int] = {}
    for f in float_nodes:
        key = (f["op"], f["reason"])
        counts[key] = counts.get(key, 0) + 1
    return sorted(((op, why, n) for (op, why), n in counts.items()), key=lambda r: (-r[2], r[0]))


def print_summary(show: Printer, doc: dict) -> None:
    report = doc["report"]
    fusion = report.get("fusion")
    quantized = report["quantized_nodes"]
    show(f"quantized {doc['input']} -> {doc['output']}  ({report['config']['target']}, "
         f"{report['config']['activations']} activations, {report['config']['weights']} weights, "
         f"ranges: {report['ranges_method']})")
    show(f"  {len(quantized)} nodes between Q/DQ, {len(report['ranges'])} calibrated tensors, "
         f"{report['insert']['weights']} weight tensors stored as int8")
    if fusion:
        show.section("onnxruntime CPU fusion (optimized graph)")
        rows = [(op, n) for op, n in fusion["integer_compute"].items()]
        rows += [(f["op"] + " (float)", 1) for f in fusion["float_compute"]]
        show(format_table(["kernel", "count"], rows, indent=2))
        planned, fused = fusion["expected_integer"], fusion["expected_integer"] - fusion["unfused"]
        line = f"  integer Conv/Gemm/MatMul: {fused} of {planned} quantized ones fused"
        if fusion["unfused"]:
            line += f"; NOT fused: {', '.join(fusion['unfused_nodes'])}"
        if fusion["integer_count"] > fused:
            line += f" (+{fusion['integer_count'] - fused} float ones onnxruntime quantized itself)"
        float_left = len(fusion["float_compute"]) - fusion["unfused"]
        if float_left:
            line += f"; {float_left} left float by plan"
        show(line)
        other = ", ".join(f"{op} {n}" for op, n in fusion["other_integer"].items())
        if other:
            show(f"  other integer kernels: {other}")
        show(f"  QuantizeLinear left: {fusion['quantize_linear']}, DequantizeLinear left: {fusion['dequantize_linear']}"
             + (f", float islands (DQ -> op -> Q): {', '.join(i['op'] + ' ' + i['name'] for i in fusion['islands'])}"
                if fusion["islands"] else ""))
        for slow in fusion.get("slow_paths", []):
            show(f"  warning: {slow['op']} {slow['name']}: {slow['why']}")
    if report["float_nodes"]:
        show.section("left in float")
        show(format_table(["op", "count", "why"], [(op, n, why) for op, why, n in _float_reasons(report["float_nodes"])],
                          indent=2))
    if doc.get("accuracy"):
        a = doc["accuracy"]
        show.section(f"accuracy on {a['samples']} samples of {a['data']}")
        show(f"  top-1 FP32 {a['fp32_top1']:.2f}%, INT8 {a['int8_top1']:.2f}% (drop {a['drop']:.2f} points), "
             f"output SQNR {format_float(a['sqnr_db'], 1)} dB")
    if doc.get("latency"):
        show.section("latency (interleaved, median)")
        show(format_table(["batch", "FP32 ms", "INT8 ms", "speedup"],
                          [(r["batch"], format_float(r["fp32_ms"]), format_float(r["int8_ms"]), f"{r['speedup']:.2f}x")
                           for r in doc["latency"]], indent=2))
    if doc.get("sensitivity"):
        print_sensitivity(show, doc["sensitivity"])
    if report.get("fallback"):
        print_fallback(show, report["fallback"])
    if doc.get("quality"):
        show.section("float vs quantized outputs (calibration samples)")
        show(format_table(["output", "SQNR dB", "max abs err", "top-1 agreement"],
                          [(q["name"], format_float(q["sqnr_db"], 1), format_float(q["max_abs_error"]),
                            "-" if q["top1_agreement"] is None else f"{100 * q['top1_agreement']:.1f}%")
                           for q in doc["quality"]], indent=2))
    for note in report["notes"]:
        show(f"note: {note}")


def print_sensitivity(show: Printer, sens: dict) -> None:
    from onnxopt.quantize.sensitivity import SensitivityResult

    result = SensitivityResult.from_json(sens)
    with_acc = result.quantized_top1 is not None
    show.section(f"most sensitive nodes ({len(result.nodes)} measured on {result.samples} samples in "
                 f"{result.seconds:.1f} s; all quantized: SQNR {format_float(result.quantized_sqnr, 1)} dB"
                 + (f", top-1 {result.quantized_top1:.2f}%" if with_acc else "") + ")")
    rows = []
    for n in result.ranked(by_accuracy=with_acc)[:SENSITIVITY_SHOWN]:
        row = [n.name, n.op, format_float(n.sqnr_only_quantized, 1), format_float(n.sqnr_only_float, 1),
               _signed(result.sqnr_gain(n), 2)]
        if with_acc:
            row.append(_signed(result.top1_gain(n), 2))
        rows.append(row)
    headers = ["node", "op", "SQNR only quant", "SQNR only float", "gain dB"] + (["top-1 gain"] if with_acc else [])
    show(format_table(headers, rows, indent=2))


def _signed(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def print_fallback(show: Printer, fb: dict) -> None:
    """What the accuracy budget did, in a few lines."""
    show.section("accuracy budget")
    rr = fb.get("reduce_range")
    if rr:
        show(f"  reduce_range A/B: top-1 {rr['reduced']['top1']:.2f}% (7-bit weights) vs {rr['full']['top1']:.2f}% "
             f"(8-bit): kept {'7-bit' if rr['reduce_range'] else '8-bit'} weights")
    for step in fb["steps"]:
        kept = step["name"] in fb["left_float"]
        after = step["after"]
        what = (f"top-1 {after['top1']:.2f}%, " if after["top1"] is not None else "") + \
            f"SQNR {format_float(float(after['sqnr_db']), 1)} dB"  # float(): JSON spells infinity "inf"
        show(f"  left float: {step['name']} ({step['op']}, rank {step['rank']}) -> {what}"
             + ("" if kept else " (not kept)"))
    show(f"  {'met' if fb['met'] else 'NOT met'}: {fb['message']}")


def _eval_arg_problems(args) -> None:
    """One-line errors (exit 2) for budget flags without the data they measure on."""
    if args.max_drop is not None and not args.eval_data:
        raise OnnxoptError("--max-drop needs labelled eval data to measure top-1 on: add --eval DATA")
    if args.min_sqnr is not None and not (args.eval_data or args.data):
        raise OnnxoptError("--min-sqnr needs data to compare the outputs on: add --eval DATA (or --calib DATA)")
    if args.sensitivity is not None and not (args.eval_data or args.data):
        raise OnnxoptError("--sensitivity needs data to run the variants on: add --eval DATA (or --calib DATA)")


def markdown_path(report: Path) -> Path:
    return report.with_suffix(".md")


def measure_accuracy(result, model, eval_data, threads) -> dict | None:
    """FP32 vs INT8 top-1 on the labelled eval data (reusing the budget's measurements when they exist)."""
    from onnxopt.quantize.sensitivity import OutputMeter

    if eval_data is None or not eval_data.has_labels:
        return None
    q, f = result.measurement, result.float_measurement
    if q is None or q.top1 is None:
        meter = OutputMeter(result.float_model or model, eval_data, accuracy=True, threads=threads)
        q, f = meter.measure(result.model), meter.reference
    return {"data": eval_data.description, "samples": q.samples, "fp32_top1": f.top1, "int8_top1": q.top1,
            "drop": f.top1 - q.top1, "sqnr_db": q.sqnr_db}


def slower_than_fp32_notes(latency_rows) -> list[str]:
    """A note per measured batch size where INT8 was clearly slower than FP32 (say so, never hide it)."""
    return [f"INT8 ran slower than FP32 at batch {r['batch']} here ({r['int8_ms']:.3f} vs {r['fp32_ms']:.3f} ms "
            "median): the Q/DQ work outweighs the integer kernels for this model or batch size; time it on the "
            "deployment CPU (onnxopt bench) and keep FP32 there, or --exclude the slow layers"
            for r in latency_rows if r["speedup"] < SLOWER_THAN_FP32]


def measure_latency(model, quantized, data, specs, threads) -> list[dict]:
    """FP32 vs INT8 median latency at batch 1 and the eval batch size, short interleaved runs."""
    from onnxopt.data import random_dataset
    from onnxopt.quantize.calibrate import fixed_batch_size
    from onnxopt.quantize.sensitivity import EVAL_BATCH_SIZE
    from onnxopt.runtime.timing import BenchTarget, time_interleaved

    fixed = fixed_batch_size(model)
    sizes = [fixed] if fixed else [1, EVAL_BATCH_SIZE]
    rows = []
    for batch in sizes:
        if data is not None:
            arrays = data.arrays(limit=batch)
            arrays.pop("labels", None)
        else:
            arrays = next(random_dataset(specs, 1, batch=batch).batches(batch))
        n = len(next(iter(arrays.values())))
        feeds = {k: np.concatenate([v] * -(-batch // n))[:batch] for k, v in arrays.items()}
        fp32, int8 = time_interleaved([BenchTarget("FP32", model, feeds, batch), BenchTarget("INT8", quantized, feeds,
                                                                                             batch)],
                                      threads=threads, warmup=LATENCY_WARMUP, runs=LATENCY_RUNS, block=LATENCY_BLOCK)
        rows.append({"batch": batch, "fp32_ms": fp32.median_ms, "int8_ms": int8.median_ms,
                     "speedup": fp32.median_ms / int8.median_ms if int8.median_ms > 0 else float("inf"),
                     "runs": LATENCY_RUNS, "threads": threads})
    return rows


def run(args) -> int:
    from onnxopt.runtime.validate import input_files, save_validated
    from onnxopt.quantize import quantize
    from onnxopt.quantize.calibrate import fixed_batch_size
    from onnxopt.quantize.quality import output_quality
    from onnxopt.quantize.ranges import Ranges
    from onnxopt.quantize.report_md import render_markdown

    config = build_config(args)  # refuses --target cuda before any work
    out = check_output_path(args, args.model)
    if args.load_ranges and args.data:
        raise OnnxoptError("give --calib DATA or --load-ranges FILE, not both")
    if not args.load_ranges and not args.data:
        raise OnnxoptError("quantization needs calibration data: --calib DATA (or --load-ranges FILE)")
    _eval_arg_problems(args)
    if args.report is not None and markdown_path(args.report) == args.report:
        raise OnnxoptError(f"--report {args.report}: give the JSON file name; the markdown summary goes beside it "
                           f"as {markdown_path(args.report).name}")
    model = load_model(args.model)
    protect = [] if args.in_place else input_files(args.model)
    if out.resolve() in {p.resolve() for p in protect}:
        raise OnnxoptError(f"output {out} is one of the input model's files; choose another name")
    written = [args.save_ranges, args.report, args.report and markdown_path(args.report), args.sensitivity]
    for path in written:
        if path is not None and path.resolve() in {p.resolve() for p in [*protect, out]}:
            raise OnnxoptError(f"{path} is the model file; choose another name for the report/ranges")
    specs = input_specs(model)
    image = DataArgs.parse(args).image
    dataset = ranges = eval_data = None
    if args.load_ranges:
        ranges = Ranges.load(args.load_ranges)
    else:
        dataset = open_dataset(args.data, specs, image)
    if args.eval_data:
        eval_data = open_dataset(args.eval_data, specs, image)
        if args.max_drop is not None and not eval_data.has_labels:
            raise DataError(f"--max-drop needs labels in the eval data; {eval_data.description} has none "
                            "(--min-sqnr needs no labels)")
    show = Printer(quiet=args.quiet, json_dest=args.json)
    result = quantize(model, dataset, config, ranges=ranges, eval_data=eval_data,
                      sensitivity=args.sensitivity is not None, samples=args.sqnr_samples, progress=not args.quiet)
    save_validated(result.model, out, external_data=args.external_data, protect=protect)
    if args.save_ranges:
        result.ranges.save(args.save_ranges)
    if args.sensitivity is not None:
        result.sensitivity.save(args.sensitivity)
    quality = []
    if dataset is not None:
        try:
            fixed = fixed_batch_size(model)
            batches = (b for b in dataset.batches(fixed or config.batch_size, limit=QUALITY_SAMPLES)
                       if not fixed or len(next(iter(b.values()))) == fixed)
            quality = [asdict(q) for q in output_quality(model, out, batches, threads=args.threads)]
        except OnnxoptError as exc:  # the float model itself may not run (e.g. a custom op)
            result.report.notes.append(f"outputs not compared: {exc}")
    latency = measure_latency(model, result.model, eval_data or dataset, specs, args.threads) if args.report else None
    result.report.notes.extend(slower_than_fp32_notes(latency or ()))
    doc = {"input": str(args.model), "output": str(out), "ranges_file": str(args.save_ranges or args.load_ranges or ""),
           "report": result.report.to_json(), "quality": quality,
           "accuracy": measure_accuracy(result, model, eval_data, args.threads),
           "sensitivity": result.sensitivity.to_json() if result.sensitivity is not None else None}
    if args.report:
        doc["latency"] = latency
        write_json(doc, args.report)
        write_text(markdown_path(args.report), render_markdown(to_jsonable(doc)))
    if args.json is not None:
        write_json(doc, args.json)
    print_summary(show, doc)
    fallback = result.report.fallback
    if fallback is not None and not fallback.met:
        raise CheckFailed(f"{fallback.message}; the most accurate model tried was written to {out}")
    return 0

