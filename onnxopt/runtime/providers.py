"""Execution providers as data: short names, ORT names, and what each can run.

Other modules (quantization placement, the CLI) read this table instead of
branching on provider names.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxopt.errors import UnsupportedError


@dataclass(frozen=True)
class ProviderInfo:
    short: str
    ort_name: str
    device: str
    int8_conv: bool  # has integer Conv/Gemm kernels for QDQ graphs
    fp16: bool
    note: str = ""


PROVIDERS: tuple[ProviderInfo, ...] = (
    ProviderInfo("cpu", "CPUExecutionProvider", "cpu", int8_conv=True, fp16=False,
                 note="QLinearConv/QGemm/MatMulInteger kernels (MLAS); AVX2 without VNNI benefits from reduce_range"),
    ProviderInfo("cuda", "CUDAExecutionProvider", "gpu", int8_conv=False, fp16=True,
                 note="no INT8 convolution kernels: QDQ Conv runs as DequantizeLinear + float Conv; use FP16"),
    ProviderInfo("tensorrt", "TensorrtExecutionProvider", "gpu", int8_conv=True, fp16=True,
                 note="explicit-quantization QDQ networks; symmetric int8"),
    ProviderInfo("dml", "DmlExecutionProvider", "gpu", int8_conv=False, fp16=True),
    ProviderInfo("openvino", "OpenVINOExecutionProvider", "cpu", int8_conv=True, fp16=True),
    ProviderInfo("coreml", "CoreMLExecutionProvider", "npu", int8_conv=False, fp16=True),
)

_BY_NAME = {p.short: p for p in PROVIDERS} | {p.ort_name: p for p in PROVIDERS} | {p.ort_name.lower(): p for p in PROVIDERS}


def provider_info(name: str) -> ProviderInfo:
    info = _BY_NAME.get(name) or _BY_NAME.get(name.lower())
    if info is None:
        raise UnsupportedError(f"unknown execution provider {name!r}; known: {', '.join(p.short for p in PROVIDERS)}")
    return info


def parse_providers(text: str | list[str] | None) -> list[ProviderInfo]:
    """``"cpu,cuda"`` -> provider infos (default: cpu)."""
    if not text:
        return [provider_info("cpu")]
    items = text if isinstance(text, list) else [t for part in text.split(",") for t in [part.strip()] if t]
    return [provider_info(t) for t in items]


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
