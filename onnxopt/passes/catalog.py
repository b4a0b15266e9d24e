"""Imports every built-in pass so the registry knows them, and names the pipelines."""

from __future__ import annotations

# one module per pass; importing registers it
from onnxopt.passes import (  # noqa: F401
    conv_add_bias,
    dead_code,
    dedup_initializers,
    equalize_cross_layer,
    fold_batchnorm,
    fold_constants,
    fold_shape_subgraphs,
    fuse_matmul_add,
    fuse_scale_into_conv,
    reduce_mean_to_gap,
    remove_identity,
    simplify_reshapes,
)
from onnxopt.passes.base import PassManager, create_pass, register_factory
from onnxopt.quantize import qdq as _quantize_qdq  # noqa: F401,E402  (registers insert_qdq)
from onnxopt.prune import structured as _prune_structured  # noqa: F401,E402  (registers prune_structured)
from onnxopt.prune import unstructured as _prune_unstructured  # noqa: F401,E402  (registers prune_unstructured)
from onnxopt.pipeline import steps as _pipeline_steps  # noqa: F401,E402  (prune, distill, quantize, check, report)

#: the default ``optimize`` pipeline, run to a fixed point
CLEANUP_PASSES: tuple[str, ...] = (
    "remove_identity",
    "fold_constants",
    "fold_shape_subgraphs",
    "simplify_reshapes",
    "reduce_mean_to_gap",
    "fold_batchnorm",
    "fuse_scale_into_conv",
    "fuse_conv_add_bias",
    "fuse_matmul_add",
    "merge_duplicate_initializers",
    "remove_dead_code",
)


def cleanup(fixed_point: bool = True, max_iterations: int = 10) -> PassManager:
    """The graph-cleanup pipeline (all cleanup passes, to a fixed point)."""
    return PassManager([create_pass(n) for n in CLEANUP_PASSES], fixed_point=fixed_point,
                       max_iterations=max_iterations, name="cleanup")


register_factory("cleanup", cleanup)
