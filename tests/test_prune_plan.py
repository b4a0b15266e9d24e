"""Plans (JSON, verification), selection (per-layer, global, round_to, MACs target) and importance criteria."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_feeds, run_ort
from test_prune_graphs import GRAPHS, concat, grouped, residual, se_block

from onnxopt.data import input_specs, open_dataset
from onnxopt.errors import DataError, OnnxoptError
from onnxopt.ir import Model
from onnxopt.passes import create_pass
from onnxopt.prune import analyze
from onnxopt.prune.importance import (
    L1,
    L2,
    ActivationMean,
    ActivationNonzero,
    BNScale,
    Random,
    make_importance,
)
from onnxopt.prune.plan import PruningPlan
from onnxopt.prune.structured import (
    apply_plan,
    model_macs,
    prune_structured,
    rounded_keep,
    select,
)


def model_of(make) -> Model:
    return Model.from_onnx(make())


# -- plan JSON -----------------------------------------------------------------------------
def test_plan_json_round_trip_applies_identically(tmp_path):
    model = model_of(concat)
    res = prune_structured(model, ratio=0.5)
    path = res.plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(path)
    assert loaded.to_dict() == res.plan.to_dict()
    again = apply_plan(model, loaded)
    feeds = random_feeds(model)
    for a, b in zip(run_ort(res.model, feeds), run_ort(again, feeds)):
        assert np.array_equal(a, b)


def test_plan_lists_kept_channels_per_tensor():
    res = prune_structured(model_of(concat), ratio=0.5)
    data = res.plan.to_dict()
    kept = res.plan.kept_channels()
    assert data["tensors"]["cat"]["kept"] == kept["cat"]
    # cat = Concat(r0 (8), r1 (4)): its kept channels are r0's plus r1's shifted by 8
    assert kept["cat"] == kept["r0"] + [8 + c for c in kept["r1"]]
    assert len(kept["r0"]) == 4 and len(kept["r1"]) == 2
    assert res.model.tensors()["cat"].shape[1] == 6


def test_plan_that_does_not_fit_is_refused():
    res = prune_structured(model_of(residual), ratio=0.5)
    with pytest.raises(OnnxoptError, match="does not fit"):
        apply_plan(model_of(concat), res.plan)
    broken = PruningPlan.from_dict(res.plan.to_dict())
    g = next(g for g in broken.groups if g.prunable)
    m = next(m for m in g.members if m.tensor == "c2")
    m.channels[0], m.channels[1] = m.channels[1], m.channels[0]  # now c2's units disagree with r0's
    g.kept = [0]
    with pytest.raises(OnnxoptError, match="part of a unit"):
        apply_plan(model_of(residual), broken)


def test_plan_checks_kept_indices_and_frozen_groups():
    plan = analyze(model_of(residual))
    d = plan.to_dict()
    frozen = next(g for g in d["groups"] if g["frozen"])
    frozen["kept"] = [0]
    with pytest.raises(OnnxoptError, match="frozen"):
        PruningPlan.from_dict(d)
    d = plan.to_dict()
    d["groups"][0]["kept"] = [0, 0]
    with pytest.raises(OnnxoptError, match="distinct"):
        PruningPlan.from_dict(d)
    d["groups"][0]["kept"] = []
    with pytest.raises(OnnxoptError, match="at least one"):
        PruningPlan.from_dict(d)
    with pytest.raises(OnnxoptError, match="not an onnxopt pruning plan file"):
        PruningPlan.from_dict({"groups": []})


# -- selection -------------------------------------------------------------------------------
def test_per_layer_ratio_keeps_the_top_scores():
    plan = analyze(model_of(residual))
    scores = {g.id: np.arange(g.size, dtype=float)[::-1].copy() for g in plan.prunable()}  # unit 0 best
    select(plan, scores, 0.5)
    for g in plan.prunable():
        assert g.kept == list(range(g.size - g.size // 2))


def test_round_to_rounds_the_kept_count_up():
    assert rounded_keep(5, 8, 1, 4) == 8
    assert rounded_keep(3, 8, 1, 4) == 4
    assert rounded_keep(3, 16, 1, 8) == 8
    assert rounded_keep(3, 4, 2, 4) == 4  # two channels per unit: 2 units are already 4 channels
    assert rounded_keep(1, 4, 2, 4) == 2
    assert rounded_keep(3, 6, 1, 4) == 3  # under 2 x 4 channels: not rounded (it would keep the whole group)
    assert rounded_keep(3, 6, 1, 1) == 3
    plan = analyze(model_of(residual))
    scores = {g.id: np.ones(g.size) for g in plan.prunable()}
    select(plan, scores, 0.6, round_to=4)
    for g in plan.prunable():
        kept = len(g.kept_units())
        if g.size * g.channels_per_unit >= 8:
            assert kept % 4 == 0 or kept == g.size
        else:
            assert kept == g.size - int(g.size * 0.6 + 1e-9)  # the plain per-layer count


def test_global_ranking_respects_the_floor():
    plan = analyze(model_of(residual))
    groups = plan.prunable()
    # one group gets tiny scores: a global ranking takes it down to its floor first
    scores = {g.id: np.ones(g.size) * (0.01 if i == 0 else 1.0) for i, g in enumerate(groups)}
    select(plan, scores, 0.3, global_ranking=True, min_keep=0.25)
    assert len(groups[0].kept_units()) == 2  # ceil(0.25 * 8)
    total = sum(g.size for g in groups)
    removed = sum(g.size - len(g.kept_units()) for g in groups)
    assert removed == int(0.3 * total)


def test_target_macs_bisects_to_the_target():
    model = model_of(residual)
    res = prune_structured(model, target_macs=0.5)
    assert res.macs_after <= 0.5 * res.macs_before
    assert model_macs(res.model) == res.macs_after
    assert 0 < res.ratio < 0.95
    # the ratio is (nearly) the smallest that reaches the target
    plan = analyze(model.copy())
    scores = L1().scores(model, plan)
    select(plan, scores, max(res.ratio - 0.1, 0.0))
    assert model_macs(apply_plan(model, plan)) > 0.5 * res.macs_before
    with pytest.raises(OnnxoptError, match="cannot reach"):
        prune_structured(model, target_macs=0.001)


def test_ignore_keeps_the_nodes_weights():
    model = model_of(residual)
    res = prune_structured(model, ratio=0.5, ignore=["c1"])
    w1 = res.model.tensors()["w1"].values
    assert w1.shape == (8, 8, 3, 3)


def test_nothing_prunable_is_an_error():
    from conftest import parse_model

    proto = parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 4, 4] x) => (float[N, 5, 4, 4] y) { y = Conv (x, w) }
    """, {"w": np.ones((5, 3, 1, 1), np.float32)})
    with pytest.raises(OnnxoptError, match="nothing prunable"):
        prune_structured(Model.from_onnx(proto), ratio=0.5)


