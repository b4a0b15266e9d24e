"""Export tiny CNNs with torch's real ONNX exporters into tests/data/exported/.

Hand-written parser graphs only show the patterns we thought of; these files
show what exporters actually emit (BatchNormalization after every conv, the
``Shape->Gather->Unsqueeze->Concat->Reshape`` chain of ``x.view(x.size(0), -1)``,
Clip-as-ReLU6, channel-shuffle reshapes, Resize with its scales/sizes inputs,
dynamo's own naming and constant handling). The cleanup tests and the cleanup
benchmark run on them.

Neither exporter writes Dropout for an eval-mode model (torch drops it
before ONNX), so none of these files has one; index.json says so in ``notes``.

Every family is a TINY version (8-32 channels, 32x32 or 28x28 input) so the
whole folder stays well under 3 MB. Weights and BatchNorm running statistics
are random with a fixed seed, so BN folding has non-trivial work.

Exports, each with a dynamic batch axis:

* ``torchscript``          ``torch.onnx.export(dynamo=False, opset_version=17)``
* ``dynamo``               ``torch.onnx.export(dynamo=True)`` (exporter's default opset; its
                           onnxscript optimizer already folds BN and constants)
* ``dynamo-noopt``         ``torch.onnx.export(dynamo=True, optimize=False)``: the raw translation,
                           with BatchNormalization, Identity, Expand/CastLike shape plumbing and
                           SplitToSequence - the cleanup pipeline's real work
* ``torchscript-opset11``  resnet and mobilenetv2 only: graphs as older pipelines wrote them
* ``torchscript-nofold``   one model with ``do_constant_folding=False``

Run: ``python tools/export_test_graphs.py [--out tests/data/exported]``.
An export that fails is recorded in index.json with its ``error`` instead of
stopping the run. Needs torch (the ``finetune`` extra) and onnxscript for dynamo.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "exported"
SEED = 0
#: the batch the example input uses; 1 would make torch.export specialize the batch dim
EXAMPLE_BATCH = 2


# -- building blocks ---------------------------------------------------------
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    """Conv (no bias, as torchvision writes it) + BatchNorm + optional activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 strided projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, act=nn.ReLU(inplace=True))
        self.conv2 = conv_bn(cout, cout, 3)
        self.down = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return F.relu(self.conv2(self.conv1(x)) + idt)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 1, act=nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hid, 1, act=nn.ReLU6(inplace=True)))
        layers += [conv_bn(hid, hid, 3, stride, groups=hid, act=nn.ReLU6(inplace=True)), conv_bn(hid, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.ReLU6(inplace=True)),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            conv_bn(16, 32, 1, act=nn.ReLU6(inplace=True)),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """GAP -> Conv -> ReLU -> Conv -> Hardsigmoid -> Mul (torchvision's MobileNetV3 SE)."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class V3Block(nn.Module):
    def __init__(self, cin: int, hid: int, cout: int, stride: int, se: bool, act: type[nn.Module]):
        super().__init__()
        self.expand = conv_bn(cin, hid, 1, act=act())
        self.dw = conv_bn(hid, hid, 3, stride, groups=hid, act=act())
        self.se = SqueezeExcite(hid, max(8, hid // 4)) if se else nn.Identity()
        self.project = conv_bn(hid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class TinyMobileNetV3(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish())
        self.blocks = nn.Sequential(
            V3Block(16, 32, 16, 1, se=True, act=nn.ReLU),
            V3Block(16, 48, 24, 2, se=False, act=nn.Hardswish),
            V3Block(24, 48, 24, 1, se=True, act=nn.Hardswish),
        )
        self.head = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.head(torch.flatten(x, 1))


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 -> BN -> ReLU -> 3x3 (pre-activation), concatenated to the input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class TinyDenseNet(nn.Module):
    def __init__(self, classes: int = 10, growth: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(16, growth), DenseLayer(24, growth))
        self.transition = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.Conv2d(32, 16, 1, bias=False),
                                        nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(16, growth), DenseLayer(24, growth))
        self.norm = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.block2(self.transition(self.block1(self.stem(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return self.fc(torch.flatten(x, 1))


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 (cardinality ``groups``)."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1, act=nn.ReLU(inplace=True)),
            conv_bn(width, width, 3, stride, groups=groups, act=nn.ReLU(inplace=True)),
            conv_bn(width, cout, 1),
        )
        self.down = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.down(x))


class TinyResNeXt(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 1, act=nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(ResNeXtBlock(16, 16, 32, 2, groups=4), ResNeXtBlock(32, 16, 32, 1, groups=4))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shuffle: view -> transpose -> contiguous -> view."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: chunk in two (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin),
                                         conv_bn(cin, half, 1, act=nn.ReLU(inplace=True)))
        bin_ = cin if stride == 2 else half
        self.branch2 = nn.Sequential(
            conv_bn(bin_, half, 1, act=nn.ReLU(inplace=True)),
            conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1, act=nn.ReLU(inplace=True)),
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.ReLU(inplace=True))
        self.stages = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1), ShuffleUnit(32, 32, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(x.mean([2, 3]))


class TinyUNet(nn.Module):
    """Encoder-decoder: ConvTranspose, nearest and bilinear Resize, concat skips."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.enc1 = conv_bn(3, 8, act=nn.ReLU(inplace=True))
        self.enc2 = conv_bn(8, 16, 3, 2, act=nn.ReLU(inplace=True))
        self.enc3 = conv_bn(16, 32, 3, 2, act=nn.ReLU(inplace=True))
        self.up_t = nn.ConvTranspose2d(32, 16, 2, 2)  # 8x8 -> 16x16
        self.dec2 = conv_bn(32, 16, act=nn.ReLU(inplace=True))
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")  # 16x16 -> 32x32
        self.dec1 = conv_bn(24, 8, act=nn.ReLU(inplace=True))
        self.side = nn.Conv2d(32, 8, 1)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up_t(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up_nearest(d2), e1], 1))
        # a deep-supervision side path upsampled bilinearly 4x
        side = F.interpolate(self.side(e3), scale_factor=4, mode="bilinear", align_corners=False)
        return self.head(d1 + side)


