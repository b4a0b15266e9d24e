"""What to quantize and how: a typed configuration, validated once.

Every choice is an enum or a plain typed field so the CLI, a recipe step and
the Python API build the same object. ``resolved()`` turns the "auto"
defaults (activation scheme and reduce_range follow the target and the host
CPU) into concrete values and says why in ``notes``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxopt.errors import OnnxoptError, UnsupportedError


class Method(str, enum.Enum):
    """How an activation's clipping range is chosen from calibration data."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"

    @property
    def uses_histogram(self) -> bool:
        return self is not Method.MINMAX


class Activations(str, enum.Enum):
    """Activation scheme: uint8 with a zero point, or int8 with zero point 0."""

    ASYMMETRIC = "asymmetric"
    SYMMETRIC = "symmetric"


class Weights(str, enum.Enum):
    """Weight scale granularity (weights are always int8 symmetric)."""

    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"


class BiasCorrection(str, enum.Enum):
    """Empirical bias correction after Q/DQ insertion (:mod:`onnxopt.quantize.bias_correction`)."""

    OFF = "off"
    ONE_SHOT = "one-shot"      # each layer's own error, one calibration pass
    SEQUENTIAL = "sequential"  # layer by layer against the float model, one pass per layer (slower, stronger)


class Target(str, enum.Enum):
    """The runtime the QDQ graph is shaped for (see :mod:`onnxopt.quantize.placement`)."""

    CPU = "cpu"
    TENSORRT = "tensorrt"


#: targets users ask for that have no INT8 path, with the reason
UNSUPPORTED_TARGETS: dict[str, str] = {
    "cuda": "the CUDA execution provider has no INT8 convolution kernels (a QDQ Conv runs as DequantizeLinear + "
            "float Conv, slower than FP32); use FP16 for CUDA, or --target tensorrt for INT8 on NVIDIA GPUs",
}


def parse_target(text: str) -> Target:
    key = text.strip().lower()
    if key in UNSUPPORTED_TARGETS:
        raise UnsupportedError(f"INT8 target {key!r} is not supported: {UNSUPPORTED_TARGETS[key]}")
    try:
        return Target(key)
    except ValueError:
        raise UnsupportedError(f"unknown INT8 target {text!r}; choose {', '.join(t.value for t in Target)}") from None