def test_pass_from_the_registry(tmp_path):
    model = model_of(concat)
    p = create_pass("prune_structured", {"ratio": 0.5, "save_plan": str(tmp_path / "plan.json")})
    res = p(model.copy())
    assert res.modified and res.stats["units_removed"] > 0
    again = create_pass("prune_structured", {"plan": str(tmp_path / "plan.json")})(model.copy())
    feeds = random_feeds(model)
    for a, b in zip(run_ort(res.model, feeds), run_ort(again.model, feeds)):
        assert np.array_equal(a, b)


# -- importance -------------------------------------------------------------------------------
def test_l1_and_l2_follow_the_producer_weights():
    model = model_of(grouped)
    plan = analyze(model)
    g = next(g for g in plan.prunable() if any(m.tensor == "gc" for m in g.members))
    w0 = model.tensors()["w0"].values
    wg = model.tensors()["wg"].values
    # a grouped-conv unit: 2 channels of c0 and 3 of gc; L1 sums them, normalized per layer, averaged
    c0 = np.array([np.abs(w0[2 * u:2 * u + 2]).sum() for u in range(4)])
    gc = np.array([np.abs(wg[3 * u:3 * u + 3]).sum() for u in range(4)])
    expected = (c0 / c0.mean() + gc / gc.mean()) / 2
    np.testing.assert_allclose(L1().scores(model, plan)[g.id], expected, rtol=1e-6)
    l2 = L2().scores(model, plan)[g.id]
    c0 = np.array([np.sqrt((w0[2 * u:2 * u + 2] ** 2).sum()) for u in range(4)])
    gc = np.array([np.sqrt((wg[3 * u:3 * u + 3] ** 2).sum()) for u in range(4)])
    np.testing.assert_allclose(l2, (c0 / c0.mean() + gc / gc.mean()) / 2, rtol=1e-6)


