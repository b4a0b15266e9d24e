"""THE exactness test: removing channels that are exactly zero must not change the outputs.

Construction, for every prunable group of a model: choose units to remove
(every odd unit), make those channels exactly zero at their source with
:func:`zero_pruned_channels` (producer weight rows and bias, BatchNorm scale
AND bias, per-channel constants that are added), then remove them with
:func:`apply_plan`. The pruned model must reproduce the zeroed model's outputs
(rtol 1e-5) in onnxruntime.

Why zeroing at the source suffices, structure by structure:

* Relu/Clip(0, 6)/LeakyRelu/HardSwish map 0 to 0; pooling, Resize, Pad (with 0)
  and Concat keep zeros; an Add of two zeroed branches is 0; a zero channel
  read by a Conv/Gemm/MatMul contributes nothing.
* A BatchNorm maps 0 to ``beta - gamma*mean/sqrt(var+eps)``, not 0: that is why
  every BN in the group gets gamma = beta = 0 (its output is then 0 whatever
  comes in). DenseNet's pre-activation BNs over a Concat are covered this way.
* Sigmoid/HardSigmoid map 0 to 0.5. In a squeeze-excitation block the gate
  channel multiplies the main-path channel of the same group, which is 0, so
  the product is 0; SiLU (x * Sigmoid(x)) likewise. The SE's reduced channels
  pass ReLU before the expanding conv, so zeroing them is exact too.
* Removed input channels of a Conv/Gemm see zeros, so dropping the weight
  columns changes nothing; grouped/depthwise convs lose whole conv groups
  whose inputs and outputs are all zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, assert_same_outputs, random_feeds, run_ort
from test_prune_graphs import GRAPHS

from onnxopt.analysis.summary import parameter_stats
from onnxopt.ir import Model, load_model
from onnxopt.passes import create_pass
from onnxopt.prune import analyze
from onnxopt.prune.structured import apply_plan, prune_structured, zero_pruned_channels

EXPORTED = ROOT / "tests" / "data" / "exported"
REFERENCE = ROOT / "models"


def exported_files() -> list[str]:
    index = EXPORTED / "index.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text()).get("models", [])
    return [e["file"] for e in entries if not e.get("error") and (EXPORTED / e["file"]).is_file()]


def odd_units_plan(model: Model):
    """A plan removing every odd unit of every prunable group."""
    plan = analyze(model)
    for g in plan.prunable():
        g.kept = [u for u in range(g.size) if u % 2 == 0]
    return plan


def check_exact(model: Model, batch: int = 3) -> None:
    plan = odd_units_plan(model)
    assert plan.prunable(), "nothing prunable: the exactness test would be vacuous"
    zeroed = zero_pruned_channels(model, plan)
    pruned = apply_plan(zeroed, plan)
    onnx.checker.check_model(pruned.to_onnx(), full_check=True)
    feeds = random_feeds(zeroed, batch=batch, seed=1)
    assert_same_outputs(zeroed, pruned, feeds, rtol=1e-5)
    # not vacuous: parameters went, and the zeroing did change the model's outputs
    assert parameter_stats(pruned)[0] < parameter_stats(model)[0]
    ref = run_ort(model, feeds)
    zero_out = run_ort(zeroed, feeds)
    assert any(not np.allclose(a, b) for a, b in zip(ref, zero_out))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_pruning_zeroed_channels_is_exact(name):
    check_exact(Model.from_onnx(GRAPHS[name]()))


def prunable_form(model: Model) -> Model:
    """The model itself, or after the cleanup pipeline when the analysis asks for it.

    Unoptimized exports compute conv biases and reshape targets at run time;
    the analysis freezes those and says "run 'onnxopt optimize' first", which
    is what happens here.
    """
    if analyze(model.copy()).prunable():
        return model
    reasons = {r for g in analyze(model.copy()).groups for r in g.reasons}
    assert any("run 'onnxopt optimize' first" in r for r in reasons), reasons
    return create_pass("cleanup")(model).model


@pytest.mark.parametrize("name", exported_files() or ["(none)"])
def test_pruning_zeroed_channels_is_exact_on_exported_graphs(name):
    if name == "(none)":
        pytest.skip("tests/data/exported has no models")
    check_exact(prunable_form(load_model(EXPORTED / name)), batch=2)


@pytest.mark.parametrize("path", sorted(str(p) for p in REFERENCE.glob("*.onnx")) or ["(none)"])
def test_pruning_zeroed_channels_is_exact_on_reference_models(path):
    if path == "(none)":
        pytest.skip("the reference models (models/*.onnx) have not landed yet")
    check_exact(prunable_form(load_model(Path(path))), batch=2)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_ratio_zero_changes_nothing_bit_for_bit(name):
    model = Model.from_onnx(GRAPHS[name]())
    res = prune_structured(model, ratio=0.0)
    assert res.plan.is_identity()
    feeds = random_feeds(model, batch=2)
    for a, b in zip(run_ort(model, feeds), run_ort(res.model, feeds)):
        assert np.array_equal(a, b)


def test_exported_ratio_zero_bit_identical():
    files = exported_files()
    if not files:
        pytest.skip("tests/data/exported has no models")
    model = load_model(EXPORTED / files[0])
    res = prune_structured(model, ratio=0.0)
    feeds = random_feeds(model, batch=2)
    for a, b in zip(run_ort(model, feeds), run_ort(res.model, feeds)):
        assert np.array_equal(a, b)
