"""Reusable argument groups shared by subcommands (as in Polygraphy).

Each group adds its options to a parser and turns parsed args into a typed
object, so every command spells ``--providers`` or ``--rtol`` the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from onnxopt.data import ImageOptions
from onnxopt.errors import OnnxoptError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}")
    return parts[0], parts[1]


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _number(text: str, ok, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected a number {what}, got {text!r}")
    return v


def positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "> 0")


def non_negative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0, ">= 0")


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` -> ("name", (1, 3, 224, 224))."""
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME:DxDx..., got {text!r}")
    name, dims = text.rsplit(":", 1)
    try:
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME:DxDx..., got {text!r}") from None


class ModelArgs:
    """The positional MODEL argument."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
        if many:
            parser.add_argument("models", metavar="MODEL", nargs="+", type=Path, help="ONNX model file(s)")
        else:
            parser.add_argument("model", metavar="MODEL", type=Path, help="ONNX model file")


class OutputArgs:
    """``-o OUT`` plus ``--in-place`` and ``--external-data``."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
        g = parser.add_argument_group("output")
        g.add_argument("-o", "--output", type=Path, required=required, metavar="OUT",
                       help="where to write the optimized model (written atomically; never the input unless --in-place)")
        g.add_argument("--in-place", action="store_true", help="allow OUT to be the input model itself")
        g.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                       help="store weights in OUT.data beside OUT (default: only when the model exceeds 2 GB)")


@dataclass
class DataOptions:
    source: str | None
    image: ImageOptions
    input_shapes: dict[str, tuple[int, ...]]


class DataArgs:
    """A data source in the project's one data format (see ``onnxopt.data``)."""

    @staticmethod
    def add(parser: argparse.ArgumentParser, flag: str = "--inputs", *, help: str | None = None,
            required: bool = False) -> None:
        g = parser.add_argument_group("data")
        g.add_argument(flag, dest="data", metavar="DATA", required=required,
                       help=help or ("input data: FILE.npz (arrays keyed by input name, optional 'labels'), "
                                     "FILE.npz:SPLIT, FILE.npy, or a folder of .npy/.npz files or images"))
        g.add_argument("--image-size", type=_size, metavar="HxW", help="resize images to HxW")
        g.add_argument("--image-mean", type=_floats, default=(0.0,), metavar="M[,M,M]",
                       help="per-channel mean subtracted after scaling to [0,1] (default 0)")
        g.add_argument("--image-std", type=_floats, default=(1.0,), metavar="S[,S,S]",
                       help="per-channel std divided after the mean (default 1)")
        g.add_argument("--image-layout", choices=("NCHW", "NHWC"), default="NCHW", help="tensor layout for images")
        g.add_argument("--image-channels", choices=("RGB", "BGR", "L"), default="RGB",
                       help="channel order for images (L = grayscale)")
        g.add_argument("--input-shape", type=input_shape, action="append", default=[], metavar="NAME:DxD...",
                       help="shape for random inputs where the model has dynamic dims (repeatable)")

    @staticmethod
    def parse(args) -> DataOptions:
        return DataOptions(
            source=args.data,
            image=ImageOptions(size=args.image_size, mean=args.image_mean, std=args.image_std,
                               layout=args.image_layout, channel_order=args.image_channels),
            input_shapes=dict(args.input_shape),
        )


class ProviderArgs:
    @staticmethod
    def add(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
        g = parser.add_argument_group("execution")
        g.add_argument("--providers", default=default, metavar="P[,P]",
                       help=f"execution providers, comma-separated: cpu, cuda, tensorrt (default {default}); "
                            "a provider that is not installed is an error, never a silent CPU fallback")
        g.add_argument("--threads", type=positive_int, default=None, metavar="T",
                       help="intra-op threads per session (default: onnxruntime's choice)")


class ToleranceArgs:
    @staticmethod
    def add(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("tolerances")
        g.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
        g.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")


class ReportArgs:
    @staticmethod
    def add(parser: argparse.ArgumentParser, *, json_flag: str = "--json") -> None:
        g = parser.add_argument_group("report")
        if json_flag == "--json":
            g.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                           help="write a JSON report to FILE (or to stdout with no FILE)")
        g.add_argument("--quiet", "-q", action="store_true", help="print only errors (and JSON when asked)")


def check_output_path(args, input_path: Path) -> Path:
    out: Path = args.output
    if out.resolve() == Path(input_path).resolve() and not args.in_place:
        raise OnnxoptError(f"output {out} is the input model; pass --in-place to overwrite it")
    return out
