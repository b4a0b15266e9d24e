"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

BN in inference is ``y * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``,
a per-channel affine map, so the layer that produces ``y`` can absorb it into
its weight and bias (:func:`onnxopt.passes._conv_affine.fold_channel_affine`
does the per-op weight layout: Conv rows, ConvTranspose per-group columns,
Gemm's feature axis). Folded only when the layer's output feeds this BN alone
and is no graph output, every parameter is constant, and the BN is in
inference form (training_mode 0, only output 0 used, ``spatial`` 1).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ir.edit import bypass, is_graph_io
from onnxopt.ir.model import Model
from onnxopt.passes._conv_affine import (bias_is_foldable, float_constant, fold_channel_affine, foldable_output,
                                         output_channels)
from onnxopt.passes.base import Pass, PassResult, register


def _is_inference_bn(graph: gs.Graph, bn: gs.Node) -> bool:
    if int(bn.attrs.get("training_mode", 0)) or not int(bn.attrs.get("spatial", 1)) or len(bn.inputs) != 5:
        return False
    return all(not t.outputs and not is_graph_io(graph, t) for t in bn.outputs[1:])


def _bn_affine(bn: gs.Node, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, shift)`` of an inference BN over ``channels`` channels, in float64."""
    params = [float_constant(t) for t in bn.inputs[1:5]]
    if any(p is None or p.shape != (channels,) for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


@register
class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    summary = "fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm"

    def run(self, model: Model) -> PassResult:
        g = model.graph
        folded = 0
        for bn in list(g.nodes):
            if bn.op != "BatchNormalization" or not bn.outputs or not _is_inference_bn(g, bn):
                continue
            src = bn.inputs[0]
            layer = src.inputs[0] if len(src.inputs) == 1 else None
            if layer is None or not foldable_output(g, layer, bn) or not bias_is_foldable(layer):
                continue
            channels = output_channels(layer)
            affine = _bn_affine(bn, channels) if channels is not None else None
            if affine is None:
                continue
            fold_channel_affine(model, layer, *affine)
            bypass(g, bn, src=src)  # cannot refuse: the layer's output is internal
            folded += 1
        if folded:
            g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(model, folded > 0, {"folded": folded})
