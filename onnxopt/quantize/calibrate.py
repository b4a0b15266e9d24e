"""Streaming calibration: activation ranges from data, in bounded memory.

One onnxruntime session runs a copy of the model whose graph outputs are
extended with the tensors to calibrate. Each batch's outputs go straight into
one small collector per tensor and are dropped, so peak memory is one batch's
activations whatever the number of samples.

* ``minmax``: running min/max (or a moving average of per-batch min/max).
* ``percentile``, ``entropy``, ``mse``: a first pass for min/max, a second
  pass filling fixed-range histograms (``num_bins`` bins), then a range is
  read off each histogram by :func:`percentile_range`, :func:`entropy_range`
  (TensorRT's KL-divergence threshold search on |x|; for the asymmetric
  scheme :func:`entropy_range_signed` searches each side of 0) or
  :func:`mse_range` (the range minimizing the expected quantization error,
  over all candidates at once).

Symmetric schemes histogram |x|; asymmetric ones keep the sign, with 0 on a
bin edge.

The range functions are plain numpy on a histogram, tested on known arrays.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from onnxopt.data import Dataset
from onnxopt.errors import DataError
from onnxopt.quantize.config import Activations, Method, QuantizeConfig
from onnxopt.quantize.ranges import Ranges

#: levels on one side of zero for symmetric int8 activations / all levels for uint8
SYMMETRIC_LEVELS = 127
ASYMMETRIC_LEVELS = 255
#: TensorRT's entropy calibration compares against 128 quantized bins
ENTROPY_QUANTIZED_BINS = 128


# -- collectors ----------------------------------------------------------------
class MinMaxCollector:
    """Running min/max, or an exponential moving average of each batch's min/max."""

    def __init__(self, moving_average: bool = False, averaging_constant: float = 0.01):
        self.moving_average = moving_average
        self.c = averaging_constant
        self.lo: float | None = None
        self.hi: float | None = None

    def update(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif self.moving_average:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)
        else:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def result(self) -> tuple[float, float]:
        return (self.lo, self.hi) if self.lo is not None else (0.0, 0.0)


class HistogramCollector:
    """A fixed-range histogram: of |x| over [0, amax], or of x over [min(lo,0), max(hi,0)] with 0 on a bin edge."""

    def __init__(self, lo: float, hi: float, bins: int, absolute: bool):
        self.absolute = absolute
        self.lo, self.hi = lo, hi
        if absolute:
            top = max(abs(lo), abs(hi))
            self.edges_range = (0.0, top if top > 0 else 1.0)
        else:
            a, b = min(lo, 0.0), max(hi, 0.0)
            if b <= a:
                b = a + 1.0
            # shift the bins so that 0 is an edge: each side can then be read as a histogram of |x|
            width = (b - a) / (bins - 1)
            start = -np.ceil(-a / width) * width
            self.edges_range = (float(start), float(start + bins * width))
        self.counts = np.zeros(bins, dtype=np.int64)

    def update(self, arr: np.ndarray) -> None:
        values = np.abs(arr) if self.absolute else arr
        hist, _ = np.histogram(values.ravel(), bins=self.counts.size, range=self.edges_range)
        self.counts += hist

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.edges_range[0], self.edges_range[1], self.counts.size + 1)


# -- ranges from histograms ----------------------------------------------------
def _clip_to(lo: float, hi: float, cand_lo: float, cand_hi: float) -> tuple[float, float]:
    """A candidate range never exceeds what was observed."""
    return max(lo, cand_lo), min(hi, cand_hi)


