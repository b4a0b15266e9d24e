"""Data augmentation hooks for :class:`~onnxopt.finetune.batches.ShuffledBatches` (numpy, no torchvision).

A hook is ``transform(batch, rng) -> batch`` on a dict batch keyed by input
name; these are small classes so a recipe or the CLI can name them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxopt.errors import DataError


class RandomShiftFlip:
    """Random translation by up to ``pad`` pixels (edge-value padding) and horizontal flips, NCHW images.

    What CNNs on small images are usually trained with (random crop of a
    padded image + flip). Pads with each image's border value so normalized
    backgrounds stay background. Only the inputs named in ``inputs`` (default:
    every 4-D float array) change; labels pass through.
    """

    def __init__(self, pad: int = 2, flip: bool = True, inputs: tuple[str, ...] | None = None):
        if pad < 0:
            raise DataError(f"shift padding must be >= 0, got {pad}")
        self.pad, self.flip, self.inputs = int(pad), bool(flip), inputs

    def _applies(self, name: str, value) -> bool:
        if self.inputs is not None:
            return name in self.inputs
        return isinstance(value, np.ndarray) and value.ndim == 4 and value.dtype.kind == "f"

    def __call__(self, batch: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = dict(batch)
        for name, x in batch.items():
            if not self._applies(name, x):
                continue
            n, _, h, w = x.shape
            p = self.pad
            if p:
                padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="edge")
                dy = rng.integers(0, 2 * p + 1, size=n)
                dx = rng.integers(0, 2 * p + 1, size=n)
                rows = dy[:, None] + np.arange(h)[None, :]           # (n, h)
                cols = dx[:, None] + np.arange(w)[None, :]           # (n, w)
                x = padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]
            if self.flip:
                flips = rng.random(n) < 0.5
                x = np.where(flips[:, None, None, None], x[..., ::-1], x)
            out[name] = np.ascontiguousarray(x, dtype=batch[name].dtype)
        return out


#: augmentation hooks by the names the CLI and recipes use
AUGMENTATIONS = {"none": None, "shift-flip": RandomShiftFlip, "shift": lambda: RandomShiftFlip(flip=False)}
