"""Fold Mul/Div/Add/Sub by a per-channel constant that follows a Conv into its weight and bias.

``conv(x) * c`` is ``conv'(x)`` with every output channel's weights and bias
scaled by ``c``; ``+ c`` / ``- c`` only move the bias; ``/ c`` scales by
``1/c`` (never when ``c`` has a zero). Exact only when ``c`` varies along the
channel axis alone, so ``[C,1,1]``, ``[1,C,1,1]``, ``[1]`` and scalars qualify
and anything batch- or spatial-shaped stays. The matching and the weight math
are shared with ``fuse_conv_add_bias`` in :mod:`onnxopt.passes._conv_affine`.
"""

from __future__ import annotations

from onnxopt.passes._conv_affine import ConvElementwiseFusion
from onnxopt.passes.base import register


@register
class FuseScaleIntoConv(ConvElementwiseFusion):
    name = "fuse_scale_into_conv"
    summary = "fold Mul/Div/Add/Sub by a per-channel constant into the preceding Conv"
    fused_ops = ("Mul", "Div", "Add", "Sub")
