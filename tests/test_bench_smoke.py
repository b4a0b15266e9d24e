"""Smoke test of the side-by-side benchmarks (tools/bench/quantize.py, tools/bench/prune.py) in --quick mode.

Each script runs as a subprocess, as a user runs it, on one small model with
64 eval samples and 2 timed runs; the JSON must hold the expected rows with
finite numbers, the markdown and PNG must exist, and a quantizer that does
not import must be reported as missing, not skipped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_MPL = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True).returncode == 0


def run_script(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / name), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_outputs(out: Path, name: str, stdout: str) -> dict:
    doc = json.loads((out / f"{name}.json").read_text())
    md = (out / f"{name}.md").read_text()
    assert md.startswith(f"# {name}") and "| model |" in md
    assert "| model |" in stdout  # the table is printed too
    if HAVE_MPL:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    env = doc["meta"]["environment"]
    assert env["onnxruntime"] != "missing" and env["cpu_count"] >= 1 and env["cpu_model"]
    log = doc["meta"]["disturbance_log"]
    assert log and all(r["kept"] in (True, False) for r in log)
    assert all(finite(r["others_cores"]) and r["others_cores"] >= 0 for r in log if r["others_cores"] is not None)
    return doc


def test_quantize_quick(tmp_path):
    out = tmp_path / "q"
    proc = run_script("quantize.py", out)
    doc = check_outputs(out, "quantize", proc.stdout)
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["fp32", "ort-minmax", "ort-minmax+pre", "onnxopt-minmax"]
    for label, r in rows.items():
        for col in ("top1", "b1_ms", "b1_p90", "b64_ms", "b64_p90", "b1_vs_fp32", "b64_vs_fp32", "size_kb"):
            assert finite(r[col]), (label, col, r[col])
        assert 0.0 <= r["top1"] <= 100.0 and r["b64_p90"] >= r["b64_ms"] > 0
        assert len(r["b64_latencies_ms"]) == 2
    assert rows["fp32"]["b64_vs_fp32"] == 1.0 and rows["fp32"]["drop_pts"] == 0.0
    for label in ("ort-minmax", "ort-minmax+pre", "onnxopt-minmax"):
        r = rows[label]
        assert finite(r["quant_s"]) and finite(r["total_s"]) and r["total_s"] >= r["quant_s"] > 0
        assert finite(r["peak_rss_mb"]) and r["peak_rss_mb"] > 10
        assert r["int_kernels"] > 0  # the quantized graphs really run integer kernels
        assert r["size_kb"] < rows["fp32"]["size_kb"]
    assert rows["ort-minmax"]["pre_s"] is None and rows["ort-minmax+pre"]["pre_s"] > 0
    assert rows["ort-minmax+pre"]["total_s"] == pytest.approx(rows["ort-minmax+pre"]["pre_s"]
                                                              + rows["ort-minmax+pre"]["quant_s"])
    assert doc["meta"]["missing"] == {}


def test_quantize_reports_a_missing_quantizer(tmp_path):
    out = tmp_path / "q"
    proc = run_script("quantize.py", out, "--quantizers", "onnxopt", "--onnxopt-module", "onnxopt_no_such_module")
    doc = check_outputs(out, "quantize", proc.stdout)
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["fp32", "onnxopt-minmax"]
    missing = rows["onnxopt-minmax"]
    assert missing["top1"].startswith("missing: onnxopt_no_such_module does not import")
    assert missing["b64_ms"] == "missing"
    assert "onnxopt_no_such_module" in doc["meta"]["missing"]["onnxopt"]
    assert finite(rows["fp32"]["top1"]) and finite(rows["fp32"]["b64_ms"])
    assert "missing: onnxopt_no_such_module" in (out / "quantize.md").read_text()


def test_prune_quick(tmp_path):
    out = tmp_path / "p"
    proc = run_script("prune.py", out)
    doc = check_outputs(out, "prune", proc.stdout)
    rows = doc["rows"]
    assert [(r["importance"], r["ratio"] if not r.get("target_macs") else "macs") for r in rows] == \
        [("-", 0.0), ("l1", 0.5), ("random", 0.5), ("l1", "macs")]
    base = rows[0]
    for r in rows:
        for col in ("top1", "macs_m", "macs_frac", "params_k", "size_kb", "b64_ms", "b64_p90", "b64_vs_base"):
            assert finite(r[col]), (r["importance"], col, r[col])
    for r in rows[1:]:
        assert r["macs"] < base["macs"] and r["params"] < base["params"] and r["size_kb"] < base["size_kb"]
        assert finite(r["drop_pts"])
    # the same ratio under two criteria gives the same shapes: timed once, numbers shared
    assert rows[1]["timed_as"] == rows[2]["timed_as"] == "l1 r0.5"
    assert rows[1]["macs"] == rows[2]["macs"]
    target = rows[3]
    assert target["target_macs"] == 0.5 and target["macs_frac"] <= 0.5 + 1e-9
