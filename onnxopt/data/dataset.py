"""Reading and validating input data against a model (see package docstring)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import DataError

LABEL_KEY = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (ints, or strings for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def accepts_shape(self, shape: Sequence[int], *, batched: bool = True) -> bool:
        """True if a sample batch of ``shape`` fits (symbolic dims match anything)."""
        if len(shape) != len(self.shape):
            return False
        for i, (want, got) in enumerate(zip(self.shape, shape)):
            if i == 0 and batched:
                continue  # the sample axis
            if isinstance(want, int) and want >= 0 and want != got:
                return False
        return True


def input_specs(model) -> list[InputSpec]:
    """The real (non-initializer) inputs of a :class:`onnxopt.ir.Model`."""
    specs = []
    for t in model.graph.inputs:
        if isinstance(t, gs.Constant):
            continue
        shape = tuple(d if d is not None else "?" for d in (t.shape or ()))
        specs.append(InputSpec(t.name, np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32), shape))
    return specs


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes model input."""

    size: tuple[int, int] | None = None  # (height, width); None keeps the file's size
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0  # applied before mean/std
    layout: str = "NCHW"  # or "NHWC"
    channel_order: str = "RGB"  # or "BGR"; "L" for grayscale

    def __post_init__(self):
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"image layout must be NCHW or NHWC, not {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR", "L"):
            raise DataError(f"image channel order must be RGB, BGR or L, not {self.channel_order!r}")


def _safe_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: holds pickled objects; only plain numeric arrays are read") from exc
        raise DataError(f"{path}: not a readable .npy/.npz file: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz file: {exc}") from exc


