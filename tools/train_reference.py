#!/usr/bin/env python
"""Train, export and document the reference CNNs of onnxopt (Fashion-MNIST).

Regenerates everything under ``models/``::

    python tools/train_reference.py --out models

It trains three small CNNs with torch on the full 60k Fashion-MNIST train
split, evaluates them on the 10k test split, exports each with both torch
exporters at opset 17 (``<name>.onnx`` from the TorchScript exporter,
``<name>.dynamo.onnx`` from the dynamo exporter), checks and evaluates every
ONNX file with onnxruntime, writes ``fashion_mnist_sample.npz`` (calibration
and evaluation data), ``reference.json`` and ``README.md``.

``--only NAME`` retrains one model and keeps the other entries of an existing
``reference.json``; ``--epochs`` overrides the per-model epoch counts;
``--bench`` only times a few training steps per model (to plan epochs).
BatchNormalization is kept in every exported file (never folded here): the
folding is the optimizer's job.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# Two busy-waiting OpenMP threads slow down badly when other processes share the
# two cores; passive waiting costs little on a quiet machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
import torch.nn as nn
import torch.nn.functional as F

_TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TOOLS), str(_TOOLS.parent)]  # tools/fmnist.py re-exports onnxopt.data
from fmnist import MEAN, STD, load_fashion_mnist, normalize

OPSET = 17
NUM_THREADS = 2
CKPT_DIR = Path("/tmp/onnxopt_ckpt")
SAMPLE_FILE = "fashion_mnist_sample.npz"
N_CALIB = 512
N_EVAL = 2000


# --------------------------------------------------------------------------
# models


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    """Conv (no bias) -> BatchNorm -> activation (``act=None``: no activation)."""
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return layers


class BasicBlock(nn.Module):
    """ResNet basic block; strided / widening blocks use a 1x1 strided projection."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Conv-BN-ReLU stem, stages of basic blocks, global average pool, Linear."""

    def __init__(self, stem=32, stages=((64, 2, 1), (128, 2, 2)), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_act(1, stem))
        blocks, c = [], stem
        for cout, stride, n in stages:
            for j in range(n):
                blocks.append(BasicBlock(c, cout, stride if j == 0 else 1))
                c = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear project (+ Add)."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += conv_bn_act(cin, hidden, 1, act=nn.ReLU6)
        layers += conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        layers += conv_bn_act(hidden, cout, 1, act=None)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2-style net; ``cfg`` rows are (expand t, channels c, repeats n, stride s)."""

    def __init__(
        self,
        stem=32,
        cfg=((1, 16, 1, 1), (6, 24, 2, 2), (6, 48, 3, 2), (6, 96, 2, 1)),
        last=256,
        num_classes=10,
        dropout=0.1,
        stem_stride=1,
    ):
        super().__init__()
        layers, c = conv_bn_act(1, stem, stride=stem_stride, act=nn.ReLU6), stem
        for t, cout, n, s in cfg:
            for j in range(n):
                layers.append(InvertedResidual(c, cout, s if j == 0 else 1, t))
                c = cout
        layers += conv_bn_act(c, last, 1, act=nn.ReLU6)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc(self.dropout(x))


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 Conv -> ReLU -> 1x1 Conv -> Sigmoid -> Mul."""

    def __init__(self, c, reduction=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // reduction, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class DenseLayer(nn.Module):
    """DenseNet-BC style layer (post-activation Conv-BN-ReLU): 1x1 bottleneck, 3x3, Concat."""

    def __init__(self, cin, growth, bottleneck):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_act(cin, bottleneck, 1), *conv_bn_act(bottleneck, growth, 3)
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNetSE(nn.Module):
    """Stem, dense blocks (Concat) each followed by squeeze-excitation, transitions, GAP, Linear."""

    def __init__(
        self, stem=32, growth=(24, 24), blocks=(4, 4), bottleneck=(64, 64), num_classes=10
    ):
        super().__init__()
        layers, c = [*conv_bn_act(1, stem), nn.MaxPool2d(2)], stem  # 28 -> 14
        for bi, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth[bi], bottleneck[bi]))
                c += growth[bi]
            layers.append(SqueezeExcite(c))
            if bi != len(blocks) - 1:  # transition: 1x1 Conv-BN-ReLU + AvgPool
                layers += [*conv_bn_act(c, c // 2, 1), nn.AvgPool2d(2)]
                c //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# Per-model recipes. ``summary`` goes to the README; ``kwargs`` builds the net.
# Sized for a 2-core CPU: about 20 + 14 + 12 minutes of training when the job has
# the two cores to itself (measured epochs: ~150 s, ~120 s, ~100 s).
MODELS = {
    "resnet": dict(
        cls=ResNet,
        kwargs=dict(stem=32, stages=((64, 2, 1), (128, 2, 1), (160, 2, 1))),
        summary=(
            "ResNet-style: Conv3x3(1->32)-BN-ReLU stem at 28x28; basic blocks "
            "32->64 stride 2 (14x14), 64->128 stride 2 (7x7), 128->160 stride 2 (4x4), each "
            "Conv3x3-BN-ReLU-Conv3x3-BN plus a 1x1 strided Conv-BN projection shortcut, "
            "residual Add, ReLU; global average pool; Linear(160->10)"
        ),
        epochs=8,
        lr=0.1,
        weight_decay=5e-4,
    ),
    "mobilenetv2": dict(
        cls=MobileNetV2,
        kwargs=dict(
            stem=16,
            cfg=((1, 16, 1, 2), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 2, 1), (4, 96, 1, 2)),
            last=256,
        ),
        summary=(
            "MobileNetV2-style: Conv3x3(1->16)-BN-ReLU6 stem at 28x28; inverted residual "
            "blocks (1x1 expand Conv-BN-ReLU6 when t>1, 3x3 depthwise Conv-BN-ReLU6, 1x1 linear "
            "project Conv-BN, residual Add when stride 1 and channels match) with "
            "(t,c,n,s) = (1,16,1,2), (4,24,2,1), (4,32,2,2), (4,64,2,1), (4,96,1,2) "
            "(28 -> 14 -> 7 -> 4); 1x1 Conv(96->256)-BN-ReLU6; global average pool; "
            "Dropout(0.1) (absent from the exported inference graphs); Linear(256->10). "
            "ReLU6 exports as Clip(0,6)"
        ),
        epochs=7,
        lr=0.1,
        weight_decay=1e-4,
    ),
    "densenet_se": dict(
        cls=DenseNetSE,
        kwargs=dict(stem=24, growth=(16, 24), blocks=(3, 4), bottleneck=(48, 64)),
        summary=(
            "DenseNet-BC-style with squeeze-excitation: Conv3x3(1->24)-BN-ReLU stem, MaxPool 2 "
            "(14x14); dense block of 3 layers (Conv1x1(->48)-BN-ReLU, Conv3x3(48->16)-BN-ReLU, "
            "Concat with the layer input: 24->72 channels); SE (GlobalAveragePool, Conv1x1 "
            "72->18, ReLU, Conv1x1 18->72, Sigmoid, Mul); transition Conv1x1(72->36)-BN-ReLU + "
            "AvgPool 2 (7x7); dense block of 4 layers (Conv1x1(->64)-BN-ReLU, "
            "Conv3x3(64->24)-BN-ReLU, Concat: 36->132 channels); SE (132->33->132); global "
            "average pool; Linear(132->10)"
        ),
        epochs=7,
        lr=0.1,
        weight_decay=5e-4,
    ),
}


def build_model(name: str) -> nn.Module:
    spec = MODELS[name]
    return spec["cls"](**spec["kwargs"])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of Conv and Linear layers for one 1x28x28 image."""
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total[0] += out[0].numel() * k
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total[0]


# --------------------------------------------------------------------------
# data


class TrainData:
    """Full train split in memory; random 2px-padded crops and horizontal flips."""

    def __init__(self, images_u8: np.ndarray, labels: np.ndarray):
        x = torch.from_numpy(images_u8).unsqueeze(1)  # (N,1,28,28) uint8
        # pad with 0 (the background), normalized like every other pixel
        self.padded = F.pad(x, (2, 2, 2, 2))  # (N,1,32,32)
        self.labels = torch.from_numpy(labels)
        self.n = len(labels)
        self.ar = torch.arange(28)

    def batches(self, batch_size: int, gen: torch.Generator):
        perm = torch.randperm(self.n, generator=gen)
        for i in range(0, self.n, batch_size):
            idx = perm[i : i + batch_size]
            b = len(idx)
            dy = torch.randint(0, 5, (b,), generator=gen)
            dx = torch.randint(0, 5, (b,), generator=gen)
            flip = torch.rand(b, generator=gen) < 0.5
            rows = (dy[:, None] + self.ar)[:, :, None]  # (b,28,1)
            cols = (dx[:, None] + self.ar)[:, None, :]  # (b,1,28)
            crop = self.padded[idx[:, None, None], 0, rows, cols]  # (b,28,28)
            crop = torch.where(flip[:, None, None], crop.flip(-1), crop)
            x = (crop.float().div_(255.0).sub_(MEAN).div_(STD)).unsqueeze(1)
            yield x, self.labels[idx]


@torch.no_grad()
def torch_predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def top1(pred: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float((pred == labels).mean()), 2)


# --------------------------------------------------------------------------
# training


def param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1
            if pname == "weight" and isinstance(mod, (nn.Conv2d, nn.Linear)) and not depthwise:
                decay.append(p)
            else:
                no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train_model(name, spec, data, test_x, test_y, epochs, batch_size, seed, log):
    torch.manual_seed(seed)
    model = build_model(name).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        param_groups(model, spec["weight_decay"]), lr=spec["lr"], momentum=0.9, nesterov=True
    )
    steps_per_epoch = math.ceil(data.n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=spec["lr"],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=0.25,
        div_factor=10.0,
        final_div_factor=100.0,
    )
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    history = []
    t_start = time.time()
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        tot_loss = tot_correct = seen = 0
        for x, y in data.batches(batch_size, gen):
            x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = crit(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += float(loss.detach()) * len(y)
            tot_correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        train_s = time.time() - t0
        test_acc = top1(torch_predict(model, test_x), test_y)
        history.append(
            dict(
                epoch=epoch + 1,
                train_loss=round(tot_loss / seen, 4),
                train_top1=round(100.0 * tot_correct / seen, 2),
                test_top1=test_acc,
                epoch_s=round(train_s, 1),
                loadavg_1min=round(os.getloadavg()[0], 2),
            )
        )
        log(
            f"[{name}] epoch {epoch + 1}/{epochs} loss {tot_loss / seen:.4f} "
            f"train {100.0 * tot_correct / seen:.2f}% test {test_acc:.2f}% "
            f"({train_s:.0f}s, total {time.time() - t_start:.0f}s, "
            f"load {os.getloadavg()[0]:.1f})"
        )
    wall = time.time() - t_start
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, history, wall


def bench_model(name, spec, batch_size, steps, log):
    torch.manual_seed(0)
    model = build_model(name).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = (time.time() - t0) / steps
    epoch_s = dt * 60000 / batch_size
    log(
        f"[bench] {name}: params {count_params(model)} macs {count_macs(model) / 1e6:.1f}M "
        f"step {dt * 1000:.0f} ms, epoch ~{epoch_s:.0f}s, {spec['epochs']} epochs "
        f"~{epoch_s * spec['epochs'] / 60:.1f} min (load {os.getloadavg()[0]:.1f})"
    )


# --------------------------------------------------------------------------
# export


def op_histogram(model_proto) -> dict:
    return dict(sorted(collections.Counter(n.op_type for n in model_proto.graph.node).items()))


def export_torchscript(model: nn.Module, path: Path) -> None:
    """TorchScript-based exporter, opset 17, BatchNormalization kept.

    With the default ``training=TrainingMode.EVAL`` and constant folding on,
    the TorchScript exporter's eval peephole pass fuses Conv+BatchNormalization.
    ``TrainingMode.PRESERVE`` on a model in eval mode exports the same
    inference graph (BatchNormalization in inference mode) without that fusion;
    constant folding stays at its default (on).
    """
    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            export_params=True,
        )


def export_dynamo(model: nn.Module, path: Path) -> list[str]:
    """Dynamo exporter, BatchNormalization kept, converted to opset 17.

    ``torch.onnx.export(dynamo=True)`` writes opset 18 (torchlib has no lower
    implementations) and tries to convert to the requested opset 17; with its
    default ``optimize=True`` it also runs the onnxscript optimizer, whose
    rewrite rules fuse BatchNormalization into Conv. So this exports with
    ``optimize=False`` and then runs only the BN-neutral part of that
    optimizer (constant folding, dead-node removal, constants lifted to
    initializers), converts 18 -> 17 with onnxscript's version converter
    (ONNX C API fallback) and drops the ``noop_with_empty_axes=0`` attribute
    that this conversion leaves on ReduceMean (opset 17 has no such attribute;
    0 is its opset-18 default, so the meaning is unchanged).
    Returns notes on what was done.
    """
    import logging

    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript import version_converter
    from onnxscript.optimizer import _constant_folding

    for logger_name in ("onnxscript", "torch.onnx", "onnx_ir"):
        logging.getLogger(logger_name).setLevel(logging.CRITICAL)
    notes = []
    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (dummy,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=False,
            external_data=False,
            verbose=False,
        )
    irm = prog.model
    raw = ir.serde.serialize_model(irm)
    notes.append(f"raw exporter output: opset {_onnx_opset(raw)}, {len(raw.graph.node)} nodes")
    ir.passes.Sequential(
        _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.NameFixPass(),
    )(irm)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        version_converter.convert_version(irm, OPSET, fallback=True)
    proto = ir.serde.serialize_model(irm)
    if _onnx_opset(proto) != OPSET:
        raise RuntimeError(f"dynamo export: conversion to opset {OPSET} failed")
    dropped = 0
    for node in proto.graph.node:
        if node.op_type.startswith("Reduce") and node.domain in ("", "ai.onnx"):
            for a in list(node.attribute):
                if a.name == "noop_with_empty_axes":
                    if a.i != 0:
                        raise RuntimeError("noop_with_empty_axes=1 cannot be expressed at opset 17")
                    node.attribute.remove(a)
                    dropped += 1
    if dropped:
        notes.append(f"dropped noop_with_empty_axes=0 from {dropped} Reduce* node(s)")
    import onnx

    onnx.save_model(proto, str(path), save_as_external_data=False)
    return notes


def _onnx_opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def ort_logits(path: Path, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = NUM_THREADS
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def check_onnx(path: Path, test_x: np.ndarray, test_y: np.ndarray, torch_logits=None) -> dict:
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"], [i.name for i in proto.graph.input]
    assert [o.name for o in proto.graph.output] == ["logits"], [o.name for o in proto.graph.output]
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer
    ), "external data"

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    in_dims, out_dims = dims(proto.graph.input[0]), dims(proto.graph.output[0])
    assert in_dims == ["batch", 1, 28, 28], in_dims
    assert out_dims == ["batch", 10], out_dims
    logits = ort_logits(path, test_x)
    info = dict(
        opset=_onnx_opset(proto),
        nodes=len(proto.graph.node),
        initializers=len(proto.graph.initializer),
        op_histogram=op_histogram(proto),
        top1_test_10k=top1(logits.argmax(1), test_y),
        top1_eval_2000=top1(logits[:N_EVAL].argmax(1), test_y[:N_EVAL]),
        file_bytes=path.stat().st_size,
    )
    if torch_logits is not None:
        info["max_abs_diff_vs_torch"] = float(np.abs(logits - torch_logits).max())
    return info


# --------------------------------------------------------------------------
# sample data, hashes, docs


def write_sample(out: Path, seed: int, test_images: np.ndarray, test_labels: np.ndarray, train):
    """512 stratified train images (calib/input), first 2000 test images (eval/*)."""
    train_images, train_labels = train
    rng = np.random.default_rng(seed)
    per_class = [N_CALIB // 10 + (1 if c < N_CALIB % 10 else 0) for c in range(10)]
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(train_labels == c)
        chosen.append(rng.choice(idx, size=per_class[c], replace=False))
    chosen = np.concatenate(chosen)
    rng.shuffle(chosen)
    arrays = {
        "calib/input": normalize(train_images[chosen]),
        "eval/input": normalize(test_images[:N_EVAL]),
        "eval/labels": test_labels[:N_EVAL].astype(np.int64),
    }
    np.savez_compressed(out / SAMPLE_FILE, **arrays)
    return dict(
        file=SAMPLE_FILE,
        keys={k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in arrays.items()},
        calib_train_indices_per_class=per_class,
        calib_seed=seed,
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MIT_TEXT = """\
The MIT License (MIT) Copyright © [2017] Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the “Software”), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
"""


def write_docs(out: Path, ref: dict) -> None:
    # hashes of everything in models/ except the two files written here
    import onnx

    for entry in ref["files"]:
        p = out / entry["file"]
        entry["ir_version"] = onnx.load(str(p), load_external_data=False).ir_version
        entry["sha256"] = sha256(p)
        entry["file_bytes"] = p.stat().st_size
    ref["sample_data"]["sha256"] = sha256(out / SAMPLE_FILE)
    ref["sample_data"]["file_bytes"] = (out / SAMPLE_FILE).stat().st_size
    (out / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")

    L = []
    L.append("# Reference models (Fashion-MNIST)\n")
    L.append(
        "Small CNNs trained on Fashion-MNIST by `tools/train_reference.py`, exported to ONNX "
        "with both torch exporters, used as test and benchmark inputs for onnxopt. "
        "BatchNormalization is NOT folded in any file (folding it is the optimizer's job).\n"
    )
    walls = {n: m["training"]["train_wall_s"] for n, m in ref["models"].items()}
    quiet = sum(
        min(h["epoch_s"] for h in m["training"]["history"]) * m["training"]["epochs"]
        for m in ref["models"].values()
    )
    loads = [h["loadavg_1min"] for m in ref["models"].values() for h in m["training"]["history"]]
    L.append("Regenerate everything in this folder:\n")
    L.append("```\npython tools/train_reference.py --out models\n```\n")
    L.append(
        f"Training all three took {sum(walls.values()) / 60:.0f} minutes on a 2-core x86_64 "
        f"CPU ({', '.join(f'{n} {w / 60:.1f} min' for n, w in walls.items())}) while other "
        f"jobs shared the two cores (1-minute load average {min(loads):.1f} to "
        f"{max(loads):.1f}, where 2 is this job alone); at the speed of the fastest epochs "
        f"(the job alone) it is about {quiet / 60:.0f} minutes. Export, checks and "
        "onnxruntime evaluation add about a minute per model.\n"
    )
    L.append(
        "(`--only NAME` retrains one model and keeps the other entries; the torch "
        f"state_dicts go to `{CKPT_DIR}/`, outside the repository.) Training is seeded "
        f"(seed {ref['seed']}) but CPU kernels and thread scheduling may still change the "
        "last digits, so a rerun gives files with other hashes.\n"
    )
    L.append("## Files\n")
    L.append(
        "| file | model | exporter | opset | nodes | params | top-1 test 10k (onnxruntime) "
        "| top-1 eval 2000 | bytes | sha256 |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for e in ref["files"]:
        L.append(
            f"| `{e['file']}` | {e['architecture']} | {e['exporter']} | {e['opset']} | "
            f"{e['nodes']} | {e['params']:,} | {e['top1_test_10k']:.2f}% | "
            f"{e['top1_eval_2000']:.2f}% | {e['file_bytes']:,} | `{e['sha256']}` |"
        )
    s = ref["sample_data"]
    L.append(
        f"| `{s['file']}` | data | - | - | - | - | - | - | {s['file_bytes']:,} | `{s['sha256']}` |"
    )
    L.append("")
    L.append(
        "`reference.json` has the same facts in machine-readable form (accuracies in percent, "
        "op histograms, training history). Every ONNX file has one float32 input `input` "
        "[batch,1,28,28] (dynamic axis `batch`) and one output `logits` [batch,10], keeps all "
        "weights inside the file (no external data) and passes "
        "`onnx.checker.check_model(full_check=True)`. Inputs are normalized images: "
        f"`(pixel/255 - {MEAN}) / {STD}`.\n"
    )
    L.append("## Models\n")
    for name, m in ref["models"].items():
        L.append(f"### {name}\n")
        L.append(f"{m['summary']}.\n")
        tr = m["training"]
        L.append(f"- parameters: {m['params']:,}; MACs per image (Conv + Linear): {m['macs']:,}")
        L.append(
            f"- training: {tr['epochs']} epochs on the 60k train split, batch {tr['batch_size']}, "
            f"{tr['optimizer']}, {tr['schedule']}, {tr['loss']}, augmentation: "
            f"{tr['augmentation']}; seed {tr['seed']}"
        )
        ep = [h["epoch_s"] for h in tr["history"]]
        L.append(
            f"- training wall time: {tr['train_wall_s']:.0f} s on {tr['machine']} "
            f"({tr['threads']} torch threads, shared with other jobs; epochs took "
            f"{min(ep):.0f}-{max(ep):.0f} s), torch {tr['torch']}"
        )
        L.append(
            "- test top-1 after each epoch (torch): "
            + ", ".join(f"{h['test_top1']:.2f}" for h in tr["history"])
        )
        L.append(
            f"- torch top-1 (eval mode): {m['torch_top1_test_10k']:.2f}% on the 10k test split, "
            f"{m['torch_top1_eval_2000']:.2f}% on the 2000-image eval split"
        )
        for e in ref["files"]:
            if e["architecture"] != name:
                continue
            hist = ", ".join(f"{k} {v}" for k, v in e["op_histogram"].items())
            L.append(
                f"- `{e['file']}` ({e['exporter']}): onnxruntime top-1 {e['top1_test_10k']:.2f}% "
                f"(10k), {e['top1_eval_2000']:.2f}% (2000); max |logit - torch| "
                f"{e['max_abs_diff_vs_torch']:.2e}; {e['nodes']} nodes: {hist}"
            )
        if m.get("dynamo_error"):
            L.append(f"- dynamo export failed: {m['dynamo_error']}")
        L.append("")
    L.append("## Exporters\n")
    L.append(
        f"- `<name>.onnx`: TorchScript-based exporter, `torch.onnx.export(model, x, f, "
        f"dynamo=False, opset_version={OPSET}, input_names=['input'], output_names=['logits'], "
        "dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, "
        "training=TrainingMode.PRESERVE)` with the model in eval mode. With the default "
        "`training=TrainingMode.EVAL` and constant folding on, this exporter fuses "
        "Conv+BatchNormalization itself (its eval peephole pass); PRESERVE on a model in eval "
        "mode gives the same inference graph without that fusion (BatchNormalization with "
        "`training_mode=0`); constant folding stays at its default. Global average pooling is "
        "`GlobalAveragePool` + `Flatten`, the classifier is `Gemm`. The exporter deduplicates "
        "equal initializers and links the copies with `Identity` nodes: in the ResNet the "
        "biases of the two BatchNormalizations that feed one residual Add stay equal "
        "throughout training (same initial value, same gradient), so each such pair shows "
        "up as one `Identity`. In MobileNetV2 the Clip bounds are `Constant` nodes."
    )
    L.append(
        f"- `<name>.dynamo.onnx`: dynamo exporter, `torch.onnx.export(model, (x,), dynamo=True, "
        f"opset_version={OPSET}, input_names=['input'], output_names=['logits'], "
        "dynamic_shapes=({0: Dim('batch')},), optimize=False)`. The dynamo exporter writes "
        "opset 18 and its automatic conversion to 17 fails on these graphs (ReduceMean's axes "
        "are not constant before optimization), and `optimize=True` would run the onnxscript "
        "rewrite rules, which fuse BatchNormalization into Conv. So the script runs only the "
        "BN-neutral part of that optimizer (onnxscript constant folding, unused-node removal, "
        "constants lifted to initializers, initializer dedup), converts 18 -> 17 with "
        "`onnxscript.version_converter` (ONNX C API fallback) and removes the "
        "`noop_with_empty_axes=0` attribute that conversion leaves on ReduceMean (not an opset "
        "17 attribute; 0 is its default). Global average pooling is `ReduceMean` (axes "
        "[-1,-2], keepdims) and the flatten a dynamic `Reshape` whose shape is computed from "
        "the batch size (`Shape` of the input -> `Squeeze` -> `Reshape` -> `Concat`); the "
        "classifier is `Gemm`."
    )
    L.append("")
    if (out / "recipes").is_dir():
        L.append(
            "`recipes/` holds onnxopt recipes for these models; they are maintained with the "
            "package, not written by this script, and not listed above.\n"
        )
    L.append("## Sample data: `fashion_mnist_sample.npz`\n")
    L.append(
        "`np.savez_compressed` arrays keyed `SPLIT/NAME` (select a split on the command line "
        "as `FILE.npz:SPLIT`; `NAME` is a graph input name, `labels` the optional labels):\n"
    )
    for k, v in s["keys"].items():
        L.append(f"- `{k}`: {v['dtype']} {v['shape']}")
    L.append("")
    L.append(
        f"`calib/input`: {N_CALIB} train-split images, stratified over the 10 classes "
        f"({s['calib_train_indices_per_class']} per class), drawn with "
        f"`numpy.random.default_rng({s['calib_seed']})`, shuffled. `eval/*`: the first "
        f"{N_EVAL} test-split images and their labels. Normalized as above.\n"
    )
    L.append("## Environment\n")
    env = ref["environment"]
    L.append(
        f"torch {env['torch']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, "
        f"onnxscript {env['onnxscript']}, numpy {env['numpy']}, Python {env['python']}; "
        f"trained on {env['machine']} with {NUM_THREADS} torch threads.\n"
    )
    L.append("## Data licence\n")
    L.append(
        "The models are trained on, and `fashion_mnist_sample.npz` contains images from, "
        "Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, *Fashion-MNIST: a Novel "
        "Image Dataset for Benchmarking Machine Learning Algorithms*, arXiv:1708.07747), "
        "read from the Debian package `dataset-fashion-mnist` "
        "(`/usr/share/datasets/fashion-mnist/`). Fashion-MNIST is distributed under the MIT "
        "licence:\n"
    )
    L.append("```\n" + MIT_TEXT + "```\n")
    (out / "README.md").write_text("\n".join(L))


# --------------------------------------------------------------------------
# main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models", help="output folder (default: models)")
    ap.add_argument("--only", choices=sorted(MODELS), help="train/export only this model")
    ap.add_argument("--epochs", type=int, help="override the per-model epoch count")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--root", default=None, help="Fashion-MNIST folder")
    ap.add_argument("--ckpt", default=str(CKPT_DIR), help="state_dict folder (outside the repo)")
    ap.add_argument(
        "--docs-only",
        action="store_true",
        help="only rewrite README.md and reference.json (hashes) from the existing reference.json",
    )
    ap.add_argument(
        "--train-limit", type=int, help="smoke test: train on the first N train images only"
    )
    ap.add_argument(
        "--bench", type=int, metavar="STEPS", help="only time STEPS training steps per model"
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(NUM_THREADS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt)
    names = [args.only] if args.only else list(MODELS)

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    if args.bench:
        for name in names:
            bench_model(name, MODELS[name], args.batch_size, args.bench, log)
        return 0

    if args.docs_only:
        write_docs(out, json.loads((out / "reference.json").read_text()))
        log("wrote reference.json and README.md")
        return 0

    import onnx
    import onnxruntime
    import onnxscript

    train_images, train_labels = load_fashion_mnist("train", args.root)
    test_images, test_labels = load_fashion_mnist("test", args.root)
    test_x_np = normalize(test_images)
    test_x = torch.from_numpy(test_x_np)
    if args.train_limit:
        data = TrainData(train_images[: args.train_limit], train_labels[: args.train_limit])
    else:
        data = TrainData(train_images, train_labels)
    ckpt.mkdir(parents=True, exist_ok=True)

    ref_path = out / "reference.json"
    old = json.loads(ref_path.read_text()) if (args.only and ref_path.exists()) else None
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    ref = dict(
        description="onnxopt reference CNNs trained on Fashion-MNIST; accuracies in percent",
        regenerate="python tools/train_reference.py --out models",
        seed=args.seed,
        dataset=dict(
            name="Fashion-MNIST",
            licence="MIT, Copyright (c) 2017 Zalando SE",
            mean=MEAN,
            std=STD,
            normalization="(pixel/255 - mean) / std",
        ),
        environment=dict(
            torch=torch.__version__,
            onnx=onnx.__version__,
            onnxruntime=onnxruntime.__version__,
            onnxscript=onnxscript.__version__,
            numpy=np.__version__,
            python=platform.python_version(),
            machine=machine,
        ),
        models={},
        files=[],
        sample_data=None,
    )
    if old:
        ref["models"] = {k: v for k, v in old["models"].items() if k not in names}
        ref["files"] = [f for f in old["files"] if f["architecture"] not in names]
        ref["sample_data"] = old["sample_data"]
        ref["seed"] = old.get("seed", args.seed)

    ok = True
    timings = {}
    for name in names:
        spec = MODELS[name]
        epochs = args.epochs or spec["epochs"]
        log(f"=== {name}: {epochs} epochs")
        model, history, wall = train_model(
            name, spec, data, test_x, test_labels, epochs, args.batch_size, args.seed, log
        )
        timings[name] = wall
        log(f"[{name}] training wall time {wall:.0f}s ({wall / 60:.1f} min)")
        torch.save(model.state_dict(), ckpt / f"{name}.pt")
        with torch.no_grad():
            torch_logits = torch.cat(
                [model(test_x[i : i + 1000]) for i in range(0, len(test_x), 1000)]
            ).numpy()
        t_top1 = top1(torch_logits.argmax(1), test_labels)
        t_eval = top1(torch_logits[:N_EVAL].argmax(1), test_labels[:N_EVAL])
        entry = dict(
            summary=spec["summary"],
            params=count_params(model),
            macs=count_macs(model),
            torch_top1_test_10k=t_top1,
            torch_top1_eval_2000=t_eval,
            training=dict(
                epochs=epochs,
                batch_size=args.batch_size,
                optimizer=(
                    f"SGD(momentum=0.9, nesterov, weight_decay={spec['weight_decay']} on "
                    "conv/linear weights except depthwise)"
                ),
                schedule=f"OneCycleLR(max_lr={spec['lr']}, pct_start=0.25)",
                loss="cross-entropy with label smoothing 0.1",
                augmentation="random 28x28 crop of the 2px zero-padded image, horizontal flip",
                seed=args.seed,
                train_wall_s=round(wall, 1),
                machine=machine,
                threads=NUM_THREADS,
                torch=torch.__version__,
                history=history,
            ),
        )
        log(f"[{name}] torch top-1 {t_top1:.2f}% (10k), {t_eval:.2f}% (2000)")
        for exporter, fname in (("torchscript", f"{name}.onnx"), ("dynamo", f"{name}.dynamo.onnx")):
            path = out / fname
            notes = []
            try:
                if exporter == "torchscript":
                    export_torchscript(model, path)
                else:
                    notes = export_dynamo(model, path)
            except Exception as exc:  # record and go on
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log(f"[{name}] {exporter} export FAILED: {msg}")
                entry[f"{exporter}_error"] = msg
                if path.exists():
                    path.unlink()
                if exporter == "torchscript":
                    ok = False
                continue
            info = check_onnx(path, test_x_np, test_labels, torch_logits)
            diff = abs(info["top1_test_10k"] - t_top1)
            if diff > 0.05:
                ok = False
                log(f"[{name}] {fname}: ONNX top-1 differs from torch by {diff:.2f} pts")
            f_entry = dict(
                name=fname[: -len(".onnx")],
                file=fname,
                architecture=name,
                exporter=exporter,
                opset=info["opset"],
                params=entry["params"],
                macs=entry["macs"],
                top1_test_10k=info["top1_test_10k"],
                top1_eval_2000=info["top1_eval_2000"],
                torch_top1_test_10k=t_top1,
                max_abs_diff_vs_torch=info["max_abs_diff_vs_torch"],
                nodes=info["nodes"],
                initializers=info["initializers"],
                op_histogram=info["op_histogram"],
                input=dict(name="input", shape=["batch", 1, 28, 28], dtype="float32"),
                output=dict(name="logits", shape=["batch", 10], dtype="float32"),
                export_notes=notes,
                sha256=None,
            )
            ref["files"].append(f_entry)
            log(
                f"[{name}] {fname}: opset {info['opset']}, {info['nodes']} nodes, ORT top-1 "
                f"{info['top1_test_10k']:.2f}% (10k) {info['top1_eval_2000']:.2f}% (2000), "
                f"max|diff| {info['max_abs_diff_vs_torch']:.2e}; {info['op_histogram']}"
            )
        ref["models"][name] = entry

    # stable order: model order of MODELS, torchscript before dynamo
    order = {n: i for i, n in enumerate(MODELS)}
    ref["models"] = dict(sorted(ref["models"].items(), key=lambda kv: order[kv[0]]))
    ref["files"].sort(key=lambda e: (order[e["architecture"]], e["exporter"] != "torchscript"))

    if ref["sample_data"] is None or not (out / SAMPLE_FILE).exists():
        ref["sample_data"] = write_sample(
            out, args.seed, test_images, test_labels, (train_images, train_labels)
        )
        log(f"wrote {out / SAMPLE_FILE}")
    write_docs(out, ref)
    log("wrote reference.json and README.md")
    for name, wall in timings.items():
        log(f"train time {name}: {wall:.0f}s ({wall / 60:.1f} min)")
    log(f"total train time {sum(timings.values()):.0f}s")
    for e in ref["files"]:
        log(f"{e['file']}: {e['top1_test_10k']:.2f}% (10k), {e['top1_eval_2000']:.2f}% (2000)")
    if not ok:
        log("FAILED: see messages above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
