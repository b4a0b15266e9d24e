"""``onnxopt quantize MODEL -o OUT --calib DATA``: INT8 post-training quantization (QDQ).

Cleans the graph first (BatchNorm folding must precede quantization),
calibrates activation ranges on DATA (or loads saved ones), inserts
QuantizeLinear/DequantizeLinear for the target runtime, saves OUT atomically
after validating it (onnx full check + onnxruntime CPU session), and reports
what onnxruntime actually fused: Conv/Gemm/MatMul running as integer kernels
versus float, and every node left float with the reason.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from onnxopt.cli.args import DataArgs, OutputArgs, ReportArgs, check_output_path, positive_int
from onnxopt.cli.report import Printer, format_float, format_table, write_json
from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import OnnxoptError
from onnxopt.ir import load_model
from onnxopt.quantize.config import Activations, Method, QuantizeConfig, Weights, parse_target

#: calibration samples reused for the float-vs-quantized output comparison
QUALITY_SAMPLES = 256


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
    rep = p.add_argument_group("report")
    rep.add_argument("--report", type=Path, metavar="FILE",
                     help="write a JSON report: config, ranges, fused-kernel counts, nodes left float and why")
    ReportArgs.add(p)
    p.set_defaults(func=run)
    return p


def build_config(args) -> QuantizeConfig:
    return QuantizeConfig(method=args.method, activations=args.activations, weights=args.weights,
                          reduce_range=args.reduce_range, target=parse_target(args.target),
                          exclude=tuple(args.exclude), percentile=args.percentile,
                          moving_average=args.moving_average, batch_size=args.batch_size, threads=args.threads)


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
    if doc.get("quality"):
        show.section("float vs quantized outputs (calibration samples)")
        show(format_table(["output", "SQNR dB", "max abs err", "top-1 agreement"],
                          [(q["name"], format_float(q["sqnr_db"], 1), format_float(q["max_abs_error"]),
                            "-" if q["top1_agreement"] is None else f"{100 * q['top1_agreement']:.1f}%")
                           for q in doc["quality"]], indent=2))
    for note in report["notes"]:
        show(f"note: {note}")


def run(args) -> int:
    from onnxopt.runtime.validate import input_files, save_validated
    from onnxopt.quantize import quantize
    from onnxopt.quantize.calibrate import fixed_batch_size
    from onnxopt.quantize.quality import output_quality
    from onnxopt.quantize.ranges import Ranges

    config = build_config(args)  # refuses --target cuda before any work
    out = check_output_path(args, args.model)
    if args.load_ranges and args.data:
        raise OnnxoptError("give --calib DATA or --load-ranges FILE, not both")
    if not args.load_ranges and not args.data:
        raise OnnxoptError("quantization needs calibration data: --calib DATA (or --load-ranges FILE)")
    model = load_model(args.model)
    protect = [] if args.in_place else input_files(args.model)
    if out.resolve() in {p.resolve() for p in protect}:
        raise OnnxoptError(f"output {out} is one of the input model's files; choose another name")
    for path in (args.save_ranges, args.report):
        if path is not None and path.resolve() in {p.resolve() for p in [*protect, out]}:
            raise OnnxoptError(f"{path} is the model file; choose another name for the report/ranges")
    specs = input_specs(model)
    dataset = ranges = None
    if args.load_ranges:
        ranges = Ranges.load(args.load_ranges)
    else:
        dataset = open_dataset(args.data, specs, DataArgs.parse(args).image)
    show = Printer(quiet=args.quiet, json_dest=args.json)
    result = quantize(model, dataset, config, ranges=ranges, progress=not args.quiet)
    save_validated(result.model, out, external_data=args.external_data, protect=protect)
    if args.save_ranges:
        result.ranges.save(args.save_ranges)
    quality = []
    if dataset is not None:
        try:
            fixed = fixed_batch_size(model)
            batches = (b for b in dataset.batches(fixed or config.batch_size, limit=QUALITY_SAMPLES)
                       if not fixed or len(next(iter(b.values()))) == fixed)
            quality = [asdict(q) for q in output_quality(model, out, batches, threads=args.threads)]
        except OnnxoptError as exc:  # the float model itself may not run (e.g. a custom op)
            result.report.notes.append(f"outputs not compared: {exc}")
    doc = {"input": str(args.model), "output": str(out), "ranges_file": str(args.save_ranges or args.load_ranges or ""),
           "report": result.report.to_json(), "quality": quality}
    if args.report:
        write_json(doc, args.report)
    if args.json is not None:
        write_json(doc, args.json)
    print_summary(show, doc)
    return 0

