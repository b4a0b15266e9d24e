"""Imports every pipeline step so the pass registry knows them (``onnxopt.passes.catalog`` imports this)."""

from onnxopt.pipeline import (  # noqa: F401
    check_step,
    distill_step,
    prune_step,
    quantize_step,
    report_step,
)
