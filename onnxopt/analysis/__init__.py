"""Analyses of a model that commands and reports share (nothing here prints)."""

from onnxopt.analysis.summary import (
    MacsSummary,
    ModelSummary,
    NodeMacs,
    TensorInfo,
    compute_macs,
    model_file_bytes,
    parameter_stats,
    summarize,
)

__all__ = ["MacsSummary", "ModelSummary", "NodeMacs", "TensorInfo", "compute_macs", "model_file_bytes",
           "parameter_stats", "summarize"]
