"""The ``onnxopt quantize --report`` document as a markdown summary, for people and CI pages.

:func:`render_markdown` reads the same plain JSON document the command
writes (``input``, ``output``, ``report`` = :meth:`QuantizeReport.to_json`,
and where measured ``quality``, ``accuracy``, ``latency``, ``sensitivity``),
so the markdown never shows a number the JSON does not hold.
"""

from __future__ import annotations

import math
from collections import Counter

#: the compute ops listed one by one under "left float" (other float nodes are counted by op and reason)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: widest calibrated ranges shown
WIDEST_RANGES = 5


def _num(v, digits: int = 2, suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):  # non-finite floats as JSON writes them
        return {"inf": "∞", "-inf": "-∞"}.get(v, v)
    if isinstance(v, float) and not math.isfinite(v):
        return "∞" if v > 0 else ("-∞" if v < 0 else "nan")
    return f"{v:.{digits}f}{suffix}"


def _signed(v, digits: int = 2) -> str:
    if v is None or isinstance(v, str):
        return _num(v, digits)
    return f"{v:+.{digits}f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(headers, rows) -> list[str]:
    """A GitHub markdown table (numbers right-aligned)."""
    rows = [[_cell(c) for c in r] for r in rows]
    align = []
    for i in range(len(headers)):
        numeric = rows and all(_looks_numeric(r[i]) for r in rows)
        align.append("---:" if numeric else "---")
    return ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |"
                                                                                   for r in rows]


def _looks_numeric(text: str) -> bool:
    t = text.strip().rstrip("%x").replace("∞", "0").replace("+", "").replace(",", "")
    try:
        float(t)
        return True
    except ValueError:
        return t == "-"


def _config_section(report: dict) -> list[str]:
    cfg = report["config"]
    rows = [(k.replace("_", " "), "-" if v is None else (", ".join(v) or "-") if isinstance(v, list) else v)
            for k, v in cfg.items()]
    return ["## Configuration", ""] + table(["option", "value"], rows)


def _ranges_section(report: dict) -> list[str]:
    ranges = report.get("ranges") or {}
    out = ["## Calibrated ranges", ""]
    widths = sorted(((hi - lo, name, lo, hi) for name, (lo, hi) in ranges.items()), reverse=True)
    calib = report.get("calibration") or {}
    line = f"{len(ranges)} tensors, method **{report['ranges_method']}**"
    if calib.get("samples"):
        line += f", {calib['samples']} calibration samples"
    out.append(line + ".")
    if widths:
        out += ["", f"Widest {min(WIDEST_RANGES, len(widths))}:", ""]
        out += table(["tensor", "low", "high"],
                     [(n, _num(lo, 4), _num(hi, 4)) for _, n, lo, hi in widths[:WIDEST_RANGES]])
        narrow = widths[-1]
        out += ["", f"Narrowest: `{narrow[1]}` [{_num(narrow[2], 4)}, {_num(narrow[3], 4)}]."]
    return out


def _fusion_section(report: dict) -> list[str]:
    fusion = report.get("fusion")
    if not fusion:
        return []
    out = ["## Fused kernels (onnxruntime CPU, optimized graph)", ""]
    rows = [(op, n) for op, n in fusion["integer_compute"].items()]
    rows += [(op, n) for op, n in fusion["other_integer"].items()]
    float_ops = Counter(f["op"] for f in fusion["float_compute"])
    rows += [(f"{op} (float)", n) for op, n in sorted(float_ops.items())]
    out += table(["kernel", "count"], rows)
    fused = fusion["expected_integer"] - fusion["unfused"]
    out += ["", f"Integer Conv/Gemm/MatMul: {fused} of {fusion['expected_integer']} quantized ones fused"
                + (f"; not fused: {', '.join(fusion['unfused_nodes'])}" if fusion["unfused"] else "")
                + f". QuantizeLinear left: {fusion['quantize_linear']}, DequantizeLinear left: "
                  f"{fusion['dequantize_linear']}."]
    if fusion.get("islands"):
        islands = ", ".join(f"{i['op']} `{i['name']}`" for i in fusion["islands"])
        out.append(f"Float islands (DQ -> op -> Q): {islands}.")
    return out


def _accuracy_section(doc: dict) -> list[str]:
    acc, quality = doc.get("accuracy"), doc.get("quality")
    out = []
    if acc:
        out += ["## Accuracy", ""]
        out += table(["model", "top-1 %", "SQNR dB"],
                     [("FP32", _num(acc["fp32_top1"]), "-"), ("INT8", _num(acc["int8_top1"]), _num(acc["sqnr_db"], 1))])
        out += ["", f"Drop: **{_num(acc['drop'])} points** on {acc['samples']} samples of {acc['data']}."]
    if quality:
        out += ["", "### Outputs (float vs quantized, calibration samples)", ""] if acc else \
            ["## Outputs (float vs quantized, calibration samples)", ""]
        out += table(["output", "SQNR dB", "max abs error", "top-1 agreement"],
                     [(q["name"], _num(q["sqnr_db"], 1), _num(q["max_abs_error"], 4),
                       "-" if q["top1_agreement"] is None else f"{100 * q['top1_agreement']:.1f}%") for q in quality])
    return out


