"""Accuracy-aware fallback: leave the most sensitive Conv/Gemm/MatMul float until a budget is met.

A budget is ``max_drop`` (top-1 points lost against the float model, on
labelled eval data) and/or ``min_sqnr`` (dB, the worst output's SQNR against
the float model; no labels needed). After the normal quantization
:func:`meet_budget` measures the model; when it misses the budget it ranks
the quantized compute nodes by what leaving each one float alone wins back
(:func:`~onnxopt.quantize.sensitivity.analyse_sensitivity`, "only float"
variants: top-1 gain for ``max_drop``, ties and ``min_sqnr`` by SQNR gain),
then greedily leaves them float in that order, re-quantizing (with the
fusion check) and re-measuring after each, until the budget is met. Nodes
whose float variant wins nothing are never left float, and one compute node
at least stays quantized. When nothing meets the budget the most accurate
model tried is kept and the report says the budget was not met.

:func:`choose_reduce_range` is the reduce-range A/B: on a CPU without VNNI
the auto choice of 7-bit weights is a guess about int16 saturation in AVX2
kernels; with labelled eval data both weight ranges are quantized and
measured, and the more accurate one is kept.

Both take the quantization itself as a callable, so this module knows
nothing of the quantize loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from onnxopt.quantize.config import QuantizeConfig
from onnxopt.quantize.sensitivity import Measurement, OutputMeter, SensitivityResult, analyse_sensitivity

#: top-1 differences below this are rounding, not a drop (percentage points)
TOP1_EPS = 1e-9


@dataclass(frozen=True)
class Budget:
    max_drop: float | None = None   # top-1 points
    min_sqnr: float | None = None   # dB

    @classmethod
    def from_config(cls, config: QuantizeConfig) -> Budget:
        return cls(config.max_drop, config.min_sqnr)

    def __bool__(self) -> bool:
        return self.max_drop is not None or self.min_sqnr is not None

    @property
    def flags(self) -> str:
        """The options that set this budget, as the CLI spells them."""
        return " and ".join(f for f, v in (("--max-drop", self.max_drop), ("--min-sqnr", self.min_sqnr))
                            if v is not None)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop <= {self.max_drop:g} points")
        if self.min_sqnr is not None:
            parts.append(f"output SQNR >= {self.min_sqnr:g} dB")
        return ", ".join(parts)

    def misses(self, m: Measurement, float_top1: float | None) -> list[str]:
        """What ``m`` misses of the budget (empty: met)."""
        out = []
        if self.max_drop is not None:
            drop = float_top1 - m.top1
            if drop > self.max_drop + TOP1_EPS:
                out.append(f"top-1 drop {drop:.2f} points > {self.max_drop:g}")
        if self.min_sqnr is not None and m.sqnr_db < self.min_sqnr:
            out.append(f"output SQNR {m.sqnr_db:.1f} dB < {self.min_sqnr:g}")
        return out

    def score(self, m: Measurement) -> tuple[float, float]:
        """Larger is better: top-1 first when the budget is about accuracy, then SQNR."""
        return (m.top1 if self.max_drop is not None and m.top1 is not None else 0.0, m.sqnr_db)


@dataclass
class FallbackStep:
    """One node left float by the fallback, and the whole model measured after it."""

    name: str
    op: str
    rank: int                  # position in the sensitivity ranking (1 = most sensitive)
    top1_gain: float | None    # points, when only this node is float
    sqnr_gain: float | None    # dB, when only this node is float
    reason: str
    after: Measurement


@dataclass
class ReduceRangeChoice:
    """The reduce-range A/B: both weight ranges measured on the eval data."""

    reduced: Measurement       # 7-bit weights
    full: Measurement          # 8-bit weights
    reduce_range: bool         # the one kept

    def note(self, data: str) -> str:
        kept = "7-bit weights (reduce_range on)" if self.reduce_range else "8-bit weights (reduce_range off)"
        text = (f"reduce_range A/B (this CPU has no VNNI): top-1 {self.reduced.top1:.2f}% with 7-bit weights, "
                f"{self.full.top1:.2f}% with 8-bit weights on {self.full.samples} samples of {data}: kept {kept}")
        if not self.reduce_range:
            text += ("; 8-bit weights may saturate AVX2's int16 multiply-add on other inputs, so check on the "
                     "deployment CPU")
        return text


@dataclass
class FallbackReport:
    max_drop: float | None
    min_sqnr: float | None
    data: str
    float_top1: float | None
    before: Measurement        # after the normal quantization
    after: Measurement         # the model kept
    met: bool
    message: str               # one line: met or not, and how
    note: str = ""             # the report note: before, what was left float, after
    left_float: list[str] = field(default_factory=list)   # the nodes the fallback left float in the kept model
    steps: list[FallbackStep] = field(default_factory=list)
    reduce_range: ReduceRangeChoice | None = None

    def to_json(self) -> dict:
        from onnxopt.cli.report import to_jsonable

        return to_jsonable(asdict(self))


def _reason(budget: Budget, sens: SensitivityResult, node, rank: int) -> str:
    if budget.max_drop is not None and sens.top1_gain(node) is not None:
        what = f"top-1 {sens.top1_gain(node):+.2f} points"
    else:
        what = f"output SQNR {sens.sqnr_gain(node):+.1f} dB"
    return f"left float by {budget.flags}: {what} when float (sensitivity rank {rank})"


def _helps(sens: SensitivityResult, node) -> bool:
    """Leaving ``node`` float alone wins something back."""
    gains = [g for g in (sens.top1_gain(node), sens.sqnr_gain(node)) if g is not None]
    return any(g > TOP1_EPS for g in gains)


def meet_budget(result, budget: Budget, meter: OutputMeter, requantize: Callable[[dict[str, str]], object], *,
                before: Measurement | None = None, sensitivity: SensitivityResult | None = None,
                progress: bool = False):
    """Leave the most sensitive compute nodes of ``result`` float until ``budget`` is met on ``meter``'s data.

    ``requantize(keep_float)`` quantizes the same float model again with those
    nodes float and returns a QuantizeResult. Returns ``(result kept,
    FallbackReport, SensitivityResult or None)``; the report's ``note`` says
    what happened, for the caller to add to the result's notes.
    """
    float_top1 = meter.reference.top1
    if budget.max_drop is not None and float_top1 is None:
        raise ValueError("max_drop needs a meter that measures accuracy (labelled data)")
    before = before or meter.measure(result.model)
    missed = budget.misses(before, float_top1)
    common = dict(max_drop=budget.max_drop, min_sqnr=budget.min_sqnr, data=meter.description, float_top1=float_top1,
                  before=before)
    if not missed:
        report = FallbackReport(**common, after=before, met=True,
                                message=f"within the budget ({budget.describe()}) with every planned node quantized",
                                note=f"accuracy budget met ({_state(before, float_top1)}); no node left float")
        return result, report, sensitivity
    if sensitivity is None or any(n.sqnr_only_float is None for n in sensitivity.nodes):
        sensitivity = analyse_sensitivity(result, meter=meter, only_quantized=False, progress=progress,
                                          baseline=before)
    ranked = sensitivity.ranked(by_accuracy=budget.max_drop is not None)
    candidates = [(rank, n) for rank, n in enumerate(ranked, 1) if _helps(sensitivity, n)]
    candidates = candidates[:max(0, len(result.plan.compute_nodes()) - 1)]  # one node at least stays quantized
    keep = dict(result.keep_float)
    steps: list[FallbackStep] = []
    kept, kept_m, kept_left = result, before, []
    met = False
    for rank, node in candidates:
        reason = _reason(budget, sensitivity, node, rank)
        keep[node.name] = reason
        candidate = requantize(dict(keep))
        m = meter.measure(candidate.model)
        steps.append(FallbackStep(node.name, node.op, rank, sensitivity.top1_gain(node), sensitivity.sqnr_gain(node),
                                  reason, m))
        met = not budget.misses(m, float_top1)
        if met or budget.score(m) > budget.score(kept_m):
            kept, kept_m, kept_left = candidate, m, [s.name for s in steps]
        if met:
            break
    n_compute = len(result.plan.compute_nodes())
    if met:
        message = (f"budget met ({budget.describe()}) with {len(kept_left)} of {n_compute} Conv/Gemm/MatMul left "
                   f"float: {', '.join(kept_left)}")
        note = (f"accuracy budget: {_state(before, float_top1)} missed it ({'; '.join(missed)}); left "
                f"{len(kept_left)} node(s) float by sensitivity: {', '.join(kept_left)} -> "
                f"{_state(kept_m, float_top1)}")
    else:
        left_now = budget.misses(kept_m, float_top1) or missed
        message = (f"accuracy budget not met ({'; '.join(left_now)}) even with {len(steps)} of {n_compute} "
                   "Conv/Gemm/MatMul left float (every one whose float variant helped)")
        note = (f"accuracy budget NOT met: {_state(before, float_top1)} ({'; '.join(missed)}); leaving "
                f"{len(steps)} node(s) float did not reach it; kept the most accurate model tried ("
                f"{len(kept_left)} node(s) float: {_state(kept_m, float_top1)})")
    report = FallbackReport(**common, after=kept_m, met=met, message=message, note=note, left_float=kept_left,
                            steps=steps)
    return kept, report, sensitivity


def _state(m: Measurement, float_top1: float | None) -> str:
    parts = []
    if m.top1 is not None and float_top1 is not None:
        parts.append(f"INT8 top-1 {m.top1:.2f}% vs FP32 {float_top1:.2f}% (drop {float_top1 - m.top1:.2f} points)")
    parts.append(f"output SQNR {m.sqnr_db:.1f} dB" if math.isfinite(m.sqnr_db) else "outputs identical")
    return ", ".join(parts) + f" on {m.samples} samples"


def choose_reduce_range(quantize_with: Callable[[QuantizeConfig], object], config: QuantizeConfig,
                        meter: OutputMeter):
    """Quantize with 7-bit and with 8-bit weights, keep the more accurate (7-bit on a tie).

    Returns ``(result kept, ReduceRangeChoice, its Measurement)``.
    """
    reduced = quantize_with(replace(config, reduce_range=True))
    full = quantize_with(replace(config, reduce_range=False))
    m_reduced, m_full = meter.measure(reduced.model), meter.measure(full.model)
    if m_full.top1 is not None and m_reduced.top1 is not None:
        keep_full = m_full.top1 > m_reduced.top1 + TOP1_EPS
    else:
        keep_full = m_full.sqnr_db > m_reduced.sqnr_db
    choice = ReduceRangeChoice(m_reduced, m_full, reduce_range=not keep_full)
    kept = full if keep_full else reduced
    return kept, choice, (m_full if keep_full else m_reduced)


__all__ = ["Budget", "FallbackReport", "FallbackStep", "ReduceRangeChoice", "choose_reduce_range", "meet_budget"]
