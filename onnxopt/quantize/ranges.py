"""Calibrated activation ranges, saved as JSON so CI can re-apply them without data.

A :class:`Ranges` maps tensor name -> ``(lo, hi)`` (the real-valued clipping
range before it is widened to include 0 and turned into scale/zero point),
and records the method and activation scheme that produced it and a
fingerprint of the float model it was computed on: ranges from another
model (other weights, other tensor names) are refused on load.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxopt.analysis.jsonfile import check_format, read_json
from onnxopt.errors import DataError

FORMAT = "onnxopt-ranges"
VERSION = 1


def model_fingerprint(model) -> str:
    """sha256 of the float model's deterministic serialization (structure and weights)."""
    proto = model.to_onnx()
    data = proto.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class Ranges:
    tensors: dict[str, tuple[float, float]]
    method: str
    activations: str
    fingerprint: str
    samples: int | None = None
    extra: dict = field(default_factory=dict)  # e.g. percentile used

    def __post_init__(self):
        self.tensors = {str(k): (float(lo), float(hi)) for k, (lo, hi) in self.tensors.items()}
        for name, (lo, hi) in self.tensors.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise DataError(f"range for tensor {name!r} is invalid: ({lo}, {hi})")

    def __getitem__(self, name: str) -> tuple[float, float]:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "method": self.method, "activations": self.activations,
                "fingerprint": self.fingerprint, "samples": self.samples, "extra": self.extra,
                "tensors": {k: [lo, hi] for k, (lo, hi) in sorted(self.tensors.items())}}

    def save(self, path) -> Path:
        from onnxopt.cli.report import write_text

        path = Path(path)
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, doc: dict, where: str = "ranges") -> Ranges:
        check_format(doc, FORMAT, VERSION, where, "ranges")
        tensors = doc.get("tensors")
        if not isinstance(tensors, dict):
            raise DataError(f"{where}: 'tensors' must map tensor names to [lo, hi]")
        parsed = {}
        for name, pair in tensors.items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)):
                raise DataError(f"{where}: range of tensor {name!r} must be [lo, hi], got {pair!r}")
            parsed[name] = (float(pair[0]), float(pair[1]))
        return cls(parsed, str(doc.get("method", "?")), str(doc.get("activations", "?")),
                   str(doc.get("fingerprint", "")), doc.get("samples"), dict(doc.get("extra") or {}))

    @classmethod
    def load(cls, path) -> Ranges:
        return cls.from_json(read_json(path, "ranges"), str(path))

    def check_applies_to(self, fingerprint: str, needed, where: str = "ranges") -> None:
        """Refuse ranges computed for another model or missing a tensor the plan needs."""
        if self.fingerprint and fingerprint and self.fingerprint != fingerprint:
            raise DataError(f"{where} were calibrated on a different model (fingerprint {self.fingerprint[:12]}, this "
                            f"model after cleanup is {fingerprint[:12]}); recalibrate with --calib")
        missing = [n for n in needed if n not in self.tensors]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"{where} have no range for tensor {missing[0]!r}{more}; recalibrate with --calib")

    def summary(self) -> dict:
        widths = np.array([hi - lo for lo, hi in self.tensors.values()]) if self.tensors else np.zeros(0)
        return {"tensors": len(self.tensors), "method": self.method, "activations": self.activations,
                "widest": float(widths.max()) if widths.size else None,
                "narrowest": float(widths.min()) if widths.size else None}
