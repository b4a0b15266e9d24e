"""``onnxopt prune``: end to end through main(), and every bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import parse_model, random_feeds, run_ort
from test_prune_graphs import concat, mixing_reshape, residual
from test_prune_unstructured import big_model

from onnxopt.cli.main import main


@pytest.fixture
def res_path(tmp_path):
    p = tmp_path / "res.onnx"
    onnx.save(residual(), str(p))
    return p


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_groups_shows_frozen_reasons(tmp_path, capsys):
    p = tmp_path / "mix.onnx"
    onnx.save(mixing_reshape(), str(p))
    rc, out, _ = run_cli(capsys, "prune", p, "--list-groups")
    assert rc == 0
    assert "consumer Reshape at node Reshape:mix mixes channels" in out and "prunable" in out
    rc, out, _ = run_cli(capsys, "prune", p, "--list-groups", "--json")
    rows = json.loads(out)
    assert any(r["frozen"] for r in rows) and any(r["prunable"] for r in rows)


def test_structured_ratio_writes_a_valid_smaller_model_and_a_plan(res_path, tmp_path, capsys):
    out_path, plan_path, report = tmp_path / "out.onnx", tmp_path / "plan.json", tmp_path / "report.txt"
    rc, out, err = run_cli(capsys, "prune", res_path, "-o", out_path, "--structured", "--ratio", "0.5",
                           "--save-plan", plan_path, "--report", report)
    assert rc == 0, err
    onnx.checker.check_model(str(out_path), full_check=True)
    assert "MACs" in out and "parameters" in out and "Channel groups" in out and "frozen" in out
    assert report.read_text().startswith("Prune (structured)")
    plan = json.loads(plan_path.read_text())
    assert plan["format"] == "onnxopt-pruning-plan" and plan["tensors"]["c1"]["kept"]
    pruned = onnx.load(str(out_path))
    assert len(pruned.graph.initializer) and pruned.ByteSize() < onnx.load(str(res_path)).ByteSize()
    again = tmp_path / "again.onnx"
    rc, _, err = run_cli(capsys, "prune", res_path, "-o", again, "--load-plan", plan_path)
    assert rc == 0, err
    feeds = random_feeds(onnx.load(str(res_path)))
    for a, b in zip(run_ort(pruned, feeds), run_ort(onnx.load(str(again)), feeds)):
        assert np.array_equal(a, b)


def test_target_macs_and_json(res_path, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "prune", res_path, "-o", tmp_path / "o.onnx", "--target-macs", "0.6",
                           "--global", "--importance", "l2", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["after"]["macs"] <= 0.6 * rep["before"]["macs"]
    assert rep["mode"] == "structured" and any(g["status"] == "pruned" for g in rep["groups"])


def test_activation_importance_with_calib(res_path, tmp_path, capsys):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32))
    rc, _, err = run_cli(capsys, "prune", res_path, "-o", tmp_path / "o.onnx", "--ratio", "0.25",
                         "--importance", "activation", "--calib", tmp_path / "calib.npz")
    assert rc == 0, err


def test_unstructured_sparse_storage_loads_and_says_no_cpu_speedup(tmp_path, capsys):
    src = tmp_path / "big.onnx"
    onnx.save(big_model(), str(src))
    out_path = tmp_path / "sparse.onnx"
    rc, out, err = run_cli(capsys, "prune", src, "-o", out_path, "--unstructured", "--sparsity", "0.9")
    assert rc == 0, err
    proto = onnx.load(str(out_path))
    assert {s.values.name for s in proto.graph.sparse_initializer} == {"w", "wg"}
    assert out_path.stat().st_size < 0.6 * src.stat().st_size
    assert "do not make onnxruntime's CPU kernels faster" in out and "zipped" in out
    feeds = random_feeds(big_model())
    assert run_ort(proto, feeds)[0].shape == (2, 10)
    dense = tmp_path / "dense.onnx"
    rc, out, err = run_cli(capsys, "prune", src, "-o", dense, "--nm", "2:4", "--storage", "dense")
    assert rc == 0, err
    assert not onnx.load(str(dense)).graph.sparse_initializer
    assert "stored dense" in out


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.0"], "ratio must be in [0, 1)"),
    (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
    (["--nm", "4:2"], "0 < N < M"),
    (["--nm", "2x4"], "like 2:4"),
    (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--ratio", "0.3", "--ignore", "nope"], "--ignore nope"),
    (["--sparsity", "0.3", "--ignore", "nope"], "--ignore nope"),
    (["--ratio", "0.3", "--sparsity", "0.3"], "exactly one"),
    (["--unstructured", "--ratio", "0.3"], "--unstructured goes with"),
    (["--ratio", "0.3", "--importance", "apoz"], "needs calibration data"),
    (["--ratio", "0.3", "--round-to", "0"], "--round-to"),
    (["--target-macs", "0"], "--target-macs"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(res_path, tmp_path, capsys, args, message):
    out_path = tmp_path / "out.onnx"
    rc, _, err = run_cli(capsys, "prune", res_path, "-o", out_path, *args)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["res.onnx"]


def test_nothing_prunable_is_exit_2(tmp_path, capsys):
    p = tmp_path / "one.onnx"
    onnx.save(parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 4, 4] x) => (float[N, 5, 4, 4] y) { y = Conv (x, w) }
    """, {"w": np.ones((5, 3, 1, 1), np.float32)}), str(p))
    rc, _, err = run_cli(capsys, "prune", p, "-o", tmp_path / "o.onnx", "--ratio", "0.5")
    assert rc == 2 and "nothing prunable" in err
    assert not (tmp_path / "o.onnx").exists()


def test_refuses_to_overwrite_the_input(res_path, capsys):
    before = res_path.read_bytes()
    rc, _, err = run_cli(capsys, "prune", res_path, "-o", res_path, "--ratio", "0.5")
    assert rc == 2 and "--in-place" in err
    assert res_path.read_bytes() == before


def test_concat_model_end_to_end(tmp_path, capsys):
    p = tmp_path / "cat.onnx"
    onnx.save(concat(), str(p))
    rc, _, err = run_cli(capsys, "prune", p, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--round-to", "2")
    assert rc == 0, err
    pruned = onnx.load(str(tmp_path / "o.onnx"))
    inits = {t.name: t for t in pruned.graph.initializer}
    assert list(inits["bn_s"].dims) == [6]  # 8 + 4 channels -> 4 + 2


def test_every_prune_option_is_explained(capsys):
    import argparse

    from onnxopt.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["prune"]
    for action in parser._actions:
        assert action.help and len(action.help.split()) >= 3, action.option_strings or action.dest
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--help"])
    assert exc.value.code == 0
    assert "--list-groups" in capsys.readouterr().out
