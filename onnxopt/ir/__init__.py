"""IR: a thin wrapper over onnx-graphsurgeon (``Model``), safe I/O, shapes, opsets."""

from onnxopt.ir.io import load_model, read_proto, save_model, save_proto, structural_problems
from onnxopt.ir.model import Model, ModelMeta, constant_array, slice_channels
from onnxopt.ir.opset import ensure_opset, upgrade_opset
from onnxopt.ir.shapes import infer_shapes, static_shape

__all__ = [
    "Model", "ModelMeta", "load_model", "save_model", "read_proto", "save_proto", "structural_problems",
    "constant_array", "slice_channels", "ensure_opset", "upgrade_opset", "infer_shapes", "static_shape",
]