def _latency_section(doc: dict) -> list[str]:
    rows = doc.get("latency")
    if not rows:
        return []
    out = ["## Latency (onnxruntime CPU, interleaved timing)", ""]
    out += table(["batch", "FP32 ms", "INT8 ms", "speedup"],
                 [(r["batch"], _num(r["fp32_ms"], 3), _num(r["int8_ms"], 3), f"{r['speedup']:.2f}x") for r in rows])
    runs = rows[0].get("runs")
    if runs:
        out += ["", f"Median of {runs} runs per model; threads: {rows[0].get('threads') or 'onnxruntime default'}."]
    return out


def _fallback_section(report: dict) -> list[str]:
    fb = report.get("fallback")
    if not fb:
        return []
    budget = ", ".join(p for p in (f"max drop {fb['max_drop']:g} points" if fb["max_drop"] is not None else "",
                                   f"min SQNR {fb['min_sqnr']:g} dB" if fb["min_sqnr"] is not None else "") if p)
    out = ["## Accuracy budget", "", f"Budget: {budget} (measured on {fb['before']['samples']} samples of "
                                     f"{fb['data']}). **{'Met' if fb['met'] else 'NOT met'}**: {fb['message']}.", ""]
    rows = [("after quantization", _num(fb["before"]["top1"]), _num(fb["before"]["sqnr_db"], 1), "")]
    for step in fb["steps"]:
        rows.append((f"+ `{step['name']}` float", _num(step["after"]["top1"]), _num(step["after"]["sqnr_db"], 1),
                     f"rank {step['rank']}"))
    rows.append(("kept", _num(fb["after"]["top1"]), _num(fb["after"]["sqnr_db"], 1), ""))
    out += table(["model", "top-1 %", "SQNR dB", ""], rows)
    if fb["float_top1"] is not None:
        out += ["", f"FP32 top-1: {_num(fb['float_top1'])}%."]
    rr = fb.get("reduce_range")
    if rr:
        out += ["", f"reduce_range A/B: 7-bit weights {_num(rr['reduced']['top1'])}%, 8-bit weights "
                    f"{_num(rr['full']['top1'])}%: kept {'7-bit' if rr['reduce_range'] else '8-bit'} weights."]
    return out


def _float_section(report: dict) -> list[str]:
    floats = report.get("float_nodes") or []
    compute = [f for f in floats if f["op"] in COMPUTE_OPS]
    others = Counter((f["op"], f["reason"]) for f in floats if f["op"] not in COMPUTE_OPS)
    out = ["## Nodes left float", ""]
    if not floats:
        return out + ["None: every node runs between QuantizeLinear and DequantizeLinear."]
    if compute:
        out += table(["node", "op", "why"], [(f"`{f['name']}`", f["op"], f["reason"]) for f in compute])
    else:
        out.append("Every Conv/Gemm/MatMul is quantized.")
    if others:
        out += ["", "Other float nodes:", ""]
        out += table(["op", "count", "why"], [(op, n, why) for (op, why), n in sorted(others.items(),
                                                                                       key=lambda kv: -kv[1])])
    return out


def _sensitivity_section(doc: dict) -> list[str]:
    sens = doc.get("sensitivity")
    if not sens:
        return []
    with_acc = sens.get("quantized_top1") is not None
    out = ["## Per-node sensitivity", "",
           f"Output SQNR (dB, worst output vs FP32) with only this node quantized, and with only this node left "
           f"float (everything else quantized; all quantized: {_num(sens['quantized_sqnr'], 1)} dB"
           + (f", top-1 {_num(sens['quantized_top1'])}%" if with_acc else "")
           + f"), on {sens['samples']} samples of {sens['data']}; most sensitive first "
             f"({_num(sens.get('seconds'), 1)} s).", ""]
    nodes = sorted(sens["nodes"], key=lambda n: _sort_key(n, with_acc), reverse=True)
    headers = ["rank", "node", "op", "SQNR only quantized", "SQNR only float", "gain dB"]
    if with_acc:
        headers += ["top-1 only quantized", "top-1 only float", "gain points"]
    rows = []
    for i, n in enumerate(nodes, 1):
        row = [i, f"`{n['name']}`", n["op"], _num(n["sqnr_only_quantized"], 1), _num(n["sqnr_only_float"], 1),
               _signed(n.get("sqnr_gain"))]
        if with_acc:
            row += [_num(n["top1_only_quantized"]), _num(n["top1_only_float"]), _signed(n.get("top1_gain"))]
        rows.append(row)
    return out + table(headers, rows)


def _sort_key(n: dict, with_acc: bool):
    def f(v):
        if v is None:
            return -math.inf
        return float(v)

    return (f(n.get("top1_gain")), f(n.get("sqnr_gain"))) if with_acc else (f(n.get("sqnr_gain")),)


def render_markdown(doc: dict) -> str:
    """The markdown summary of one ``onnxopt quantize`` report document."""
    report = doc["report"]
    lines = [f"# INT8 quantization: `{doc['input']}` -> `{doc['output']}`", ""]
    cfg = report["config"]
    lines.append(f"{len(report['quantized_nodes'])} nodes between Q/DQ ({cfg['target']} target, "
                 f"{cfg['activations']} activations, {cfg['weights']} weights), "
                 f"{report['insert']['weights']} weight tensors stored as int8.")
    for section in (_config_section(report), _ranges_section(report), _fusion_section(report),
                    _accuracy_section(doc), _latency_section(doc), _fallback_section(report),
                    _float_section(report), _sensitivity_section(doc)):
        if section:
            lines += [""] + section
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


__all__ = ["render_markdown"]
