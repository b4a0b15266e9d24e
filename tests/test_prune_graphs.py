"""Channel groups on tiny graphs, one per coupling the analysis must get right.

``GRAPHS`` (name -> builder) is shared with test_prune_exactness.py, which
prunes every one of them and compares outputs in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import parse_model

from onnxopt.ir import Model
from onnxopt.prune import analyze, describe_groups

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def build(body: str, shapes: dict[str, tuple], values: dict[str, np.ndarray] | None = None, seed: int = 0):
    """A model from parser text plus random initializers (``*_var`` and ``*_s`` positive) and fixed ``values``."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith(("_var", "_s")):
            inits[name] = (rng.random(shape) + 0.5).astype(np.float32)
        else:
            inits[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    inits.update(values or {})
    return parse_model(f"{HEADER}\n{body}", inits)


def bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}_s": (c,), f"{prefix}_b": (c,), f"{prefix}_mean": (c,), f"{prefix}_var": (c,)}


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


def residual():
    """Residual Add; a per-channel constant bias (sliced) and a spatial mask (broadcast, not coupled)."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
      r0 = Relu (c0)
      c1 = Conv <pads = [1, 1, 1, 1]> (r0, w1)
      n1 = BatchNormalization (c1, bn1_s, bn1_b, bn1_mean, bn1_var)
      r1 = Relu (n1)
      c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
      add = Add (c2, r0)
      biased = Add (add, chan_bias)
      masked = Mul (biased, spatial_mask)
      r2 = Relu (masked)
      c3 = Conv (r2, w3, b3)
      pool = GlobalAveragePool (c3)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 3, 3), "b0": (8,), "w1": (8, 8, 3, 3), **bn("bn1", 8), "w2": (8, 8, 3, 3), "b2": (8,),
           "chan_bias": (8, 1, 1), "spatial_mask": (1, 1, 8, 8), "w3": (6, 8, 1, 1), "b3": (6,),
           "wf": (10, 6), "bf": (10,)})


def concat():
    """DenseNet-style: Concat on channels, a pre-activation BN over the concat, a second Concat."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv <pads = [1, 1, 1, 1]> (x, w0)
      r0 = Relu (c0)
      c1 = Conv <pads = [1, 1, 1, 1]> (r0, w1, b1)
      r1 = Relu (c1)
      cat = Concat <axis = 1> (r0, r1)
      n = BatchNormalization (cat, bn_s, bn_b, bn_mean, bn_var)
      rn = Relu (n)
      c2 = Conv (rn, w2, b2)
      cat2 = Concat <axis = -3> (c2, cat)
      pool = GlobalAveragePool (cat2)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 3, 3), "w1": (4, 8, 3, 3), "b1": (4,), **bn("bn", 12), "w2": (6, 12, 1, 1), "b2": (6,),
           "wf": (10, 18), "bf": (10,)})


def depthwise():
    """MobileNet-style: Clip(0, 6), depthwise conv, a depthwise conv with multiplier 2, HardSwish."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      a0 = Clip (c0, lo, hi)
      dw = Conv <group = 8, pads = [1, 1, 1, 1]> (a0, wdw)
      n = BatchNormalization (dw, bn_s, bn_b, bn_mean, bn_var)
      a1 = Clip (n, lo, hi)
      dw2 = Conv <group = 8, pads = [1, 1, 1, 1]> (a1, wdw2, bdw2)
      a2 = HardSwish (dw2)
      c2 = Conv (a2, w2, b2)
      pool = GlobalAveragePool (c2)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 1, 1), "b0": (8,), "wdw": (8, 1, 3, 3), **bn("bn", 8), "wdw2": (16, 1, 3, 3),
           "bdw2": (16,), "w2": (6, 16, 1, 1), "b2": (6,), "wf": (10, 6), "bf": (10,)},
        {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)})


def grouped():
    """ResNeXt-style grouped conv (4 groups of 2 input / 3 output channels)."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = LeakyRelu <alpha = 0.1> (c0)
      gc = Conv <group = 4, pads = [1, 1, 1, 1]> (r0, wg, bg)
      r1 = Relu (gc)
      c2 = Conv (r1, w2, b2)
      pool = GlobalAveragePool (c2)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 1, 1), "b0": (8,), "wg": (12, 2, 3, 3), "bg": (12,), "w2": (6, 12, 1, 1), "b2": (6,),
           "wf": (10, 6), "bf": (10,)})


