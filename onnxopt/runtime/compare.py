"""Numeric comparison of a model's outputs against a reference model's.

Statistics stream over batches (nothing but running sums is kept), so a
comparison over a large data set needs no more memory than one batch:

* max absolute error ``|got - ref|``;
* max relative error ``|got - ref| / |ref|``, over elements whose reference
  magnitude exceeds ``atol`` (below it the absolute tolerance governs, and a
  ratio against ~0 says nothing);
* cosine similarity of the whole output (all batches) as one vector;
* top-1 agreement for classifier outputs (2-D ``[batch, classes]`` floats);
* pass/fail with ``numpy.allclose`` semantics: ``|got - ref| <= atol + rtol * |ref|``
  everywhere (NaN only matches NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from onnxopt.data import Dataset, InputSpec
from onnxopt.errors import CheckFailed
from onnxopt.runtime.session import run_batches


@dataclass
class OutputComparison:
    """How one output of a model compares with the reference's same-named output."""

    name: str
    shape: list[int] | None  # of the last batch
    elements: int
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    top1_agreement: float | None  # fraction in [0, 1]; None if not a classifier output
    mismatched: int  # elements outside the tolerance
    passed: bool
    message: str = ""

    def describe(self) -> str:
        """One line for tables, check messages and logs."""
        if self.message:
            return self.message
        parts = [f"max abs {self.max_abs_error:.3g}", f"max rel {self.max_rel_error:.3g}",
                 f"cosine {self.cosine_similarity:.6f}"]
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {100 * self.top1_agreement:.2f}%")
        if self.mismatched:
            parts.append(f"{self.mismatched} of {self.elements} elements outside tolerance")
        return ", ".join(parts)


@dataclass
class Comparison:
    """All outputs of a comparison, with the tolerances used."""

    outputs: list[OutputComparison]
    batches: int
    samples: int
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)


@dataclass
class OutputStats:
    """Running statistics for one output; feed batches with :meth:`update`."""

    name: str
    rtol: float
    atol: float
    elements: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    got_sq: float = 0.0
    top1_total: int = 0
    top1_same: int = 0
    classifier: bool | None = None
    mismatched: int = 0
    shape: list[int] | None = None
    problem: str = ""

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            self.problem = self.problem or (f"output {self.name!r}: shape {list(got.shape)} differs from the "
                                            f"reference's {list(ref.shape)}")
            return
        self.shape = list(ref.shape)
        r = ref.astype(np.float64, copy=False).ravel()
        g = got.astype(np.float64, copy=False).ravel()
        self.elements += r.size
        if r.size == 0:
            return
        both_nan = np.isnan(r) & np.isnan(g)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(both_nan, 0.0, np.abs(g - r))
            diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only: infinitely wrong
            self.max_abs = max(self.max_abs, float(diff.max()))
            big = np.abs(r) > self.atol
            if big.any():
                self.max_rel = max(self.max_rel, float((diff[big] / np.abs(r[big])).max()))
            ok = np.isclose(g, r, rtol=self.rtol, atol=self.atol, equal_nan=True)
            self.mismatched += int(r.size - ok.sum())
            finite = np.isfinite(r) & np.isfinite(g)
            self.dot += float(np.dot(r[finite], g[finite]))
            self.ref_sq += float(np.dot(r[finite], r[finite]))
            self.got_sq += float(np.dot(g[finite], g[finite]))
        is_classifier = ref.ndim == 2 and ref.shape[1] > 1 and ref.dtype.kind == "f"
        self.classifier = is_classifier if self.classifier is None else (self.classifier and is_classifier)
        if is_classifier:
            self.top1_total += ref.shape[0]
            self.top1_same += int((ref.argmax(axis=1) == got.argmax(axis=1)).sum())

    def result(self) -> OutputComparison:
        if self.ref_sq == 0 and self.got_sq == 0:
            cosine = 1.0
        elif self.ref_sq == 0 or self.got_sq == 0:
            cosine = 0.0
        else:
            cosine = self.dot / math.sqrt(self.ref_sq * self.got_sq)
        top1 = self.top1_same / self.top1_total if self.classifier and self.top1_total else None
        passed = not self.problem and self.mismatched == 0
        return OutputComparison(self.name, self.shape, self.elements, self.max_abs, self.max_rel, cosine, top1,
                                self.mismatched, passed, self.problem)


def output_name_problem(reference: Sequence[str], candidate: Sequence[str]) -> str | None:
    """A message naming the outputs that do not match between two models, or None."""
    missing = [n for n in reference if n not in candidate]
    extra = [n for n in candidate if n not in reference]
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"reference output(s) {', '.join(missing)} missing from the model")
    if extra:
        parts.append(f"model output(s) {', '.join(extra)} not in the reference")
    return "; ".join(parts)


def compare_sessions(reference, candidate, batches: Iterable[dict[str, np.ndarray]], *, rtol: float = 1e-4,
                     atol: float = 1e-5, on_batch: Callable[[int], None] | None = None) -> Comparison:
    """Run two onnxruntime sessions on the same batches and compare same-named outputs.

    Raises :class:`CheckFailed` naming the outputs when the two models' output names differ.
    ``on_batch(samples)`` is called after each batch (for progress bars).
    """
    ref_names = [o.name for o in reference.get_outputs()]
    names = [o.name for o in candidate.get_outputs()]
    problem = output_name_problem(ref_names, names)
    if problem:
        raise CheckFailed(problem)
    stats = {n: OutputStats(n, rtol, atol) for n in ref_names}
    n_batches = n_samples = 0
    ref_runs = run_batches(reference, batches, ref_names)
    for batch, ref_out in ref_runs:
        _, got_out = next(run_batches(candidate, [batch], ref_names))
        for n in ref_names:
            stats[n].update(ref_out[n], got_out[n])
        n_batches += 1
        size = len(next(iter(batch.values()))) if batch else 0
        n_samples += size
        if on_batch:
            on_batch(size)
    return Comparison([s.result() for s in stats.values()], n_batches, n_samples, rtol, atol)


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The model's batch size if its first input has a fixed one, else None."""
    if not specs or not specs[0].shape:
        return None
    first = specs[0].shape[0]
    return int(first) if isinstance(first, int) and first > 0 else None


def sample_batches(dataset: Dataset, specs: Sequence[InputSpec], preferred: int = 8,
                   limit: int | None = None):
    """Batches a model can run: its fixed batch size (dropping a short last batch) or ``preferred``."""
    size = fixed_batch(specs)
    for batch in dataset.batches(size or preferred, limit=limit):
        if size is not None and len(next(iter(batch.values()))) != size:
            break
        yield batch
