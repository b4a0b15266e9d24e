"""Small helpers every benchmark script shares: results files, statistics, peer tools.

Each benchmark writes ``DIR/<name>.json`` (every row with every field, plus the
environment, for later comparison) and ``DIR/<name>.md`` (a markdown table of
the chosen columns, for reading). A peer tool that is not installed is reported
as :data:`MISSING` in its cells, never skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: the cell value for a peer tool that is not installed
MISSING = "missing"


def peer_available(module: str) -> bool:
    """True if ``module`` (a peer tool such as ``onnxslim``) can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def peer_version(module: str) -> str:
    """The peer's ``__version__``, ``MISSING`` when it is not installed."""
    if not peer_available(module):
        return MISSING
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception as exc:  # an installed but broken peer is worth seeing
        return f"broken ({type(exc).__name__})"


def median_p90(values: Iterable[float]) -> tuple[float, float]:
    """Median and 90th percentile (linear interpolation); NaN for no values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(np.median(arr)), float(np.percentile(arr, 90))


def environment(peers: Sequence[str] = ()) -> dict:
    """Versions and machine facts recorded beside every result."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
    for mod in ("onnx", "onnxruntime", "onnx_graphsurgeon", "numpy", *peers):
        env[mod] = peer_version(mod)
    return env


def format_cell(value) -> str:
    """Readable markdown cell: floats to 4 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of ``columns`` (header = column key) over ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_results(out_dir, name: str, rows: Sequence[dict], columns: Sequence[str], *,
                  meta: dict | None = None) -> str:
    """Write ``out_dir/name.json`` (all rows, all fields, ``meta``) and ``out_dir/name.md``; return the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    payload = {"benchmark": name, "columns": list(columns), "meta": meta or {}, "rows": list(rows)}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    (out / f"{name}.md").write_text(f"# {name}\n\n{table}")
    return table


def append_notes(md_path, lines: Sequence[str]) -> None:
    """Add a ``Notes`` list under the table of a results markdown file (data, settings, disturbance)."""
    path = Path(md_path)
    path.write_text(path.read_text() + "\nNotes:\n\n" + "".join(f"- {ln}\n" for ln in lines))


# -- plots ---------------------------------------------------------------------------------
#: distinct marker shapes, cycled over the series of a panel
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8")