class Dataset:
    """Named input arrays (sample axis first) plus optional labels, validated against specs.

    ``chunks`` yields dicts of arrays file by file, so a folder source streams;
    ``batches(n)`` re-cuts them into batches of ``n`` samples.
    """

    def __init__(self, chunks_factory, specs: Sequence[InputSpec], description: str, length: int | None = None,
                 has_labels: bool = False):
        self._chunks_factory = chunks_factory
        self.specs = list(specs)
        self.description = description
        self._length = length
        self.has_labels = has_labels

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for chunk in self._chunks_factory():
            yield self._validate(chunk)

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(len(next(iter(c.values()))) for c in self.chunks())
        return self._length

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` samples (the last may be smaller); labels under ``labels``."""
        if batch_size < 1:
            raise DataError("batch size must be >= 1")
        pending: list[dict[str, np.ndarray]] = []
        pending_n = 0
        seen = 0
        for chunk in self.chunks():
            n = len(next(iter(chunk.values())))
            if limit is not None:
                if seen >= limit:
                    break
                if seen + n > limit:
                    chunk = {k: v[: limit - seen] for k, v in chunk.items()}
                    n = limit - seen
            seen += n
            pending.append(chunk)
            pending_n += n
            while pending_n >= batch_size:
                merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                yield {k: v[:batch_size] for k, v in merged.items()}
                rest = {k: v[batch_size:] for k, v in merged.items()}
                pending_n -= batch_size
                pending = [rest] if pending_n else []
        if pending_n:
            yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}

    def arrays(self, limit: int | None = None) -> dict[str, np.ndarray]:
        """Everything in memory at once (for small data: checks, evaluation sets)."""
        parts = list(self.batches(1 << 30, limit=limit))
        if not parts:
            raise DataError(f"{self.description}: holds no samples")
        return parts[0]

    # -- validation ---------------------------------------------------------
    def _validate(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {s.name for s in self.specs}
        data_keys = [k for k in chunk if k != LABEL_KEY]
        if len(self.specs) == 1 and len(data_keys) == 1 and data_keys[0] not in names:
            chunk = {self.specs[0].name: chunk[data_keys[0]], **({LABEL_KEY: chunk[LABEL_KEY]} if LABEL_KEY in chunk else {})}
            data_keys = [self.specs[0].name]
        missing = [n for n in names if n not in chunk]
        if missing:
            raise DataError(f"{self.description}: no array for model input(s) {', '.join(missing)} "
                            f"(arrays present: {', '.join(sorted(chunk)) or 'none'})")
        extra = [k for k in data_keys if k not in names]
        if extra:
            raise DataError(f"{self.description}: array(s) {', '.join(extra)} match no model input "
                            f"(inputs: {', '.join(sorted(names))})")
        out = {}
        n_samples = None
        for spec in self.specs:
            arr = chunk[spec.name]
            if arr.dtype.kind not in "biuf":
                raise DataError(f"{self.description}: array {spec.name!r} has dtype {arr.dtype}, not numeric")
            if not spec.accepts_shape(arr.shape):
                raise DataError(f"{self.description}: array {spec.name!r} has shape {list(arr.shape)}, the model expects "
                                f"[samples, ...] matching {list(spec.shape)}")
            if arr.dtype != spec.dtype:
                if np.can_cast(arr.dtype, spec.dtype, casting="same_kind") or (arr.dtype.kind in "iu" and spec.dtype.kind == "f"):
                    arr = arr.astype(spec.dtype)
                else:
                    raise DataError(f"{self.description}: array {spec.name!r} has dtype {arr.dtype}, the model expects {spec.dtype}")
            if n_samples is None:
                n_samples = len(arr)
            elif len(arr) != n_samples:
                raise DataError(f"{self.description}: arrays disagree on the number of samples ({n_samples} vs {len(arr)})")
            out[spec.name] = arr
        if LABEL_KEY in chunk:
            labels = chunk[LABEL_KEY]
            if labels.dtype.kind not in "iu" or labels.ndim != 1 or len(labels) != n_samples:
                raise DataError(f"{self.description}: 'labels' must be a 1-D integer array of {n_samples} class indices, "
                                f"got {labels.dtype} {list(labels.shape)}")
            out[LABEL_KEY] = labels.astype(np.int64)
        return out

    def check_finite(self) -> None:
        """Raise if any input holds NaN or Inf (calibration would be meaningless)."""
        for i, chunk in enumerate(self.chunks()):
            for k, v in chunk.items():
                if k != LABEL_KEY and v.dtype.kind == "f" and not np.isfinite(v).all():
                    raise DataError(f"{self.description}: array {k!r} holds NaN or Inf values")


def _split_spec(source: str) -> tuple[Path, str | None]:
    p = Path(source)
    if p.exists():
        return p, None
    if ":" in source:
        head, split = source.rsplit(":", 1)
        if Path(head).exists() and split and "/" not in split:
            return Path(head), split
    return p, None


def _npz_chunk(path: Path, split: str | None, description: str) -> dict[str, np.ndarray]:
    with _safe_load(path) as z:
        keys = list(z.keys())
        splits = sorted({k.split("/", 1)[0] for k in keys if "/" in k})
        if split is not None:
            prefix = split + "/"
            chosen = {k[len(prefix):]: z[k] for k in keys if k.startswith(prefix)}
            if not chosen:
                raise DataError(f"{description}: no split {split!r} (splits: {', '.join(splits) or 'none'})")
            return chosen
        if splits and all("/" in k for k in keys):
            raise DataError(f"{description}: holds splits {', '.join(splits)}; choose one as {path}:SPLIT")
        return {k: z[k] for k in keys if "/" not in k}


def open_dataset(source, specs: Sequence[InputSpec], image_options: ImageOptions | None = None) -> Dataset:
    """Open ``source`` (see module docs) for a model with inputs ``specs``."""
    path, split = _split_spec(str(source))
    description = str(source)
    if not path.exists():
        raise DataError(f"data not found: {source}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            _npz_chunk(path, split, description)  # fail early on a bad file or split
            return _finish(Dataset(lambda: iter([_npz_chunk(path, split, description)]), specs, description))
        if suffix == ".npy":
            if len(specs) != 1:
                raise DataError(f"{description}: a single .npy array only fits a single-input model "
                                f"(this one has {len(specs)} inputs); use an .npz keyed by input name")
            return _finish(Dataset(lambda: iter([{specs[0].name: _safe_load(path)}]), specs, description))
        if suffix in IMAGE_SUFFIXES:
            return _image_dataset([path], specs, image_options or ImageOptions(), description, None)
        raise DataError(f"{description}: unsupported data file type {suffix or '(none)'}; use .npz, .npy or a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    arrays = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays and images:
        raise DataError(f"{description}: mixes array files and images; use one kind per folder")
    if arrays:
        def chunks():
            for f in arrays:
                if f.suffix.lower() == ".npz":
                    yield _npz_chunk(f, split, str(f))
                else:
                    if len(specs) != 1:
                        raise DataError(f"{f}: a .npy file only fits a single-input model")
                    yield {specs[0].name: _safe_load(f)}
        return _finish(Dataset(chunks, specs, description))
    if images:
        return _image_dataset(images, specs, image_options or ImageOptions(), description, path)
    raise DataError(f"{description}: folder holds no .npy, .npz or image files")


def _finish(ds: Dataset) -> Dataset:
    first = next(ds.chunks(), None)  # validates names, shapes and dtypes up front
    if first is None or len(next(iter(first.values()))) == 0:
        raise DataError(f"{ds.description}: holds no samples")
    ds.has_labels = LABEL_KEY in first
    return ds


def _image_dataset(files: list[Path], specs, opts: ImageOptions, description: str, root: Path | None) -> Dataset:
    if len(specs) != 1:
        raise DataError(f"{description}: images only fit a single-input model")
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading images needs Pillow: pip install pillow") from exc
    spec = specs[0]
    classes = None
    if root is not None and all(f.parent != root for f in files):
        classes = sorted({f.relative_to(root).parts[0] for f in files})

    def load(f: Path) -> np.ndarray:
        try:
            img = Image.open(f)
            img = img.convert("L" if opts.channel_order == "L" else "RGB")
        except Exception as exc:
            raise DataError(f"{f}: not a readable image: {exc}") from exc
        if opts.size is not None:
            img = img.resize((opts.size[1], opts.size[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if opts.channel_order == "BGR":
            arr = arr[:, :, ::-1]
        arr = arr * opts.scale
        arr = (arr - np.asarray(opts.mean, np.float32)) / np.asarray(opts.std, np.float32)
        if opts.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr)

    def chunks():
        batch = 64
        for i in range(0, len(files), batch):
            part = files[i:i + batch]
            chunk = {spec.name: np.stack([load(f) for f in part]).astype(spec.dtype)}
            if classes is not None:
                chunk[LABEL_KEY] = np.array([classes.index(f.relative_to(root).parts[0]) for f in part], np.int64)
            yield chunk

    return _finish(Dataset(chunks, specs, description, length=len(files)))


def random_dataset(specs: Sequence[InputSpec], n: int = 4, *, seed: int = 0, batch: int = 1,
                   shape_overrides: dict[str, Sequence[int]] | None = None) -> Dataset:
    """``n`` batches of random inputs; symbolic dims become ``batch`` on axis 0 and must be given elsewhere."""
    rng = np.random.default_rng(seed)
    shape_overrides = shape_overrides or {}
    arrays = {}
    for s in specs:
        if s.name in shape_overrides:
            shape = tuple(int(d) for d in shape_overrides[s.name])
        else:
            shape = []
            for i, d in enumerate(s.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif i == 0:
                    shape.append(batch)
                else:
                    raise DataError(f"input {s.name!r} has a dynamic dim {d!r} at axis {i}; give its shape "
                                    f"(--input-shape {s.name}:...) or pass real data")
            shape = tuple(shape)
        if s.dtype.kind == "f":
            arr = rng.standard_normal((n * shape[0],) + shape[1:]).astype(s.dtype) if shape else rng.standard_normal(n).astype(s.dtype)
        elif s.dtype.kind == "b":
            arr = rng.integers(0, 2, (n * shape[0],) + shape[1:]).astype(bool)
        else:
            arr = rng.integers(0, 4, (n * shape[0],) + shape[1:]).astype(s.dtype)
        arrays[s.name] = arr
    return Dataset(lambda: iter([arrays]), specs, "random inputs", length=len(next(iter(arrays.values()))))
