"""The pipeline report as JSON (for tools), markdown (for people) and a PNG of accuracy against latency."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxopt.pipeline.measure import MeasureSettings, StageMeasurement

REPORT_FORMAT = "onnxopt-pipeline-report"
REPORT_VERSION = 1


@dataclass
class StepSummary:
    """What the step that produced a stage did (from its pass record)."""

    name: str
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class PipelineReport:
    input: str
    output: str | None
    pipeline: str
    data: dict[str, str | None]
    settings: MeasureSettings
    stages: list[StageMeasurement]
    steps: list[StepSummary]
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        base = self.stages[0] if self.stages else None
        stages = []
        for m in self.stages:
            d = asdict(m)
            d["latency"] = [{**asdict(lat), "per_sample_ms": lat.per_sample_ms} for lat in m.latency]
            d["top1_drop"] = (base.top1 - m.top1) if base is not None and None not in (base.top1, m.top1) else None
            d["macs_ratio"] = m.macs / base.macs if base is not None and base.macs else None
            d["size_ratio"] = m.file_bytes / base.file_bytes if base is not None and base.file_bytes else None
            stages.append(d)
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "input": self.input, "output": self.output,
                "pipeline": self.pipeline, "data": self.data,
                "settings": {**asdict(self.settings), "batch_sizes": list(self.settings.batch_sizes),
                             "provider": "cpu"},
                "stages": stages, "steps": [asdict(s) for s in self.steps], "failures": self.failures,
                "notes": self.notes}


def _num(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{fmt}}{suffix}"


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def stage_table(stages: list[StageMeasurement]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the stage table (markdown in the report, the same rows on the terminal)."""
    batches = sorted({lat.batch for m in stages for lat in m.latency})
    header = ["stage", "top-1", "drop", *[f"batch {b} (ms)" for b in batches], "MACs", "params", "file"]
    base = stages[0].top1 if stages else None
    rows = []
    for m in stages:
        drop = base - m.top1 if None not in (base, m.top1) else None
        lats = [m.latency_at(b) for b in batches]
        rows.append([m.stage, _num(m.top1, suffix="%"), _num(drop, "+.2f"),
                     *[_num(lat.median_ms if lat else None, ".3f") for lat in lats],
                     _count(m.macs), _count(m.params), _bytes(m.file_bytes)])
    return header, rows


def markdown(report: PipelineReport, png: Path | None) -> str:
    header, rows = stage_table(report.stages)
    s = report.settings
    lines = [f"# Pipeline report: {report.pipeline}", "",
             f"- input: `{report.input}`", f"- output: `{report.output}`" if report.output else "- output: -",
             *[f"- {k} data: `{v}`" for k, v in report.data.items() if v],
             (f"- latency: onnxruntime CPU, {s.threads} threads, median of {s.runs} runs per batch size "
              "(stages interleaved, fresh sessions)"),
             (f"- top-1 on {report.stages[0].eval_samples if report.stages else 0} eval samples; drop in "
              "percentage points against the input"), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
             *["| " + " | ".join(r) + " |" for r in rows], ""]
    if report.steps:
        lines += ["## Steps", "", "| step | time (s) | stats |", "|---|---|---|"]
        for st in report.steps:
            stats = ", ".join(f"{k}={v:g}" for k, v in st.stats.items() if v) or "-"
            lines.append(f"| {st.name} | {st.seconds:.1f} | {stats} |")
        lines.append("")
    if png is not None:
        lines += [f"![accuracy against latency]({png.name})", ""]
    for f in report.failures:
        lines.append(f"**FAILED**: {f}")
    for n in report.notes:
        lines.append(f"- note: {n}")
    return "\n".join(lines).rstrip() + "\n"


def plot(report: PipelineReport, path: Path) -> bool:
    """Top-1 against latency (one panel per batch size), one labelled point per stage; False if impossible."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if not report.stages or any(m.top1 is None for m in report.stages):
        return False
    batches = [b for b in report.settings.batch_sizes if any(m.latency_at(b) for m in report.stages)]
    if not batches:
        return False
    fig = Figure(figsize=(5.5 * len(batches), 4.5), dpi=100)
    FigureCanvasAgg(fig)  # the OO API: no pyplot, no global backend state
    for i, b in enumerate(batches, 1):
        ax = fig.add_subplot(1, len(batches), i)
        pts = [(m.latency_at(b).median_ms / b, m.top1, m.stage) for m in report.stages if m.latency_at(b)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.7", zorder=1)
        for x, y, label in pts:
            ax.scatter([x], [y], zorder=2)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(f"latency per sample at batch {b} (ms, CPU {report.settings.threads} threads)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"batch {b}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{report.pipeline}: accuracy against latency")
    fig.tight_layout()
    fig.savefig(str(path))
    return True


def write_report(report: PipelineReport, json_path: Path) -> list[Path]:
    """``json_path`` plus the markdown (``.md``) and plot (``.png``) beside it; returns the files written."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png = json_path.with_suffix(".png")
    written = []
    if plot(report, png):
        written.append(png)
    else:
        png = None
        report.notes.append("no plot: it needs matplotlib (pip install matplotlib) and top-1 for every stage "
                            "(labelled eval data)")
    md = json_path.with_suffix(".md")
    md.write_text(markdown(report, png))
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return [json_path, md, *written]
