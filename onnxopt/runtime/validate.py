"""The validation every model onnxopt writes must pass before it is moved into place."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxopt.errors import CheckFailed
from onnxopt.runtime.session import make_session


def validate_model_file(path: Path) -> None:
    """Raise CheckFailed unless ``path`` passes the onnx full check and loads in onnxruntime (CPU)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckFailed(f"the written model fails the onnx checker: {first}") from exc
    make_session(Path(path), "cpu")  # raises CheckFailed with onnxruntime's reason


def input_files(path: Path) -> list[Path]:
    """The input model and its external-data files: what saving must never overwrite."""
    from onnxopt.analysis.summary import external_data_files

    return [Path(path), *external_data_files(Path(path))]


def save_validated(model, out, *, external_data: bool | None = None, protect=()) -> Path:
    """Save ``model`` atomically to ``out`` after it passed :func:`validate_model_file`.

    On failure nothing reaches ``out``; the input files in ``protect`` are never overwritten.
    """
    from onnxopt.ir.io import save_model

    def _validate(tmp: Path) -> None:
        try:
            validate_model_file(tmp)
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}; nothing was written to {out}") from exc

    return save_model(model, out, external_data=external_data, protect=protect, validate=_validate)