@dataclass
class Series:
    """One legend entry: points (``line=False``) or a line through them, NaNs dropped."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    marker: str | None = None  # None: the next of :data:`MARKERS`
    line: bool = False
    color: str | None = None   # None: matplotlib's colour cycle


@dataclass
class Panel:
    """One subplot: a title and its series."""

    title: str
    series: list[Series] = field(default_factory=list)


def _finite_points(s: Series) -> tuple[list[float], list[float]]:
    pts = [(float(a), float(b)) for a, b in zip(s.x, s.y)
           if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b)]
    return [a for a, _ in pts], [b for _, b in pts]


def save_plot(path, panels: Sequence[Panel], *, xlabel: str, ylabel: str, title: str = "",
              xlog: bool = False) -> Path | None:
    """Write a PNG of ``panels`` side by side (matplotlib's Agg canvas, no pyplot state); None without matplotlib.

    Series with no finite point are left out of the plot (their rows say why).
    """
    if not peer_available("matplotlib"):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for i, s in enumerate(panel.series):
            xs, ys = _finite_points(s)
            if not xs:
                continue
            marker = s.marker or MARKERS[i % len(MARKERS)]
            if s.line:
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.plot([xs[j] for j in order], [ys[j] for j in order], marker=marker, label=s.label, color=s.color)
            else:
                ax.scatter(xs, ys, marker=marker, label=s.label, s=46, color=s.color)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xlog:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


# -- benchmark data ------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
#: the sample data written by tools/train_reference.py (calib/input, eval/input, eval/labels)
SAMPLE_NPZ = ROOT / "models" / "fashion_mnist_sample.npz"
#: the reference models (TorchScript exports; ``NAME.dynamo.onnx`` beside each)
REFERENCE_MODELS = ("resnet", "mobilenetv2", "densenet_se")
#: a small exported graph for smoke runs when the reference models are not there
FALLBACK_MODEL = ROOT / "tests" / "data" / "exported" / "resnet.torchscript.onnx"
EVAL_CHOICES = ("full", "sample", "random")
FASHION_SHAPE = (1, 28, 28)


def default_models() -> list[Path]:
    """The reference models that exist under models/."""
    return [p for p in (ROOT / "models" / f"{n}.onnx" for n in REFERENCE_MODELS) if p.is_file()]


def quick_model() -> Path:
    """models/resnet.onnx with its sample data when present, else the small exported ResNet of the tests."""
    ref = ROOT / "models" / "resnet.onnx"
    return ref if ref.is_file() and SAMPLE_NPZ.is_file() else FALLBACK_MODEL


@dataclass(frozen=True)
class DataChoice:
    """Which data a benchmark reads: ``eval`` in :data:`EVAL_CHOICES` (None: full, or in quick mode sample/random)."""

    eval: str | None
    limit: int | None
    calib: int
    quick: bool = False
    seed: int = 0


@dataclass
class BenchData:
    """Calibration inputs and a labelled eval set for one single-input model, in memory."""

    specs: list
    calib: dict[str, np.ndarray]
    eval_x: np.ndarray
    eval_y: np.ndarray
    description: str
    fixed_batch: int | None = None

    @property
    def input_name(self) -> str:
        return self.specs[0].name

    def eval_dataset(self):
        from onnxopt.data import Dataset

        arrays = {self.input_name: self.eval_x, "labels": self.eval_y}
        return Dataset(lambda: iter([arrays]), self.specs, self.description, length=len(self.eval_y),
                       has_labels=True)

    def calib_dataset(self):
        from onnxopt.data import Dataset

        arrays = dict(self.calib)
        n = len(next(iter(arrays.values())))
        return Dataset(lambda: iter([arrays]), self.specs, "calibration images", length=n)

    def batch_fits(self, batch: int) -> bool:
        return self.fixed_batch is None or self.fixed_batch == batch

    def feeds(self, batch: int) -> dict[str, np.ndarray]:
        """The first ``batch`` eval images (tiled when the eval set is smaller)."""
        x = self.eval_x
        if len(x) < batch:
            x = np.concatenate([x] * (batch // len(x) + 1))
        return {self.input_name: np.ascontiguousarray(x[:batch])}


def model_input(model) -> tuple[list, int | None]:
    """(input specs, fixed batch or None) of a single-input model; an error for several inputs."""
    from onnxopt.data import input_specs
    from onnxopt.errors import DataError

    specs = input_specs(model)
    if len(specs) != 1:
        raise DataError(f"the benchmarks take single-input models; this one has {len(specs)} inputs")
    first = specs[0].shape[0] if specs[0].shape else None
    return specs, first if isinstance(first, int) and first > 0 else None


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    from onnxopt.data.fashion_mnist import load_fashion_mnist, normalize
    from onnxopt.errors import DataError

    try:
        images, labels = load_fashion_mnist(split)
    except FileNotFoundError as exc:
        raise DataError(f"--eval-data full needs the Fashion-MNIST test set: {exc}") from exc
    return normalize(images), labels.astype(np.int64)


def _npz_split(split: str) -> dict[str, np.ndarray]:
    from onnxopt.errors import DataError

    if not SAMPLE_NPZ.is_file():
        raise DataError(f"{SAMPLE_NPZ} does not exist (tools/train_reference.py writes it); use --eval-data full "
                        "or random")
    with np.load(SAMPLE_NPZ, allow_pickle=False) as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(split + "/")}


def _random_inputs(spec, n: int, rng) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]]
    return rng.standard_normal([n, *shape]).astype(spec.dtype)


def load_bench_data(model_path: Path, choice: DataChoice) -> BenchData:
    """Calibration and eval data for ``model_path`` as ``choice`` says (see the scripts' ``--eval-data``).

    ``random``: random inputs labelled with the FP32 model's own predictions,
    so top-1 reads as agreement with FP32 (100% for FP32 itself).
    """
    from onnxopt.errors import DataError
    from onnxopt.ir import load_model

    model = load_model(model_path)
    specs, fixed = model_input(model)
    spec = specs[0]
    fits = len(spec.shape) == 4 and all(not isinstance(d, int) or d < 0 or d == w
                                        for d, w in zip(spec.shape[1:], FASHION_SHAPE))
    kind = choice.eval or ("full" if not choice.quick else ("sample" if fits and SAMPLE_NPZ.is_file() else "random"))
    if kind not in EVAL_CHOICES:
        raise DataError(f"--eval-data must be one of {', '.join(EVAL_CHOICES)}")
    if kind != "random" and not fits:
        raise DataError(f"{model_path.name}: input {spec.name} {list(spec.shape)} is not [N, 1, 28, 28] "
                        "Fashion-MNIST; use --eval-data random")
    rng = np.random.default_rng(choice.seed)
    if kind == "random":
        n_eval = choice.limit or 256
        calib = _random_inputs(spec, choice.calib, rng)
        x = _random_inputs(spec, n_eval, rng)
        y = _fp32_predictions(model_path, spec.name, x)
        desc = f"random: {n_eval} random inputs labelled by the FP32 model (top-1 = agreement with FP32)"
    else:
        calib = _calibration_images(choice, rng)
        if kind == "full":
            x, y = _fashion("test")
            desc = "full: Fashion-MNIST test set"
        else:
            ev = _npz_split("eval")
            x, y = ev["input"], ev["labels"].astype(np.int64)
            desc = f"sample: eval split of {SAMPLE_NPZ.name}"
        if choice.limit:
            x, y = x[:choice.limit], y[:choice.limit]
        desc += f" ({len(y)} images); calibration: {len(calib)} images"
    return BenchData(specs, {spec.name: calib[:choice.calib]}, x, y, desc, fixed)


def _calibration_images(choice: DataChoice, rng) -> np.ndarray:
    """The sample file's calib split (512 stratified train images); without it, a seeded draw from the train split."""
    if SAMPLE_NPZ.is_file():
        return _npz_split("calib")["input"][:choice.calib]
    x, _ = _fashion("train")
    return x[np.sort(rng.choice(len(x), size=choice.calib, replace=False))]


def _fp32_predictions(model_path: Path, name: str, x: np.ndarray) -> np.ndarray:
    from onnxopt.runtime import make_session

    sess = make_session(model_path, "cpu", threads=1, spin=False)
    out = np.concatenate([sess.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return out.reshape(len(x), -1).argmax(axis=1).astype(np.int64)
