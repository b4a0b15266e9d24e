"""Turn ``Conv`` + ``Add`` (or ``Sub``) of a per-channel constant into the Conv's bias.

Exporters often emit a bias-less Conv followed by an Add of a ``[C,1,1]`` or
``[1,C,1,1]`` constant; the Conv's own bias does the same in one op. This is
the bias-only subset of ``fuse_scale_into_conv`` and shares its matching and
math (:mod:`onnxopt.passes._conv_affine`), so a pipeline without the scale
pass still gets its biases folded.
"""

from __future__ import annotations

from onnxopt.passes._conv_affine import ConvElementwiseFusion
from onnxopt.passes.base import register


@register
class FuseConvAddBias(ConvElementwiseFusion):
    name = "fuse_conv_add_bias"
    summary = "fold an Add/Sub of a per-channel constant after a Conv into the Conv bias"
    fused_ops = ("Add", "Sub")