def host_has_vnni() -> bool:
    """True if this CPU has AVX-512 VNNI or AVX-VNNI (u8*s8 dot products without int16 saturation)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class QuantizeConfig:
    """Options for :func:`onnxopt.quantize.quantize` and the ``insert_qdq`` pass.

    ``activations=None`` means the target's default (cpu: asymmetric uint8,
    tensorrt: symmetric int8). ``reduce_range=None`` means auto: 7-bit weights
    on a CPU target when this host lacks VNNI (AVX2's u8*s8 multiply-add
    saturates int16 with full 8-bit weights), full range otherwise.

    The accuracy budget (see :mod:`onnxopt.quantize.fallback`): ``max_drop``
    is the most top-1 accuracy (percentage points, on labelled eval data) the
    quantized model may lose against the float one, ``min_sqnr`` the least
    output SQNR (dB, no labels needed). When quantization misses the budget,
    the most sensitive Conv/Gemm/MatMul are left float one by one until it is
    met. ``max_drop`` with auto ``reduce_range`` on a CPU without VNNI also
    tries both weight ranges and keeps the more accurate one.

    ``equalize`` runs cross-layer equalization (the ``equalize_cross_layer``
    pass) on the float model first; ``bias_correction`` removes the mean
    output shift quantization adds to each Conv/Gemm, measured on the
    calibration data.
    """

    method: Method = Method.MINMAX
    activations: Activations | None = None
    weights: Weights = Weights.PER_CHANNEL
    reduce_range: bool | None = None
    target: Target = Target.CPU
    exclude: tuple[str, ...] = ()
    percentile: float = 99.999
    moving_average: bool = False
    averaging_constant: float = 0.01
    num_bins: int = 2048
    batch_size: int = 16
    threads: int | None = None
    max_drop: float | None = None
    min_sqnr: float | None = None
    equalize: bool = False
    bias_correction: BiasCorrection = BiasCorrection.OFF
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        for name, enum_type in (("method", Method), ("weights", Weights), ("target", Target),
                                ("bias_correction", BiasCorrection)):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                object.__setattr__(self, name, _coerce(enum_type, value, name))
        if self.activations is not None and not isinstance(self.activations, Activations):
            object.__setattr__(self, "activations", _coerce(Activations, self.activations, "activations"))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise OnnxoptError(f"percentile must be in (50, 100], got {self.percentile}")
        if not 0.0 < float(self.averaging_constant) <= 1.0:
            raise OnnxoptError(f"averaging constant must be in (0, 1], got {self.averaging_constant}")
        if self.num_bins < 256 or self.num_bins % 2:
            raise OnnxoptError(f"histogram bins must be an even number >= 256, got {self.num_bins}")
        if self.batch_size < 1:
            raise OnnxoptError("calibration batch size must be >= 1")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise OnnxoptError(f"max_drop is a top-1 budget in percentage points >= 0, got {self.max_drop}")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise OnnxoptError(f"min_sqnr must be a finite number of dB, got {self.min_sqnr}")
        if self.target is Target.TENSORRT and self.activations is Activations.ASYMMETRIC:
            raise UnsupportedError("TensorRT takes symmetric int8 activations only; use --activations symmetric "
                                   "(or leave it out) with --target tensorrt")

    def resolved(self) -> QuantizeConfig:
        """A copy with every auto choice made, and a note for each."""
        notes = list(self.notes)
        activations = self.activations
        if activations is None:
            activations = Activations.SYMMETRIC if self.target is Target.TENSORRT else Activations.ASYMMETRIC
        reduce_range = self.reduce_range
        if reduce_range is None:
            if self.target is Target.CPU and not host_has_vnni():
                reduce_range = True
                notes.append("reduce_range on (7-bit weights): this CPU has no VNNI, so full 8-bit weights could "
                             "saturate AVX2's int16 multiply-add; pass --no-reduce-range for a VNNI deployment CPU")
            else:
                reduce_range = False
        return replace(self, activations=activations, reduce_range=reduce_range, notes=tuple(notes))

    def describe(self) -> dict:
        """Plain values for reports and the ranges file."""
        r = self.resolved()
        return {
            "method": r.method.value,
            "activations": r.activations.value,
            "weights": r.weights.value,
            "reduce_range": r.reduce_range,
            "target": r.target.value,
            "exclude": list(r.exclude),
            "percentile": r.percentile if r.method is Method.PERCENTILE else None,
            "moving_average": r.moving_average if r.method is Method.MINMAX else None,
            "max_drop": r.max_drop,
            "min_sqnr": r.min_sqnr,
            "equalize": r.equalize,
            "bias_correction": r.bias_correction.value,
        }

    @property
    def has_budget(self) -> bool:
        """True when an accuracy budget (``max_drop`` or ``min_sqnr``) asks for a fallback check."""
        return self.max_drop is not None or self.min_sqnr is not None

    def wants_reduce_range_ab(self) -> bool:
        """Try 7-bit and 8-bit weights and keep the more accurate: ``max_drop`` with auto reduce_range on
        a CPU target on a host without VNNI (where the auto choice is a guess about saturation)."""
        return (self.max_drop is not None and self.reduce_range is None and self.target is Target.CPU
                and not host_has_vnni())


def _coerce(enum_type, value, name):
    if name == "target" and isinstance(value, str):
        return parse_target(value)
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        raise OnnxoptError(f"unknown {name} {value!r}; choose {', '.join(e.value for e in enum_type)}") from None
