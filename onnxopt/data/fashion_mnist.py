"""Fashion-MNIST reader (no download, no torchvision): the `eval --dataset fashion-mnist` shortcut and the tools use it.

Reads the four idx gz files of Fashion-MNIST directly with gzip + numpy.
The Debian package ``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist/``.

Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT licence.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

#: Default folder of the idx gz files (Debian package ``dataset-fashion-mnist``).
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

#: Per-pixel mean and std of the Fashion-MNIST train split, on the [0, 1] scale.
MEAN = 0.2860
STD = 0.3530

NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_INSTALL_HINT = (
    "Install the data set with `apt-get install -y dataset-fashion-mnist` "
    "(it installs the idx gz files under {default}), or pass root= or set "
    "FASHION_MNIST_ROOT to a folder that holds them."
)


def default_root() -> str:
    """The folder to read from: ``$FASHION_MNIST_ROOT`` if set, else :data:`DEFAULT_ROOT`."""
    return os.environ.get("FASHION_MNIST_ROOT", DEFAULT_ROOT)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: truncated idx file")
    magic = int.from_bytes(data[0:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: bad idx magic {magic:#x}, expected {expected_magic:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: expected {count} bytes of payload, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None):
    """Load one split of Fashion-MNIST.

    Returns ``(images, labels)``: ``images`` uint8 of shape (N, 28, 28) and
    ``labels`` int64 of shape (N,). N is 60000 for ``"train"`` and 10000 for
    ``"test"``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root if root is not None else default_root())
    hint = _INSTALL_HINT.format(default=DEFAULT_ROOT)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {str(root)!r} does not exist. {hint}")
    img_name, lbl_name = _FILES[split]
    img_path, lbl_path = root / img_name, root / lbl_name
    missing = [str(p) for p in (img_path, lbl_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST file(s) missing: {', '.join(missing)}. {hint}")
    images = _read_idx(img_path, 0x00000803)
    labels = _read_idx(lbl_path, 0x00000801).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"unexpected shapes: images {images.shape}, labels {labels.shape}")
    return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28): ``(x / 255 - MEAN) / STD``."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 28, 28), got {np.shape(images)}")
    x = x.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


__all__ = [
    "CLASSES",
    "DEFAULT_ROOT",
    "MEAN",
    "NUM_CLASSES",
    "STD",
    "default_root",
    "load_fashion_mnist",
    "normalize",
]
