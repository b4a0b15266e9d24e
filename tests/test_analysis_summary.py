import numpy as np
import onnx

from conftest import parse_model, small_cnn
from onnxopt.analysis.summary import compute_macs, model_file_bytes, parameter_stats, summarize
from onnxopt.ir import Model, load_model


def macs_by_op(summary):
    return [(n.op, n.macs) for n in summary.nodes]


def test_summary_of_small_cnn(tmp_model_path):
    proto = small_cnn()
    path = tmp_model_path(proto)
    s = summarize(load_model(path))
    assert [(t.name, t.dtype, t.shape) for t in s.inputs] == [("x", "float32", ["N", 3, 8, 8])]
    assert [(t.name, t.dtype, t.shape) for t in s.outputs] == [("logits", "float32", ["N", 10])]
    assert s.opsets == {"ai.onnx": 17}
    assert (s.producer_name, s.producer_version, s.ir_version) == ("onnxopt-tests", "1.0", 8)
    assert s.node_count == 10
    assert s.op_histogram["Conv"] == 2 and s.op_histogram["Relu"] == 2 and s.op_histogram["Gemm"] == 1
    expected_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert s.parameter_count == expected_params == 326
    assert s.parameter_bytes == 4 * expected_params
    assert s.file_bytes == path.stat().st_size


def test_macs_of_small_cnn_are_per_sample_for_dynamic_batch():
    s = compute_macs(Model.from_onnx(small_cnn()))
    assert s.per_sample and s.batch == 1
    # Conv: N*Cout*Hout*Wout*(Cin/group)*kH*kW ; Gemm: M*N*K
    assert macs_by_op(s) == [("Conv", 1 * 4 * 8 * 8 * 3 * 3 * 3), ("Conv", 1 * 4 * 8 * 8 * 4 * 3 * 3),
                             ("Gemm", 1 * 10 * 4)]
    assert s.total == 6912 + 9216 + 40
    assert s.unknown == 0


def test_fixed_batch_macs_scale_with_the_batch():
    s = compute_macs(Model.from_onnx(small_cnn(batch=3)))
    assert not s.per_sample and s.batch == 3
    assert s.total == 3 * (6912 + 9216 + 40)


def test_grouped_conv_transpose_gemm_and_batched_matmul():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B, 4, 6, 6] x, float[B, 2, 5, 6] a, float[2, 3, 4] p, float[2, 4, 5] q, float[7, 3] k)
      => (float[B, 4, 6, 6] dw, float[B, 2, 13, 13] up, float[B, 2, 5, 7] mm, float[2, 3, 5] bmm, float[3, 2] gt) {
      dw = Conv <group = 4, pads = [1, 1, 1, 1]> (x, wd)
      up = ConvTranspose <strides = [2, 2]> (x, wt)
      mm = MatMul (a, wm)
      bmm = MatMul (p, q)
      gt = Gemm <transA = 1> (k, wg)
    }
    """, {"wd": np.ones((4, 1, 3, 3), np.float32), "wt": np.ones((4, 2, 3, 3), np.float32),
          "wm": np.ones((6, 7), np.float32), "wg": np.ones((7, 2), np.float32)})
    s = compute_macs(Model.from_onnx(proto))
    assert macs_by_op(s) == [
        ("Conv", 1 * 4 * 6 * 6 * 1 * 3 * 3),  # depthwise: Cin/group = 1
        ("ConvTranspose", 1 * 4 * 6 * 6 * 2 * 3 * 3),  # every input element times (Cout/group)*kH*kW
        ("MatMul", 1 * 2 * 5 * 7 * 6),  # batched: prod(out) * K
        ("MatMul", 2 * 3 * 5 * 4),
        ("Gemm", 3 * 2 * 7),  # transA: K is A's first dim
    ]


def test_dynamic_spatial_dims_are_unknown_until_given():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 2, H, W] x) => (float[N, 3, H, W] y) { y = Conv <pads = [1, 1, 1, 1]> (x, w) }
    """, {"w": np.ones((3, 2, 3, 3), np.float32)})
    model = Model.from_onnx(proto)
    s = compute_macs(model)
    assert s.unknown == 1 and s.total == 0 and s.nodes[0].macs is None
    s = compute_macs(model, {"x": (2, 2, 5, 5)})
    assert s.nodes[0].macs == 2 * 3 * 5 * 5 * 2 * 9 and s.batch == 2 and not s.per_sample


def test_constant_node_weights_count_as_parameters():
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 6] x) => (float[1, 6] y) {
      w = Constant <value = float[6] {1, 2, 3, 4, 5, 6}> ()
      y = Add (x, w)
    }
    """, {})
    assert parameter_stats(Model.from_onnx(proto)) == (6, 24)


def test_custom_domain_opsets_are_listed():
    proto = small_cnn()
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 3))
    s = summarize(Model.from_onnx(proto))
    assert s.opsets == {"ai.onnx": 17, "com.example": 3}
    assert s.path is None and s.file_bytes is None


def test_file_size_includes_external_data(tmp_path):
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4096] x) => (float[1, 4096] y) { y = Add (x, w) }
    """, {"w": np.ones((1, 4096), np.float32)})
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    assert data.stat().st_size == 4 * 4096
    assert model_file_bytes(path) == path.stat().st_size + data.stat().st_size


def test_shape_arithmetic_onnx_cannot_follow_is_resolved():
    # a channel shuffle written with Shape/Gather/Div, as torch.onnx's TorchScript exporter emits it:
    # onnx's own inference leaves the channel dim of `back` unknown; onnxruntime's symbolic inference computes it
    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 5, 5] x) => (float[N, 3, 5, 5] y) {
      s = Shape (x)
      i0 = Constant <value = int64[1] {0}> ()
      i1 = Constant <value = int64[1] {1}> ()
      one = Constant <value = int64[1] {1}> ()
      two = Constant <value = int64[1] {2}> ()
      rest = Constant <value = int64[2] {5, 5}> ()
      n = Gather <axis = 0> (s, i0)
      c = Gather <axis = 0> (s, i1)
      half = Div (c, two)
      shape5 = Concat <axis = 0> (n, two, half, rest)
      r = Reshape (x, shape5)
      t = Transpose <perm = [0, 2, 1, 3, 4]> (r)
      cc = Div (c, one)
      shape4 = Concat <axis = 0> (n, cc, rest)
      back = Reshape (t, shape4)
      y = Conv (back, w)
    }
    """, {"w": np.ones((3, 4, 1, 1), np.float32)})
    s = compute_macs(Model.from_onnx(proto))
    assert [(n.output_shape, n.macs) for n in s.nodes] == [([1, 3, 5, 5], 1 * 3 * 5 * 5 * 4)]
