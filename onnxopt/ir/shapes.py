"""Shape inference with onnx's own inferencer; dynamic dims stay symbolic."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxopt.ir.model import Model


def _infer_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxopt.ir.io import EXTERNAL_DATA_THRESHOLD, model_nbytes

    if model_nbytes(proto) < EXTERNAL_DATA_THRESHOLD:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    # large models: onnx infers from a file; only the value_info comes back
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "inferred.onnx"
        onnx.save_model(proto, str(src), save_as_external_data=True, location="m.data", size_threshold=1024)
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), check_type=False, strict_mode=False, data_prop=True)
        return onnx.load_model(str(dst), load_external_data=False)


def infer_shapes(model: Model) -> Model:
    """Annotate every Variable of ``model`` with the dtype/shape onnx infers (in place).

    Existing annotations are kept where onnx knows nothing; symbolic dims
    (``"batch"``) are kept as strings, never replaced by guesses.
    """
    try:
        inferred = _infer_proto(model.to_onnx())
    except Exception as exc:  # inference errors on exotic graphs must not kill a pass
        model.notes.append(f"shape inference failed: {str(exc).splitlines()[0]}")
        return model
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for name, tensor in model.graph.tensors().items():
        if not isinstance(tensor, gs.Variable) or name not in infos:
            continue
        tt = infos[name].type.tensor_type
        if tt.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape"):
            dims = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            tensor.shape = dims
    return model


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape if every dim is a known integer, else None."""
    shape = tensor.shape
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)
