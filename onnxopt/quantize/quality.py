"""How close the quantized model's outputs stay to the float model's.

SQNR (signal-to-quantization-noise ratio, dB) per output, and top-1
agreement for 2-D (classifier) outputs, on a few batches of real inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.errors import OnnxoptError


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """10 log10(signal power / error power); inf when identical."""
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(got, np.float64)
    noise = float(np.mean(err * err))
    signal = float(np.mean(ref * ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


@dataclass
class OutputQuality:
    name: str
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None  # fraction of samples whose argmax matches (2-D outputs)


def output_quality(float_model, quant_model, batches, *, threads: int | None = None) -> list[OutputQuality]:
    """Run both models on ``batches`` (dicts of inputs) and compare every output."""
    from onnxopt.runtime import make_session

    ref_sess = make_session(float_model, "cpu", threads=threads, spin=False)
    q_sess = make_session(quant_model, "cpu", threads=threads, spin=False)
    names = [o.name for o in ref_sess.get_outputs()]
    feed_names = {i.name for i in ref_sess.get_inputs()}
    refs: dict[str, list] = {n: [] for n in names}
    gots: dict[str, list] = {n: [] for n in names}
    for batch in batches:
        feed = {k: v for k, v in batch.items() if k in feed_names}
        try:
            pairs = zip(names, ref_sess.run(names, feed), q_sess.run(names, feed))
        except Exception as exc:  # onnxruntime's own errors: the data does not fit a model
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxoptError(f"onnxruntime failed to compare the outputs: {msg}") from exc
        for n, r, g in pairs:
            refs[n].append(r)
            gots[n].append(g)
    out = []
    for n in names:
        if not refs[n]:
            continue
        r, g = np.concatenate(refs[n]), np.concatenate(gots[n])
        agree = float(np.mean(r.argmax(axis=1) == g.argmax(axis=1))) if r.ndim == 2 and r.shape[1] > 1 else None
        out.append(OutputQuality(n, sqnr_db(r, g), float(np.max(np.abs(r.astype(np.float64) - g))) if r.size else 0.0,
                                 agree))
    return out
