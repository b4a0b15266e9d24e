"""Streaming calibration: activation ranges from data, in bounded memory.

One onnxruntime session runs a copy of the model whose graph outputs are
extended with the tensors to calibrate, in one pass over the data. Each
batch's outputs go straight into one small collector per tensor and are
dropped, so peak memory is one batch's activations whatever the number of
samples.

* ``minmax``: running min/max (or a moving average of per-batch min/max).
* ``percentile``, ``entropy``, ``mse``: a histogram per tensor that grows
  with the data (:class:`HistogramCollector`: at least ``num_bins`` bins over
  the observed range, exact merges, no second pass), then a range is read off
  it by :func:`percentile_range`, :func:`entropy_range` (TensorRT's
  KL-divergence threshold search on |x|, every candidate in closed form,
  spikes leveled; for the asymmetric scheme :func:`entropy_range_signed`
  searches each side of 0) or :func:`mse_range` (the range minimizing the
  expected quantization error, over all candidates at once).

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
        self.finite = True

    def update(self, arr: np.ndarray) -> None:
        """Fold in one batch; a NaN or Inf in it clears ``finite`` (min/max see both, no extra pass)."""
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            self.finite = False
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
    """A histogram that grows with the data, so that one pass over it is enough.

    Of |x| (``absolute``) or of x. All bins have one width ``w`` and their
    edges sit on multiples of ``w``, so 0 is always an edge and each side of
    it reads as a histogram of |x|; the bins always reach 0. The first batch
    sets ``w`` so that its range takes ``bins`` bins; a later batch beyond
    them adds empty bins, and when there are more than ``2 * bins``, adjacent
    bins merge in pairs (each pair aligned on 0, so the merged counts are
    exact) until there are no more. At the end ``bins`` to ``2 * bins`` bins
    cover the observed range, never coarser than ``bins`` bins over it (what
    a second pass at a known range would give).
    """

    def __init__(self, bins: int, absolute: bool):
        self.bins = bins
        self.absolute = absolute
        self.lo: float | None = None  # observed min and max of x
        self.hi: float | None = None
        self.width: float | None = None
        self.first = 0  # bin j covers [j w, (j + 1) w); counts[0] is bin ``first``
        self._counts = np.zeros(0, dtype=np.int64)
        self._zeros = 0  # values seen while all were 0 (no width yet)
        self.finite = True  # False once a batch held NaN or Inf (that batch is left out)

    def update(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            self.finite = False
            return
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if self.absolute:
            lo, hi = 0.0, max(-lo, hi)
        else:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.width is None:
            if hi == lo:  # all zeros so far: nothing to size the bins by
                self._zeros += arr.size
                return
            self.width = (hi - lo) / self.bins
        self._cover(lo, hi)
        self._add(arr)

    def _cover(self, lo: float, hi: float) -> None:
        """Extend the bins over [lo, hi], then merge pairs while there are more than ``2 * bins``."""
        w = self.width
        first = min(int(np.floor(lo / w)), self.first if self._counts.size else 0)
        last = max(int(np.floor(hi / w)), self.first + self._counts.size - 1 if self._counts.size else -1)
        counts = np.zeros(last - first + 1, dtype=np.int64)
        if self._counts.size:
            counts[self.first - first: self.first - first + self._counts.size] = self._counts
        else:
            counts[-first] += self._zeros  # the zeros seen before the first nonzero batch
        while counts.size > 2 * self.bins:
            # bin j joins bin floor(j / 2): pad so that pairs start on even j
            odd_start, odd_end = first % 2, (first + counts.size) % 2
            counts = np.pad(counts, (odd_start, odd_end)).reshape(-1, 2).sum(axis=1)
            first = (first - odd_start) // 2
            w *= 2
        self._counts, self.first, self.width = counts, first, w

    def _add(self, arr: np.ndarray) -> None:
        """Bin indices by one subtract and one multiply written straight to integers, then ``np.bincount``.

        What ``np.histogram`` does for equal bins without its edge-correction
        passes (3-4x faster): a value lands in the neighbouring bin only when
        it is within float32 rounding of an edge.
        """
        n = self._counts.size
        x = arr.ravel() if arr.dtype == np.float32 else arr.ravel().astype(np.float32)
        if self.absolute:
            t = np.abs(x)  # first == 0
        else:
            t = np.subtract(x, np.float32(self.first * self.width))
        idx = np.empty(t.shape, dtype=np.intp)
        # truncation toward 0 is floor here: t >= 0 up to rounding, and -0.001 truncates to bin 0 too
        np.multiply(t, np.float32(1.0 / self.width), out=idx, casting="unsafe")
        hist = np.bincount(idx, minlength=n)
        if hist.size > n:  # the maximum rounded onto the top edge
            hist[n - 1] += hist[n:].sum()
        self._counts += hist[:n]

    @property
    def counts(self) -> np.ndarray:
        return self._counts if self.width is not None else np.array([self._zeros], dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        if self.width is None:
            return np.array([0.0, 1.0])
        return (self.first + np.arange(self._counts.size + 1)) * self.width


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


#: the mass (in counts) that smoothing gives an empty bin of Q where P is not empty, as TensorRT/MXNet do; on
#: counts, not on probabilities: 1e-4 of a probability would outweigh the real tail bins
SMOOTHING_EPS = 1e-4
#: a histogram bin holding more than SPIKE_FACTOR x the median of its SPIKE_WINDOW neighbours is a spike (many copies
#: of one value); the entropy search levels it (see entropy_range)
SPIKE_FACTOR = 2.0
SPIKE_WINDOW = 9


def kl_divergences(counts: np.ndarray, candidates: np.ndarray, quantized_bins: int,
                   clipped: np.ndarray | None = None) -> np.ndarray:
    """KL(P || Q) of TensorRT's calibration for every candidate threshold at once.

    For a candidate ``i`` (bins kept), P is ``counts[:i]`` with the clipped
    mass ``m`` added to its last bin, and Q is ``counts[:i]`` merged into
    ``quantized_bins`` groups (bin ``j`` in group ``j * quantized_bins // i``)
    and spread evenly over each group's non-empty bins. Every non-empty bin
    of P other than the last carries its own count, so the sums over bins
    reduce to prefix sums of ``c`` and ``c log c`` at the group boundaries:
    ``KL = (sum p log p - sum_groups merged log(merged / occupied) - m log q_last) / P + log(Q / P)``.
    A last bin that P fills only with clipped mass gets Q's smoothing mass
    ``SMOOTHING_EPS`` (the other smoothing terms are below 1e-4 of a count
    and left out). Cost: one ``(candidates, quantized_bins)`` array, not a
    loop over candidates.
    """
    c = counts.astype(np.float64)
    i = np.asarray(candidates, dtype=np.int64)
    clogc = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    cum_c = np.concatenate([[0.0], np.cumsum(c)])
    cum_nz = np.concatenate([[0], np.cumsum(c > 0)])
    cum_clogc = np.concatenate([[0.0], np.cumsum(clogc)])
    kept = cum_c[i]                       # Q's total mass
    clipped = cum_c[-1] - kept if clipped is None else np.asarray(clipped, dtype=np.float64)  # m
    total = kept + clipped                # P's total mass
    last = c[i - 1]
    # group k of candidate i spans bins [ceil(k i / qb), ceil((k + 1) i / qb))
    k = np.arange(quantized_bins + 1, dtype=np.int64)
    bounds = (k[None, :] * i[:, None] + quantized_bins - 1) // quantized_bins
    merged = np.diff(cum_c[bounds], axis=1)
    occupied = np.diff(cum_nz[bounds], axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_bin = np.where(occupied > 0, merged / np.where(occupied > 0, occupied, 1.0), 0.0)
        group_term = np.where(merged > 0, merged * np.log(np.where(per_bin > 0, per_bin, 1.0)), 0.0).sum(axis=1)
        q_last = np.where(last > 0, per_bin[:, -1], SMOOTHING_EPS)
        p_last = last + clipped
        p_log_p = cum_clogc[i - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        clip_term = np.where(clipped > 0, clipped * np.log(q_last), 0.0)
        kl = (p_log_p - group_term - clip_term) / total + np.log(np.where(kept > 0, kept, 1.0) / total)
    return np.where(kept > 0, kl, np.inf)


def level_spikes(counts: np.ndarray, factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW) -> np.ndarray:
    """``counts`` with every bin above ``factor`` x the median of its ``window`` neighbours cut to that median."""
    pad = window // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(counts, pad, mode="edge"), window)
    med = np.partition(windows, pad, axis=1)[:, pad]
    return np.where(counts > factor * np.maximum(med, 1.0), med, counts)


def entropy_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float,
                  quantized_bins: int = ENTROPY_QUANTIZED_BINS, max_candidates: int = 128) -> tuple[float, float]:
    """TensorRT's KL-divergence calibration on a histogram of |x|.

    For each candidate threshold (a bin edge from ``quantized_bins`` up:
    ``max_candidates`` spread over the range, then every edge near the best
    of them), the reference distribution P is the histogram clipped there
    (outliers added to the last bin) and Q is P squeezed into
    ``quantized_bins`` levels and expanded back; the threshold with the
    smallest KL(P || Q) wins (:func:`kl_divergences`).

    Spikes are leveled first (:func:`level_spikes`; bin 0 to bin 1, as
    NVIDIA's pytorch-quantization does for a Relu's zeros): many copies of
    one value (the zeros after a Relu, a channel's constant response to a
    flat image background, 17-33 % of the values in mobilenetv2's first
    blocks) land on one level whatever the threshold, so they say nothing
    about the resolution a threshold buys, yet their mass spread over a
    merged group swamps the divergence and drags the threshold down (to 1.9
    for a ReLU6 output that reaches 6, losing 12 dB of output SQNR). What
    they weigh still counts where it is clipped.
    """
    counts = counts.astype(np.float64)
    n = counts.size
    if counts.sum() == 0 or n <= quantized_bins:
        return lo, hi
    nonzero_at = np.nonzero(counts)[0]
    first_used, last_used = int(nonzero_at[0]), int(nonzero_at[-1]) + 1
    if last_used <= quantized_bins:  # fits in the quantized bins unclipped
        return _clip_to(lo, hi, -float(edges[last_used]), float(edges[last_used]))
    if first_used * 10 > last_used:
        # the search assumes values spread from 0 up; for values that sit away from 0 (a Sigmoid gate in
        # [0.4, 0.6]) the best 'threshold' would clip them all into one level: keep the observed range
        return _clip_to(lo, hi, -float(edges[last_used]), float(edges[last_used]))
    shape = counts.copy()
    shape[0] = shape[1]
    shape = level_spikes(shape)
    clipped_beyond = counts.sum() - np.concatenate([[0.0], np.cumsum(counts)])

    def best_of(candidates: np.ndarray) -> tuple[int, float]:
        kl = kl_divergences(shape, candidates, quantized_bins, clipped_beyond[candidates])
        k = int(np.argmin(kl))
        return int(candidates[k]), float(kl[k])

    # coarse to fine: every step-th edge, then every edge around the best; the cost grows with
    # candidates x quantized_bins, and every edge at once takes 30-80 ms a tensor
    step = max(1, -(-(last_used - quantized_bins) // max_candidates))
    coarse = np.arange(quantized_bins, last_used + 1, step)
    if coarse[-1] != last_used:
        coarse = np.append(coarse, last_used)
    best, best_kl = best_of(coarse)
    if step > 1:
        best, best_kl = best_of(np.arange(max(quantized_bins, best - step + 1), min(last_used, best + step - 1) + 1))
    t = float(edges[best]) if np.isfinite(best_kl) else float(edges[last_used])
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
    counts, edges = hist.counts, hist.edges
    lo, hi = (hist.lo, hist.hi) if hist.lo is not None else (0.0, 0.0)  # None: only empty batches
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
    if config.method.uses_histogram:
        absolute = histogram_is_absolute(config.method, config.activations is Activations.SYMMETRIC)
        collectors = {t: HistogramCollector(config.num_bins, absolute) for t in tensors}
    else:
        collectors = {t: MinMaxCollector(config.moving_average, config.averaging_constant) for t in tensors}
    samples = batches = 0
    for values in runner.batches("calibrating"):
        batches += 1
        samples += len(next(iter(values.values()))) if values else 0
        for name, arr in values.items():
            collectors[name].update(arr)
            if not collectors[name].finite:
                raise DataError(f"tensor {name!r} holds NaN or Inf on the calibration data; cannot calibrate")
    if batches == 0:
        what = (f"fewer samples than the model's fixed batch size {runner.fixed_batch}" if runner.skipped
                else "no samples to calibrate on")
        raise DataError(f"{data.description}: holds {what}")
    if config.method.uses_histogram:
        result = {t: range_from_histogram(config.method, collectors[t], config) for t in tensors}
    else:
        result = {t: collectors[t].result() for t in tensors}
    extra = {"percentile": config.percentile} if config.method is Method.PERCENTILE else {}
    if config.method is Method.MINMAX and config.moving_average:
        extra = {"moving_average": True, "averaging_constant": config.averaging_constant}
    ranges = Ranges(result, config.method.value, config.activations.value, fingerprint, samples, extra)
    return ranges, CalibrationStats(samples, batches, 1, time.perf_counter() - t0, runner.skipped)