def se_block():
    """Squeeze-excitation (GAP -> Conv -> Relu -> Conv -> HardSigmoid -> Mul) and a SiLU (x * Sigmoid(x))."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv <pads = [1, 1, 1, 1]> (x, w0)
      n0 = BatchNormalization (c0, bn_s, bn_b, bn_mean, bn_var)
      h = HardSwish (n0)
      sq = GlobalAveragePool (h)
      f1 = Conv (sq, ws1, bs1)
      fr = Relu (f1)
      f2 = Conv (fr, ws2, bs2)
      gate = HardSigmoid (f2)
      scaled = Mul (h, gate)
      c2 = Conv (scaled, w2, b2)
      s2 = Sigmoid (c2)
      sw = Mul (c2, s2)
      pool = GlobalAveragePool (sw)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 3, 3), **bn("bn", 8), "ws1": (4, 8, 1, 1), "bs1": (4,), "ws2": (8, 4, 1, 1), "bs2": (8,),
           "w2": (6, 8, 1, 1), "b2": (6,), "wf": (10, 6), "bf": (10,)})


def flatten_gemm():
    """Conv -> MaxPool -> Flatten -> Gemm (each channel is a block of 16 features) -> Gemm (B not transposed)."""
    return build("""
    g (float[N, 1, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
      r0 = Relu (c0)
      p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r0)
      flat = Flatten (p)
      h = Gemm <transB = 1> (flat, w1, b1)
      hr = Relu (h)
      y = Gemm (hr, w2, b2)
    }""", {"w0": (4, 1, 3, 3), "b0": (4,), "w1": (16, 64), "b1": (16,), "w2": (16, 10), "b2": (10,)})


def reshape_matmul():
    """Reshape with a constant [-1, C*H*W] target (dynamo style) into MatMul + Add, then MatMul."""
    return build("""
    g (float[N, 1, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w0, b0)
      r0 = Relu (c0)
      flat = Reshape (r0, shape)
      mm = MatMul (flat, w1)
      h = Add (mm, b1)
      hr = Relu (h)
      y = MatMul (hr, w2)
    }""", {"w0": (4, 1, 3, 3), "b0": (4,), "w1": (64, 12), "b1": (12,), "w2": (12, 10)},
        {"shape": i64(-1, 64)})


def split_slice():
    """Split on channels (sizes 3/5), Concat back, Slice channels 2..8 of a conv output."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      a, b = Split <axis = 1> (r0, sizes)
      cb = Conv (b, w1, b1)
      rb = Relu (cb)
      cat = Concat <axis = 1> (a, rb)
      c2 = Conv (cat, w2, b2)
      part = Slice (c2, starts, ends, axes)
      rp = Relu (part)
      pool = GlobalAveragePool (rp)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 1, 1), "b0": (8,), "w1": (6, 5, 1, 1), "b1": (6,), "w2": (10, 9, 1, 1), "b2": (10,),
           "wf": (10, 6), "bf": (10,)},
        {"sizes": i64(3, 5), "starts": i64(2), "ends": i64(8), "axes": i64(1)})


def transpose_matmul():
    """NCHW -> NHWC Transpose, MatMul on the channel (last) axis, Transpose back."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      t = Transpose <perm = [0, 2, 3, 1]> (r0)
      mm = MatMul (t, w1)
      a = Add (mm, b1)
      r1 = Relu (a)
      back = Transpose <perm = [0, 3, 1, 2]> (r1)
      pool = ReduceMean <axes = [2, 3], keepdims = 0> (back)
      y = Gemm <transB = 1> (pool, wf, bf)
    }""", {"w0": (8, 3, 1, 1), "b0": (8,), "w1": (8, 6), "b1": (6,), "wf": (10, 6), "bf": (10,)})


def pool_resize_pad():
    """MaxPool, Resize (scales), Pad (spatial), AveragePool, ConvTranspose, Unsqueeze/Squeeze: all pass through."""
    return build("""
    g (float[N, 3, 8, 8] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r0)
      up = Resize <mode = "nearest"> (mp, roi, scales)
      pd = Pad (up, pads)
      ap = AveragePool <kernel_shape = [3, 3]> (pd)
      ct = ConvTranspose <strides = [2, 2]> (ap, wt, bt)
      rt = Relu (ct)
      gp = GlobalMaxPool (rt)
      sq = Squeeze (gp, sq_axes)
      us = Unsqueeze (sq, us_axes)
      flat = Flatten (us)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (8, 3, 1, 1), "b0": (8,), "wt": (8, 6, 2, 2), "bt": (6,), "wf": (10, 6), "bf": (10,)},
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32),
         "pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "sq_axes": i64(2, 3), "us_axes": i64(2)})


def channel_shuffle():
    """ShuffleNet's Reshape [N, 2, 4, H, W] -> Transpose -> Reshape [N, 8, H, W]."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      c1 = Conv (r0, w1, b1)
      v = Reshape (c1, split_shape)
      t = Transpose <perm = [0, 2, 1, 3, 4]> (v)
      s = Reshape (t, merge_shape)
      pool = GlobalAveragePool (s)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (6, 3, 1, 1), "b0": (6,), "w1": (8, 6, 1, 1), "b1": (8,), "wf": (10, 8), "bf": (10,)},
        {"split_shape": i64(-1, 2, 4, 4, 4), "merge_shape": i64(-1, 8, 4, 4)})