def test_l1_prunes_the_smallest_channels():
    model = model_of(residual)
    w1 = model.tensors()["w1"].values
    w1[[1, 5]] *= 1e-3  # c1's channels 1 and 5 are nearly dead
    res = prune_structured(model, ratio=0.25)
    assert res.plan.kept_channels()["c1"] == [0, 2, 3, 4, 6, 7]


def test_bn_scale_uses_gamma_and_falls_back_to_l1_with_a_note():
    model = model_of(se_block)
    model.tensors()["bn_s"].values[:] = np.array([1, 0.01, 1, 1, 0.02, 1, 1, 1], np.float32)
    res = prune_structured(model, ratio=0.25, importance="bn")
    assert 1 not in res.plan.kept_channels()["h"] and 4 not in res.plan.kept_channels()["h"]
    assert any("scored by L1" in n for n in res.plan.notes)  # the SE's reduced group has no BN
    crit = BNScale()
    plan = analyze(model_of(residual))
    crit.scores(model_of(residual), plan)
    assert crit.notes


def test_activation_importance_streams_batches(tmp_path):
    model = model_of(residual)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    ds = open_dataset(str(tmp_path / "calib.npz"), input_specs(model))
    plan = analyze(model)
    scores = ActivationMean(ds, batch_size=3).scores(model, plan)
    # the same numbers computed in one go
    g = next(g for g in plan.prunable() if any(m.tensor == "c1" for m in g.members))
    from onnxopt.prune.importance import normalized

    work = model.copy()
    for name in ("c1", "n1", "r1"):
        work.graph.outputs.append(work.tensors()[name])
    outs = run_ort(work, {"x": x})[1:]
    expected = np.mean([normalized(np.abs(o).mean(axis=(0, 2, 3))) for o in outs], axis=0)
    np.testing.assert_allclose(scores[g.id], expected, rtol=1e-5)
    nz = ActivationNonzero(ds, batch_size=4).scores(model, plan)[g.id]
    r1 = outs[2]
    np.testing.assert_allclose(nz, normalized((r1 != 0).mean(axis=(0, 2, 3))), rtol=1e-5)
    with pytest.raises(Exception, match="calibration"):
        make_importance("activation")


def test_random_is_seeded_and_taylor_needs_data():
    model = model_of(residual)
    plan = analyze(model)
    a, b, c = Random(1).scores(model, plan), Random(1).scores(model, plan), Random(2).scores(model, plan)
    assert all(np.array_equal(a[k], b[k]) for k in a) and any(not np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(DataError, match="calibration"):
        make_importance("taylor")


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("importance", ["l1", "random"])
def test_pruned_models_run_and_shrink(name, importance):
    model = model_of(GRAPHS[name])
    res = prune_structured(model, ratio=0.5, importance=importance, round_to=2)
    feeds = random_feeds(model)
    outs = run_ort(res.model, feeds)
    ref = run_ort(model, feeds)
    assert [o.shape for o in outs] == [r.shape for r in ref]
    assert not res.plan.is_identity()


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_macs_estimate_equals_the_pruned_models_macs(name):
    from onnxopt.prune.structured import MacsEstimator

    model = model_of(GRAPHS[name])
    plan = analyze(model.copy())
    select(plan, Random(0).scores(model, plan), 0.5)
    assert MacsEstimator(model)(plan) == pytest.approx(model_macs(apply_plan(model, plan)), abs=0.5)
