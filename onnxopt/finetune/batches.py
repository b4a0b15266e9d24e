"""Training data as batches of torch tensors: our :class:`~onnxopt.data.Dataset`, a torch DataLoader, a list of dicts.

A batch is a mapping from model input name to an array (numpy or torch, sample
axis first) plus an optional ``labels`` array of class indices, the project's
one data format. For a single-input model an ``(inputs, labels)`` pair (what a
DataLoader over a TensorDataset yields) and a dict with one differently named
array are accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path

import numpy as np
import torch

from onnxopt.data import Dataset, InputSpec, input_specs, open_dataset
from onnxopt.data.dataset import LABEL_KEY
from onnxopt.errors import DataError


def open_data(data, model, description: str = "data"):
    """``data`` as something :func:`iterate` accepts; a path is opened with the project's data reader."""
    if isinstance(data, (str, Path)):
        return open_dataset(data, input_specs(model))
    if data is None:
        raise DataError(f"no {description} given")
    if not isinstance(data, (Dataset, Iterable)):
        raise DataError(f"{description} must be a Dataset, a path, or an iterable of dict batches, "
                        f"not {type(data).__name__}")
    return data


def iterate(data, batch_size: int) -> Iterator:
    """One pass over ``data`` (a Dataset is cut into ``batch_size`` batches; a single dict is one batch)."""
    if isinstance(data, Dataset):
        return data.batches(batch_size)
    if isinstance(data, Mapping):
        return iter([data])
    return iter(data)


def check_reiterable(data, passes: int, description: str = "data") -> None:
    """A one-shot iterator (a generator) cannot feed several epochs; say so before training starts."""
    if passes > 1 and not isinstance(data, (Dataset, Mapping)) and iter(data) is data:
        raise DataError(f"{description} is a one-shot iterator (a generator?) but {passes} passes are needed; "
                        "pass a list, a DataLoader or a Dataset")


def count_batches(data, batch_size: int) -> int | None:
    """Batches per pass when that is known without reading the data."""
    if isinstance(data, Dataset):
        return -(-len(data) // batch_size)
    if isinstance(data, Mapping):
        return 1
    if isinstance(data, Sized):
        return len(data)
    return None


def _tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise DataError(f"{what} is not an array ({type(value).__name__})") from exc
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {arr.dtype}, not numeric")
    return torch.from_numpy(np.ascontiguousarray(arr))


class BatchReader:
    """Turns one batch into (model feeds, labels or None), with clear :class:`DataError` s."""

    def __init__(self, specs: list[InputSpec], description: str = "data"):
        self.specs = list(specs)
        self.input_names = [s.name for s in self.specs]
        self.description = description

    def __call__(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        batch = self._as_mapping(batch)
        keys = [k for k in batch if k != LABEL_KEY]
        if len(self.input_names) == 1 and self.input_names[0] not in batch and len(keys) == 1:
            batch = {self.input_names[0]: batch[keys[0]], **({LABEL_KEY: batch[LABEL_KEY]} if LABEL_KEY in batch else {})}
        missing = [n for n in self.input_names if n not in batch]
        if missing:
            raise DataError(f"{self.description}: a batch has no array for model input(s) {', '.join(missing)} "
                            f"(keys: {', '.join(map(str, batch)) or 'none'})")
        feeds = {n: _tensor(batch[n], f"{self.description}: input {n!r}") for n in self.input_names}
        for spec in self.specs:
            shape = tuple(feeds[spec.name].shape)
            if not spec.accepts_shape(shape):
                raise DataError(f"{self.description}: input {spec.name!r} has shape {list(shape)}, the model expects "
                                f"[samples, ...] matching {list(spec.shape)}")
        sizes = {n: (int(t.shape[0]) if t.dim() else None) for n, t in feeds.items()}
        if any(s is None for s in sizes.values()):
            raise DataError(f"{self.description}: inputs need a sample axis first (got a scalar)")
        n_samples = next(iter(sizes.values()))
        if len(set(sizes.values())) > 1:
            raise DataError(f"{self.description}: inputs disagree on the batch size ({sizes})")
        labels = None
        if LABEL_KEY in batch and batch[LABEL_KEY] is not None:
            labels = _tensor(batch[LABEL_KEY], f"{self.description}: labels")
            if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() != 1 or len(labels) != n_samples:
                raise DataError(f"{self.description}: 'labels' must be a 1-D integer array of {n_samples} class indices "
                                f"(one per sample), got {str(labels.dtype).replace('torch.', '')} {list(labels.shape)}")
            labels = labels.long()
        return feeds, labels

    def _as_mapping(self, batch) -> Mapping:
        if isinstance(batch, Mapping):
            return batch
        if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2 and len(self.input_names) == 1:
            return {self.input_names[0]: batch[0], **({LABEL_KEY: batch[1]} if len(batch) == 2 else {})}
        raise DataError(f"{self.description}: a batch must be a dict of arrays keyed by input name "
                        f"(plus optional 'labels'), got {type(batch).__name__}")


class ShuffledBatches:
    """In-memory arrays served as batches in a new seeded order on every pass (every epoch).

    Training on a fixed order (what :meth:`Dataset.batches` gives) makes the
    last batches of every epoch the same and slows recovery; this reshuffles.
    ``transform(batch, rng) -> batch`` is a per-batch hook (data augmentation,
    e.g. :class:`~onnxopt.finetune.augment.RandomShiftFlip`); it gets the
    pass's numpy Generator so runs are reproducible from ``seed``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0,
                 transform=None, drop_last: bool = False):
        if batch_size < 1:
            raise DataError("batch size must be >= 1")
        sizes = {k: len(v) for k, v in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise DataError(f"arrays must share one sample count, got {sizes or 'none'}")
        self.arrays = dict(arrays)
        self.n = next(iter(sizes.values()))
        if self.n == 0:
            raise DataError("no samples to train on")
        self.batch_size, self.seed, self.transform, self.drop_last = batch_size, seed, transform, drop_last
        self.passes = 0

    @classmethod
    def from_dataset(cls, data: Dataset, batch_size: int, **kwargs) -> "ShuffledBatches":
        return cls(data.arrays(), batch_size, **kwargs)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng((self.seed, self.passes))
        self.passes += 1
        order = rng.permutation(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            batch = {k: v[idx] for k, v in self.arrays.items()}
            yield self.transform(batch, rng) if self.transform is not None else batch
