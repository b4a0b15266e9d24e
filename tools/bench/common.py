"""Small helpers every benchmark script shares: results files, statistics, peer tools.

Each benchmark writes ``DIR/<name>.json`` (every row with every field, plus the
environment, for later comparison) and ``DIR/<name>.md`` (a markdown table of
the chosen columns, for reading). A peer tool that is not installed is reported
as :data:`MISSING` in its cells, never skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: the cell value for a peer tool that is not installed
MISSING = "missing"


def peer_available(module: str) -> bool:
    """True if ``module`` (a peer tool such as ``onnxslim``) can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def peer_version(module: str) -> str:
    """The peer's ``__version__``, ``MISSING`` when it is not installed."""
    if not peer_available(module):
        return MISSING
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception as exc:  # an installed but broken peer is worth seeing
        return f"broken ({type(exc).__name__})"


def median_p90(values: Iterable[float]) -> tuple[float, float]:
    """Median and 90th percentile (linear interpolation); NaN for no values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(np.median(arr)), float(np.percentile(arr, 90))


def environment(peers: Sequence[str] = ()) -> dict:
    """Versions and machine facts recorded beside every result."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
    for mod in ("onnx", "onnxruntime", "onnx_graphsurgeon", "numpy", *peers):
        env[mod] = peer_version(mod)
    return env


def format_cell(value) -> str:
    """Readable markdown cell: floats to 4 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of ``columns`` (header = column key) over ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_results(out_dir, name: str, rows: Sequence[dict], columns: Sequence[str], *,
                  meta: dict | None = None) -> str:
    """Write ``out_dir/name.json`` (all rows, all fields, ``meta``) and ``out_dir/name.md``; return the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    payload = {"benchmark": name, "columns": list(columns), "meta": meta or {}, "rows": list(rows)}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    (out / f"{name}.md").write_text(f"# {name}\n\n{table}")
    return table