def percentile_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float, percentile: float,
                     absolute: bool) -> tuple[float, float]:
    """Keep ``percentile`` % of the values: of |x| (symmetric) or cutting both tails equally."""
    total = counts.sum()
    if total == 0:
        return lo, hi
    cdf = np.cumsum(counts) / total
    last = counts.size - 1
    if absolute:
        idx = min(int(np.searchsorted(cdf, percentile / 100.0)), last)
        t = float(edges[idx + 1])
        return _clip_to(lo, hi, -t, t)
    cut = (100.0 - percentile) / 200.0
    left = min(int(np.searchsorted(cdf, cut, side="right")), last)
    right = min(int(np.searchsorted(cdf, 1.0 - cut)), last)
    return _clip_to(lo, hi, float(edges[left]), float(edges[right + 1]))


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Give empty bins a little mass, taken from the full ones (as TensorRT/MXNet do)."""
    zero = p == 0
    n_zero = int(zero.sum())
    n_nonzero = p.size - n_zero
    if n_nonzero == 0:
        return None
    take = eps * n_zero / n_nonzero
    out = p + eps * zero - take * (~zero)
    return out if (out > 0).all() else None


def entropy_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float,
                  quantized_bins: int = ENTROPY_QUANTIZED_BINS, max_candidates: int = 512) -> tuple[float, float]:
    """TensorRT's KL-divergence calibration on a histogram of |x|.

    For each candidate threshold (a bin edge), the reference distribution P
    is the histogram clipped there (outliers added to the last bin) and Q is
    P squeezed into ``quantized_bins`` levels and expanded back; the
    threshold with the smallest KL(P || Q) wins.
    """
    counts = counts.astype(np.float64)
    n = counts.size
    if counts.sum() == 0 or n <= quantized_bins:
        return lo, hi
    nonzero_at = np.nonzero(counts)[0]
    first_used, last_used = int(nonzero_at[0]), int(nonzero_at[-1]) + 1
    if n > 1:
        # the exact zeros of a post-Relu tensor pile up in bin 0 and would dominate the divergence;
        # NVIDIA's pytorch-quantization levels that bin with its neighbour before searching
        counts[0] = counts[1]
    if last_used <= quantized_bins:  # fits in the quantized bins unclipped
        return _clip_to(lo, hi, -float(edges[last_used]), float(edges[last_used]))
    if first_used * 10 > last_used:
        # the search assumes values spread from 0 up; for values that sit away from 0 (a Sigmoid gate in
        # [0.4, 0.6]) the best 'threshold' would clip them all into one level: keep the observed range
        return _clip_to(lo, hi, -float(edges[last_used]), float(edges[last_used]))
    step = max(1, (last_used - quantized_bins) // max_candidates)
    candidates = list(range(quantized_bins, last_used + 1, step))
    if candidates[-1] != last_used:
        candidates.append(last_used)
    best_i, best_kl = last_used, np.inf
    for i in candidates:
        head = counts[:i]
        p = head.copy()
        p[-1] += counts[i:].sum()
        groups = (np.arange(i) * quantized_bins) // i
        merged = np.bincount(groups, weights=head, minlength=quantized_bins)
        occupied = np.bincount(groups, weights=(head != 0).astype(np.float64), minlength=quantized_bins)
        per_bin = np.divide(merged, occupied, out=np.zeros_like(merged), where=occupied > 0)
        q = np.where(head != 0, per_bin[groups], 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        ps, qs = _smooth(p / p_sum), _smooth(q / q_sum)
        if ps is None or qs is None:
            continue
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    t = float(edges[best_i])
    return _clip_to(lo, hi, -t, t)


def entropy_range_signed(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float,
                         levels: int = 256) -> tuple[float, float]:
    """KL calibration for an asymmetric (uint8) range: each side of 0 searched on its own.

    The |x| histogram TensorRT uses assumes a range symmetric around 0; for a
    tensor like a normalized image (a spike at the background value -0.8 and
    a tail up to +2) it would cut the positive side at 0.8. Here each side
    gets its share of the ``levels`` (by its extent) and its own threshold;
    a tensor with one side only (post-Relu) gets all of them.
    """
    zero = int(np.argmin(np.abs(edges)))
    neg, pos = counts[:zero][::-1], counts[zero:]
    neg_edges, pos_edges = -edges[: zero + 1][::-1], edges[zero:]
    if neg.sum() == 0 or lo >= 0.0:
        return max(lo, 0.0), entropy_range(pos, pos_edges, 0.0, hi, quantized_bins=levels)[1]
    if pos.sum() == 0 or hi <= 0.0:
        return -entropy_range(neg, neg_edges, 0.0, -lo, quantized_bins=levels)[1], min(hi, 0.0)
    pos_levels = int(np.clip(round(levels * hi / (hi - lo)), 16, levels - 16))
    t_pos = entropy_range(pos, pos_edges, 0.0, hi, quantized_bins=pos_levels)[1]
    t_neg = entropy_range(neg, neg_edges, 0.0, -lo, quantized_bins=levels - pos_levels)[1]
    return _clip_to(lo, hi, -t_neg, t_pos)


def _prefix_moments(counts: np.ndarray, centers: np.ndarray):
    """Cumulative count, sum and sum of squares, with a leading 0 (prefix[k] = bins < k)."""
    zero = np.zeros(1)
    c = counts.astype(np.float64)
    return (np.concatenate([zero, np.cumsum(c)]), np.concatenate([zero, np.cumsum(c * centers)]),
            np.concatenate([zero, np.cumsum(c * centers * centers)]))


def _candidate_indices(start: int, stop: int, limit: int) -> np.ndarray:
    """Up to ``limit`` edge indices from ``start`` to ``stop`` inclusive."""
    if stop <= start:
        return np.array([start])
    return np.unique(np.linspace(start, stop, min(limit, stop - start + 1)).round().astype(np.int64))


def mse_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float, absolute: bool,
              levels: int, max_candidates: int = 256) -> tuple[float, float]:
    """The clipping range with the least expected squared quantization error.

    Values inside a range of width ``w`` cost ``(w / levels)**2 / 12`` each
    (uniform rounding error); values outside cost their squared distance to
    the nearer bound. With prefix sums over the histogram every candidate's
    error is closed-form, so all candidates are scored at once.
    ``absolute``: ``counts`` is a histogram of |x| and the range is
    ``[-t, t]`` with ``levels`` steps on each side; else a signed histogram
    and the range ``[l, h]`` with ``levels`` steps in all.
    """
    total = counts.sum()
    if total == 0:
        return lo, hi
    centers = (edges[:-1] + edges[1:]) / 2
    n_cum, s1, s2 = _prefix_moments(counts, centers)
    nb = counts.size
    if absolute:
        ks = _candidate_indices(1, nb, max_candidates)
        t = edges[ks]
        above_n, above_s1, above_s2 = n_cum[-1] - n_cum[ks], s1[-1] - s1[ks], s2[-1] - s2[ks]
        clip_err = above_s2 - 2 * t * above_s1 + t * t * above_n
        inside_err = n_cum[ks] * (t / levels) ** 2 / 12
        best = int(np.argmin(clip_err + inside_err))
        return _clip_to(lo, hi, -float(t[best]), float(t[best]))
    zero_edge = int(np.argmin(np.abs(edges)))  # the edge at (or nearest) 0
    lows = _candidate_indices(0, zero_edge, max_candidates)
    highs = _candidate_indices(max(zero_edge, 1), nb, max_candidates)
    lv, hv = edges[lows][:, None], edges[highs][None, :]
    below_err = (lv[:, 0] ** 2 * n_cum[lows] - 2 * lv[:, 0] * s1[lows] + s2[lows])[:, None]
    above_n = n_cum[-1] - n_cum[highs]
    above_err = (s2[-1] - s2[highs] - 2 * hv[0] * (s1[-1] - s1[highs]) + hv[0] ** 2 * above_n)[None, :]
    inside_n = n_cum[highs][None, :] - n_cum[lows][:, None]
    width = np.maximum(hv - lv, 0.0)
    err = below_err + above_err + np.maximum(inside_n, 0) * (width / levels) ** 2 / 12
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return _clip_to(lo, hi, float(lv[i, 0]), float(hv[0, j]))


def range_from_histogram(method: Method, hist: HistogramCollector, config: QuantizeConfig) -> tuple[float, float]:
    symmetric = config.resolved().activations is Activations.SYMMETRIC
    counts, edges, lo, hi = hist.counts, hist.edges, hist.lo, hist.hi
    if method is Method.PERCENTILE:
        return percentile_range(counts, edges, lo, hi, config.percentile, hist.absolute)
    if method is Method.ENTROPY:
        # as many quantized bins as the tensor really gets: 128 per side for int8 (TensorRT's choice), the
        # 256 uint8 levels shared by the two sides of 0 for the asymmetric scheme
        if symmetric:
            return entropy_range(counts, edges, lo, hi, quantized_bins=ENTROPY_QUANTIZED_BINS)
        return entropy_range_signed(counts, edges, lo, hi, levels=ASYMMETRIC_LEVELS + 1)
    if method is Method.MSE:
        return mse_range(counts, edges, lo, hi, hist.absolute, SYMMETRIC_LEVELS if symmetric else ASYMMETRIC_LEVELS)
    raise ValueError(method)


def histogram_is_absolute(method: Method, symmetric: bool) -> bool:
    """Symmetric schemes look at |x|; asymmetric ones keep the sign (every method)."""
    return symmetric


# -- the streaming run ---------------------------------------------------------
@dataclass
class CalibrationStats:
    samples: int
    batches: int
    passes: int
    seconds: float
    skipped_samples: int = 0  # the remainder that does not fill a fixed-size batch


def augmented_proto(model, tensors: Sequence[str]) -> onnx.ModelProto:
    """The model with ``tensors`` added as graph outputs (float32)."""
    proto = model.to_onnx()
    existing = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return proto


def fixed_batch_size(model) -> int | None:
    """The batch size every input fixes on axis 0, if any (calibration batches must match it)."""
    sizes = {t.shape[0] for t in model.graph.inputs
             if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0 and not hasattr(t, "values")}
    return sizes.pop() if len(sizes) == 1 else None


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Runner:
    """One session, reused for every pass; yields {tensor: array} per batch."""

    def __init__(self, model, tensors: Sequence[str], data: Dataset, config: QuantizeConfig, progress: bool):
        from onnxopt.runtime import make_session

        input_names = {t.name for t in model.graph.inputs}
        self.from_feed = [t for t in tensors if t in input_names]
        self.outputs = [t for t in tensors if t not in input_names]
        self.session = None
        if self.outputs:
            self.session = make_session(augmented_proto(model, self.outputs), "cpu", threads=config.threads,
                                        optimization="basic")
        self.feed_names = sorted(input_names)
        self.data = data
        self.fixed_batch = fixed_batch_size(model)
        self.batch_size = self.fixed_batch or config.batch_size
        self.skipped = 0  # samples left over when a fixed batch size does not divide the data
        self.progress = progress
        self.total_batches: int | None = None

    def batches(self, desc: str) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        if self.total_batches is None and self.progress and _stderr_is_tty():
            self.total_batches = -(-len(self.data) // self.batch_size)
        bar = tqdm(total=self.total_batches, desc=desc, unit="batch", file=sys.stderr, leave=False,
                   disable=not self.progress or not _stderr_is_tty(), dynamic_ncols=True)
        try:
            self.skipped = 0
            for batch in self.data.batches(self.batch_size):
                feed = {k: batch[k] for k in self.feed_names if k in batch}
                n = len(next(iter(feed.values()))) if feed else 0
                if self.fixed_batch and n != self.fixed_batch:
                    self.skipped += n
                    continue
                values = {k: feed[k] for k in self.from_feed}
                if self.session is not None:
                    try:
                        outs = self.session.run(self.outputs, feed)
                    except Exception as exc:
                        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        raise DataError(f"onnxruntime failed on the calibration data: {msg}") from exc
                    values.update(zip(self.outputs, outs))
                yield values
                del values
                bar.update(1)
        finally:
            bar.close()


def calibrate(model, tensors: Sequence[str], data: Dataset, config: QuantizeConfig, *, fingerprint: str = "",
              progress: bool = False) -> tuple[Ranges, CalibrationStats]:
    """Ranges for ``tensors`` (float activations of ``model``) from ``data``."""
    config = config.resolved()
    t0 = time.perf_counter()
    tensors = list(dict.fromkeys(tensors))
    runner = _Runner(model, tensors, data, config, progress)
    minmax = {t: MinMaxCollector(config.moving_average and config.method is Method.MINMAX, config.averaging_constant)
              for t in tensors}
    samples = batches = 0
    for values in runner.batches("calibrating (min/max)" if config.method.uses_histogram else "calibrating"):
        batches += 1
        samples += len(next(iter(values.values()))) if values else 0
        for name, arr in values.items():
            if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
                raise DataError(f"tensor {name!r} holds NaN or Inf on the calibration data; cannot calibrate")
            minmax[name].update(arr)
    if batches == 0:
        what = (f"fewer samples than the model's fixed batch size {runner.fixed_batch}" if runner.skipped
                else "no samples to calibrate on")
        raise DataError(f"{data.description}: holds {what}")
    result = {t: minmax[t].result() for t in tensors}
    passes = 1
    if config.method.uses_histogram:
        absolute = histogram_is_absolute(config.method, config.activations is Activations.SYMMETRIC)
        hists = {t: HistogramCollector(*result[t], config.num_bins, absolute) for t in tensors}
        for values in runner.batches(f"calibrating ({config.method.value} histograms)"):
            for name, arr in values.items():
                hists[name].update(arr)
        result = {t: range_from_histogram(config.method, hists[t], config) for t in tensors}
        passes = 2
    extra = {"percentile": config.percentile} if config.method is Method.PERCENTILE else {}
    if config.method is Method.MINMAX and config.moving_average:
        extra = {"moving_average": True, "averaging_constant": config.averaging_constant}
    ranges = Ranges(result, config.method.value, config.activations.value, fingerprint, samples, extra)
    return ranges, CalibrationStats(samples, batches, passes, time.perf_counter() - t0, runner.skipped)