def mixing_reshape():
    """A Reshape [N, 6, 4, 4] -> [N, 4, 24] puts two channels in one row: it must freeze."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      c1 = Conv (r0, w1, b1)
      mix = Reshape (c1, shape)
      m = ReduceMean <axes = [2], keepdims = 0> (mix)
      y = Gemm <transB = 1> (m, wf, bf)
    }""", {"w0": (5, 3, 1, 1), "b0": (5,), "w1": (6, 5, 1, 1), "b1": (6,), "wf": (10, 4), "bf": (10,)},
        {"shape": i64(0, 4, 24)})


def unknown_op():
    """LRN mixes neighbouring channels: the analysis does not know it and freezes its input."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      c1 = Conv (r0, w1, b1)
      l = LRN <size = 3> (c1)
      pool = GlobalAveragePool (l)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (5, 3, 1, 1), "b0": (5,), "w1": (6, 5, 1, 1), "b1": (6,), "wf": (10, 6), "bf": (10,)})


def matmul_passthrough():
    """MatMul over the width axis of an NCHW tensor: channels pass through; CastLike reads only a dtype."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c0 = Conv (x, w0, b0)
      r0 = Relu (c0)
      mw = MatMul (r0, wm)
      z = CastLike (zero, mw)
      a = Add (mw, z)
      pool = GlobalAveragePool (a)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (6, 3, 1, 1), "b0": (6,), "wm": (4, 5), "wf": (10, 6), "bf": (10,)},
        {"zero": np.zeros((), np.float32)})


