"""Saved analyses (ranges, sensitivity, pruning plans) as versioned JSON files: one reader, one format check.

Each analysis file carries ``"format"`` (what it is) and ``"version"``; a CI
run re-applies it without data, so a wrong or newer file must fail with one
line naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from onnxopt.errors import DataError


def read_json(path, what: str) -> object:
    """The parsed JSON of ``path``; a missing or unreadable file is a :class:`DataError` naming ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON (a {what} file was expected): {exc}") from exc


def check_format(doc, fmt: str, version: int, where: str, what: str) -> dict:
    """``doc`` if it is a dict with ``"format": fmt`` and a version this code reads, else a one-line DataError."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise DataError(f"{where}: not an onnxopt {what} file (no \"format\": \"{fmt}\")")
    try:
        got = int(doc.get("version", 0))
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} format version {doc.get('version')!r} is not a number") from None
    if got > version:
        raise DataError(f"{where}: {what} format version {got} is newer than this onnxopt reads ({version})")
    return doc
