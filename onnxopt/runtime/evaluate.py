"""Accuracy and latency of a classifier on labelled data, streamed batch by batch."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from onnxopt.data import Dataset
from onnxopt.errors import DataError
from onnxopt.runtime.session import run_batches


@dataclass
class EvalResult:
    samples: int
    top1: float | None  # percent, None without labels
    top5: float | None
    latency_ms_median: float  # per batch
    latency_ms_p90: float
    throughput: float  # samples per second
    batch_size: int
    provider: str
    output: str
    per_class_top1: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(sess, dataset: Dataset, *, batch_size: int = 64, output: str | None = None, limit: int | None = None,
             progress: bool = False, provider: str = "cpu") -> EvalResult:
    """Run ``dataset`` through ``sess``; top-1/top-5 from the first (or named) output when labels exist."""
    outputs = [o.name for o in sess.get_outputs()]
    output = output or outputs[0]
    if output not in outputs:
        raise DataError(f"model has no output {output!r} (outputs: {', '.join(outputs)})")
    correct1 = correct5 = n = 0
    per_class_hits: dict[int, list[int]] = {}
    times: list[float] = []
    total = len(dataset) if limit is None else min(limit, len(dataset))
    bar = tqdm(total=total, unit="img", disable=not progress, leave=False, desc="eval")
    it = run_batches(sess, dataset.batches(batch_size, limit=limit), [output])
    while True:
        t0 = time.perf_counter()
        try:
            batch, outs = next(it)
        except StopIteration:
            break
        times.append(time.perf_counter() - t0)
        logits = outs[output]
        bs = len(logits)
        bar.update(bs)
        n += bs
        labels = batch.get("labels")
        if labels is None:
            continue
        if logits.ndim != 2:
            raise DataError(f"output {output!r} has shape {list(logits.shape)}; accuracy needs [batch, classes]")
        if labels.max(initial=0) >= logits.shape[1]:
            raise DataError(f"labels go up to {int(labels.max())} but the model has {logits.shape[1]} classes")
        pred = logits.argmax(axis=1)
        hit = pred == labels
        correct1 += int(hit.sum())
        k = min(5, logits.shape[1])
        topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        correct5 += int((topk == labels[:, None]).any(axis=1).sum())
        for c in np.unique(labels):
            h = per_class_hits.setdefault(int(c), [0, 0])
            m = labels == c
            h[0] += int(hit[m].sum())
            h[1] += int(m.sum())
    bar.close()
    if n == 0:
        raise DataError(f"{dataset.description}: holds no samples")
    t = np.asarray(times) * 1e3
    labelled = dataset.has_labels and per_class_hits
    return EvalResult(
        samples=n,
        top1=100.0 * correct1 / n if labelled else None,
        top5=100.0 * correct5 / n if labelled else None,
        latency_ms_median=float(np.median(t)),
        latency_ms_p90=float(np.percentile(t, 90)),
        throughput=float(n / (t.sum() / 1e3)) if t.sum() > 0 else float("inf"),
        batch_size=batch_size,
        provider=provider,
        output=output,
        per_class_top1={c: 100.0 * h / max(m, 1) for c, (h, m) in sorted(per_class_hits.items())},
    )