def identity_shared_bias():
    """Torchscript dedups equal initializers and feeds them through Identity nodes (here a shared bias)."""
    return build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      bi0 = Identity (bz)
      bi1 = Identity (bz)
      c0 = Conv (x, w0, bi0)
      r0 = Relu (c0)
      c1 = Conv (r0, w1, bi1)
      r1 = Relu (c1)
      pool = GlobalAveragePool (r1)
      flat = Flatten (pool)
      y = Gemm <transB = 1> (flat, wf, bf)
    }""", {"w0": (6, 3, 1, 1), "bz": (6,), "w1": (6, 6, 1, 1), "wf": (10, 6), "bf": (10,)})


GRAPHS = {f.__name__: f for f in (identity_shared_bias, residual, concat, depthwise, grouped, se_block, flatten_gemm, reshape_matmul,
                                  split_slice, transpose_matmul, pool_resize_pad, channel_shuffle, mixing_reshape,
                                  unknown_op, matmul_passthrough)}


# -- helpers -----------------------------------------------------------------------------------
def groups_of(proto, **kw):
    return analyze(Model.from_onnx(proto), **kw).groups


def group_with(groups, tensor: str):
    found = [g for g in groups if any(m.tensor == tensor for m in g.members)]
    assert found, f"no group holds {tensor}"
    return found


def member(group, tensor: str):
    return next(m for m in group.members if m.tensor == tensor)


def tensors(group) -> set[str]:
    return {m.tensor for m in group.members}


# -- one test per coupling ------------------------------------------------------------------------
def test_residual_add_couples_both_branches_but_not_broadcast_operands():
    gs_ = groups_of(residual())
    (g,) = group_with(gs_, "add")
    assert {"c0", "r0", "c2", "add", "biased", "masked", "r2"} <= tensors(g)
    assert g.prunable and g.size == 8
    assert "spatial_mask" not in tensors(g) and "chan_bias" not in tensors(g)
    (inner,) = group_with(gs_, "c1")
    assert tensors(inner) == {"c1", "n1", "r1"} and inner.prunable
    assert set(inner.producers) == {"Conv:c1"} and set(inner.consumers) == {"Conv:c2"}


def test_concat_maps_each_input_to_its_offset():
    gs_ = groups_of(concat())
    (g0,) = [g for g in group_with(gs_, "r0") if "c0" in tensors(g)]
    (g1,) = [g for g in group_with(gs_, "r1") if "c1" in tensors(g)]
    assert member(g0, "cat").channels == [[i] for i in range(8)]
    assert member(g1, "cat").channels == [[8 + i] for i in range(4)]
    # cat2 = Concat(c2 (6), cat (12)): cat's channels shift by 6
    assert member(g0, "cat2").channels == [[6 + i] for i in range(8)]
    assert member(g1, "cat2").channels == [[14 + i] for i in range(4)]
    assert "n" in tensors(g0) and "n" in tensors(g1)  # the BN over the concat touches both groups
    assert g0.prunable and g1.prunable


def test_depthwise_input_and_output_are_one_group():
    gs_ = groups_of(depthwise())
    (g,) = group_with(gs_, "dw")
    assert {"c0", "a0", "dw", "n", "a1", "dw2", "a2"} <= tensors(g)
    assert g.size == 8
    assert member(g, "dw2").channels[3] == [6, 7]  # multiplier 2: unit 3 is output channels 6 and 7


def test_grouped_conv_units_are_whole_conv_groups():
    gs_ = groups_of(grouped())
    (g,) = group_with(gs_, "gc")
    assert g.size == 4 and g.prunable
    assert member(g, "r0").channels[1] == [2, 3]
    assert member(g, "gc").channels[1] == [3, 4, 5]
    assert g.members[0].tensor == "c0" and g.channels_per_unit == 2


def test_se_block_reduced_channels_are_their_own_group_and_mul_couples_the_gate():
    gs_ = groups_of(se_block())
    (main,) = group_with(gs_, "h")
    assert {"c0", "n0", "h", "sq", "f2", "gate", "scaled"} <= tensors(main)
    (reduced,) = group_with(gs_, "f1")
    assert tensors(reduced) == {"f1", "fr"} and reduced.size == 4 and reduced.prunable
    (silu,) = group_with(gs_, "c2")
    assert {"s2", "sw"} <= tensors(silu)


def test_flatten_maps_each_channel_to_a_block_of_features():
    gs_ = groups_of(flatten_gemm())
    (g,) = group_with(gs_, "c0")
    assert member(g, "flat").channels[1] == list(range(16, 32))
    assert g.prunable
    (hidden,) = group_with(gs_, "h")
    assert tensors(hidden) == {"h", "hr"} and hidden.size == 16


def test_reshape_with_constant_target_into_matmul():
    gs_ = groups_of(reshape_matmul())
    (g,) = group_with(gs_, "c0")
    assert member(g, "flat").channels[0] == list(range(16)) and g.prunable
    (hidden,) = group_with(gs_, "mm")
    assert {"mm", "h", "hr"} == tensors(hidden) and hidden.prunable


def test_split_and_slice_follow_channel_ranges():
    gs_ = groups_of(split_slice())
    (ga,) = [g for g in group_with(gs_, "a")]
    assert member(ga, "r0").channels == [[0], [1], [2]]
    (gb,) = group_with(gs_, "b")
    assert member(gb, "r0").channels[0] == [3] and member(gb, "b").channels[0] == [0]
    sliced = [g for g in group_with(gs_, "part")]
    assert len(sliced) == 1 and member(sliced[0], "c2").channels[0] == [2]
    unsliced = [g for g in group_with(gs_, "c2") if "part" not in tensors(g)]
    assert unsliced and all(len(g.members) == 1 for g in unsliced)  # channels 0, 1, 8, 9 only feed nothing


def test_transpose_moves_the_channel_axis():
    gs_ = groups_of(transpose_matmul())
    (g,) = group_with(gs_, "t")
    assert member(g, "t").axis == 3 and g.prunable
    (h,) = group_with(gs_, "back")
    assert member(h, "back").axis == 1 and member(h, "pool").axis == 1 and h.prunable


def test_pool_resize_pad_convtranspose_pass_through():
    gs_ = groups_of(pool_resize_pad())
    (g,) = group_with(gs_, "pd")
    assert {"c0", "mp", "up", "pd", "ap"} <= tensors(g) and g.prunable
    (h,) = group_with(gs_, "ct")
    assert {"ct", "rt", "gp", "sq", "us", "flat"} <= tensors(h) and h.prunable


def test_channel_shuffle_is_followed():
    gs_ = groups_of(channel_shuffle())
    (g,) = group_with(gs_, "c1")
    assert g.prunable and g.size == 4
    # unit k: channels k and k + 4 of c1 (one per shuffle group), index k of the inner axis of v,
    # and output channels 2k, 2k + 1 of the shuffle
    assert member(g, "c1").channels[1] == [1, 5]
    assert member(g, "v").axis == 2 and member(g, "v").channels[1] == [1]
    assert member(g, "t").axis == 1
    assert member(g, "s").channels[1] == [2, 3]
    assert member(g, "flat").channels[1] == [2, 3]


def test_split_reshape_that_cannot_be_followed_freezes():
    """[N, 8, 4, 4] -> [N, 2, 2, 32]: a channel's 4 positions per group spread over two axes."""
    proto = build("""
    g (float[N, 3, 4, 4] x) => (float[N, 10] y) {
      c1 = Conv (x, w1, b1)
      v = Reshape (c1, shape)
      m = ReduceMean <axes = [2, 3], keepdims = 0> (v)
      y = Gemm <transB = 1> (m, wf, bf)
    }""", {"w1": (8, 3, 1, 1), "b1": (8,), "wf": (10, 2), "bf": (10,)}, {"shape": i64(0, 2, 2, 32)})
    (g,) = group_with(groups_of(proto), "c1")
    assert g.frozen and any("splits the channel axis" in r for r in g.reasons), g.reasons