class TinyFlattenLinear(nn.Module):
    """LeNet-style: ``x.view(x.size(0), -1)`` -> Linear, with Dropout (MNIST-sized input)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = conv_bn(1, 8, 5, 2, act=nn.ReLU(inplace=True))  # 28 -> 14
        self.conv2 = conv_bn(8, 16, 3, 2, act=nn.ReLU(inplace=True))  # 14 -> 7
        self.pool = nn.MaxPool2d(2)  # 7 -> 3
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 3 * 3, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x):
        x = self.pool(self.conv2(self.conv1(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


# -- what to export ------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # without the batch


FAMILIES = (
    Family("resnet", TinyResNet, (3, 32, 32)),
    Family("mobilenetv2", TinyMobileNetV2, (3, 32, 32)),
    Family("mobilenetv3", TinyMobileNetV3, (3, 32, 32)),
    Family("densenet", TinyDenseNet, (3, 32, 32)),
    Family("resnext", TinyResNeXt, (3, 32, 32)),
    Family("shufflenet", TinyShuffleNet, (3, 32, 32)),
    Family("unet", TinyUNet, (3, 32, 32)),
    Family("flatten_linear", TinyFlattenLinear, (1, 28, 28)),
)


@dataclass(frozen=True)
class Exporter:
    label: str
    dynamo: bool
    opset: int | None  # None: the exporter's default
    constant_folding: bool = True
    optimize: bool = True  # dynamo only: run the onnxscript optimizer


TORCHSCRIPT = Exporter("torchscript", dynamo=False, opset=17)
DYNAMO = Exporter("dynamo", dynamo=True, opset=None)
DYNAMO_NOOPT = Exporter("dynamo-noopt", dynamo=True, opset=None, optimize=False)
TORCHSCRIPT_OPSET11 = Exporter("torchscript-opset11", dynamo=False, opset=11)
TORCHSCRIPT_NOFOLD = Exporter("torchscript-nofold", dynamo=False, opset=17, constant_folding=False)

#: (family, exporter) pairs beyond "every family with torchscript and dynamo"
EXTRA_EXPORTS = (
    ("resnet", TORCHSCRIPT_OPSET11),
    ("mobilenetv2", TORCHSCRIPT_OPSET11),
    ("flatten_linear", TORCHSCRIPT_NOFOLD),
)


NOTES = [
    "torch drops Dropout from eval-mode models before ONNX (both exporters), so no file has a Dropout node",
    "torchscript with constant folding and dynamo with its optimizer fold Conv+BN themselves; "
    "BatchNormalization survives only in densenet (pre-activation BN), torchscript-nofold and dynamo-noopt",
]


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine params (so folding does real work)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def build_model(family: Family) -> nn.Module:
    torch.manual_seed(SEED)
    model = family.build()
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model.eval()


def export_one(model: nn.Module, family: Family, exporter: Exporter, path: Path) -> None:
    """Export with a dynamic batch axis named ``batch``; input ``input``, output ``output``."""
    x = torch.randn(EXAMPLE_BATCH, *family.input_shape, generator=torch.Generator().manual_seed(SEED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.dynamo:
            prog = torch.onnx.export(
                model, (x,), dynamo=True, input_names=["input"], output_names=["output"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
                opset_version=exporter.opset, external_data=False, report=False, verbose=False,
                optimize=exporter.optimize,
            )
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=exporter.opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                do_constant_folding=exporter.constant_folding,
            )


def describe(path: Path) -> dict:
    """What index.json records about an exported file."""
    proto = onnx.load(str(path))
    default_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    hist = collections.Counter(n.op_type for n in proto.graph.node)
    init = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in init)
    shape = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {
        "opset": default_opset,
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(hist.items())),
        "input": inp.name,
        "input_shape": shape,
        "bytes": path.stat().st_size,
    }


def export_all(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    plan = [(f, e) for f in FAMILIES for e in (TORCHSCRIPT, DYNAMO, DYNAMO_NOOPT)]
    by_name = {f.name: f for f in FAMILIES}
    plan += [(by_name[name], e) for name, e in EXTRA_EXPORTS]
    entries = []
    for family, exporter in plan:
        file = f"{family.name}.{exporter.label}.onnx"
        path = out / file
        entry = {"file": file, "family": family.name, "exporter": exporter.label,
                 "requested_opset": exporter.opset, "constant_folding": exporter.constant_folding,
                 "optimize": exporter.optimize}
        try:
            export_one(build_model(family), family, exporter, path)
            onnx.checker.check_model(str(path), full_check=True)
            entry.update(describe(path))
        except Exception as exc:  # record why, keep exporting the rest
            path.unlink(missing_ok=True)
            entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        print(f"{file:45s} {entry.get('nodes', '-'):>4} nodes  {entry.get('error', '')}", file=sys.stderr)
        entries.append(entry)
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    entries = export_all(args.out)
    index = {"torch": torch.__version__, "onnx": onnx.__version__, "seed": SEED, "notes": NOTES, "models": entries}
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{len(entries)} exports ({sum('error' in e for e in entries)} failed), {total / 1e6:.2f} MB in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
