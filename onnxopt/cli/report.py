"""Printing helpers the commands share: aligned tables, human numbers, JSON, progress bars.

Commands compute dataclasses (``onnxopt.analysis``, ``onnxopt.runtime``) and
use these helpers to show them, so every command formats numbers the same way
and writes JSON the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import numpy as np

from onnxopt.errors import OnnxoptError

STDOUT = "-"  # the --json value that means "to stdout"


# -- numbers ------------------------------------------------------------------
def human_count(n: int | float | None) -> str:
    """1234567 -> '1.23M' (SI prefixes, for parameter and MAC counts)."""
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}" if n == int(n) else f"{n:.2f}"


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def format_shape(shape: Sequence | None) -> str:
    """['N', 3, 224, 224] -> '[N, 3, 224, 224]'; unknown dims as '?', unknown rank as '?'."""
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_float(x: float | None, digits: int = 3) -> str:
    """A compact float: fixed point when moderate, scientific when tiny or huge."""
    if x is None:
        return "n/a"
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits}f}"
    return f"{x:.{digits - 1}e}"


def format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- tables -------------------------------------------------------------------
def _is_number(text: str) -> bool:
    t = text.replace(",", "").rstrip("x%").strip()
    try:
        float(t)
        return True
    except ValueError:
        return False


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: int = 0) -> str:
    """An aligned text table; columns whose cells are all numbers are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    cols = len(headers)
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row[:cols]):
            widths[i] = max(widths[i], len(c))
    blank = ("", "-", "?", "n/a")
    numeric = [bool(cells) and all(_is_number(r[i]) or r[i] in blank for r in cells) for i in range(cols)]
    pad = " " * indent

    def line(row: Sequence[str]) -> str:
        parts = [(c.rjust(w) if num else c.ljust(w)) for c, w, num in zip(row, widths, numeric)]
        return (pad + "  ".join(parts)).rstrip()

    out = [line(list(headers)), pad + "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def format_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """'Key  value' lines with the keys aligned (a two-column table without headers)."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


# -- JSON ---------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, paths and non-finite floats as plain JSON values.

    JSON has no NaN/Infinity, so non-finite floats become the strings
    ``"nan"``, ``"inf"``, ``"-inf"`` (a strict parser then still reads the file).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, dest: str | Path) -> None:
    """Write ``obj`` as JSON to ``dest`` (``-`` = stdout); a file is replaced atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    if str(dest) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(Path(dest), text)


def write_text(path: Path, text: str) -> None:
    """Write a report file atomically (a temp file beside it, then ``os.replace``)."""
    path = Path(path)
    if path.is_dir():
        raise OnnxoptError(f"report path {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxoptError(f"report folder {parent} does not exist")
    tmp = parent / f".{path.name}.tmp{os.getpid()}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- human output -------------------------------------------------------------
class Printer:
    """Where a command's human-readable text goes.

    Silent with ``--quiet``, and also when the JSON report goes to stdout (so
    stdout stays one parseable JSON document).
    """

    def __init__(self, *, quiet: bool = False, json_dest: str | None = None, stream: TextIO | None = None):
        self.enabled = not quiet and json_dest != STDOUT
        self.quiet = quiet
        self._stream = stream

    def __call__(self, text: str = "") -> None:
        if self.enabled:
            print(text, file=self._stream or sys.stdout)

    def section(self, title: str) -> None:
        self("")
        self(title)


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(total: int | None, desc: str, *, quiet: bool = False, unit: str = "it"):
    """A tqdm bar on stderr, shown only on a terminal and never with ``--quiet``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=quiet or not stderr_is_tty(), dynamic_ncols=True)