def test_reshape_that_mixes_channels_freezes_with_the_node_in_the_reason():
    gs_ = groups_of(mixing_reshape())
    (g,) = group_with(gs_, "c1")
    assert g.frozen
    assert any(r == "consumer Reshape at node Reshape:mix mixes channels" for r in g.reasons), g.reasons
    assert group_with(gs_, "c0")[0].prunable


def test_unknown_op_freezes_what_it_reads():
    gs_ = groups_of(unknown_op())
    (g,) = group_with(gs_, "c1")
    assert g.frozen and any("LRN" in r and "not understood" in r for r in g.reasons)


def test_matmul_on_a_spatial_axis_passes_channels_through():
    gs_ = groups_of(matmul_passthrough())
    (g,) = group_with(gs_, "mw")
    assert {"c0", "r0", "mw", "a", "flat"} <= tensors(g) and member(g, "mw").axis == 1
    assert g.prunable  # CastLike's dtype-only read of mw freezes nothing


def test_constants_behind_identity_nodes_are_parameters():
    gs_ = groups_of(identity_shared_bias())
    assert group_with(gs_, "c0")[0].prunable and group_with(gs_, "c1")[0].prunable


def test_graph_outputs_and_inputs_are_frozen():
    gs_ = groups_of(residual())
    (out,) = group_with(gs_, "y")
    assert out.frozen and any("graph output y" in r for r in out.reasons)
    proto = build("""
    g (float[N, 4, 4, 4] x) => (float[N, 4, 4, 4] y) {
      c0 = Conv (x, w0, b0)
      s = Add (c0, x)
      y = Conv (s, w1, b1)
    }""", {"w0": (4, 4, 1, 1), "b0": (4,), "w1": (4, 4, 1, 1), "b1": (4,)})
    (g,) = group_with(groups_of(proto), "s")
    assert g.frozen and any("operand x of Add" in r for r in g.reasons)


def test_ignore_freezes_the_nodes_channels_and_unknown_names_fail():
    gs_ = groups_of(residual(), ignore=["c1"])
    (inner,) = group_with(gs_, "c1")
    assert inner.frozen and any("--ignore c1" in r for r in inner.reasons)
    (g,) = group_with(gs_, "add")
    assert g.frozen  # c1's input r0 is in the residual group
    from onnxopt.errors import OnnxoptError

    with pytest.raises(OnnxoptError, match="no node"):
        groups_of(residual(), ignore=["nope"])


def test_every_channel_belongs_to_exactly_one_group():
    for name, make in GRAPHS.items():
        plan = analyze(Model.from_onnx(make()))
        seen: dict[str, list[int]] = {}
        for g in plan.groups:
            for m in g.members:
                assert len(m.channels) == g.size, name
                for u in m.channels:
                    seen.setdefault(m.tensor, []).extend(u)
        for t, chans in seen.items():
            _, size = plan.tensor_axes()[t]
            assert sorted(chans) == list(range(size)), (name, t)


def test_describe_groups_lists_tensors_and_reasons():
    rows = describe_groups(Model.from_onnx(mixing_reshape()))
    assert rows and {"id", "size", "prunable", "frozen", "reasons", "producers", "consumers", "tensors"} <= set(rows[0])
    frozen = [r for r in rows if r["frozen"]]
    assert any("mixes channels" in reason for r in frozen for reason in r["reasons"])
    assert any(r["prunable"] for r in rows)
