import json

import numpy as np
import pytest

from conftest import small_cnn
from onnxopt.cli.main import main
from onnxopt.runtime.providers import available_providers
from onnxopt.runtime.timing import BenchTarget, TimingResult, time_interleaved


def test_bench_two_models_interleaved(tmp_model_path, tmp_path, capsys):
    a = tmp_model_path(small_cnn(), "a.onnx")
    b = tmp_model_path(small_cnn(seed=1), "b.onnx")
    report = tmp_path / "bench.json"
    assert main(["bench", str(a), str(b), "--runs", "3", "--warmup", "1", "--block", "2", "--batch", "2",
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith((str(a), str(b)))]
    assert [r[0] for r in rows] == [str(a), str(b)]
    assert rows[0][-1] == "1.00x" and rows[1][-1].endswith("x")
    assert all(r[1] == "cpu" and r[2] == "2" for r in rows)
    doc = json.loads(report.read_text())
    results = doc["results"]
    assert [r["label"] for r in results] == [str(a), str(b)]
    assert all(len(r["latencies_ms"]) == 3 and r["runs"] == 3 and r["batch"] == 2 for r in results)
    assert results[0]["speedup"] == 1.0
    assert results[1]["speedup"] == pytest.approx(results[0]["median_ms"] / results[1]["median_ms"])
    for r in results:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] >= r["min_ms"]
        assert r["throughput"] == pytest.approx(2 * 1000 / r["median_ms"])


def test_fixed_batch_that_does_not_fit_is_an_input_error(tmp_model_path, capsys):
    path = tmp_model_path(small_cnn(batch=1))
    assert main(["bench", str(path), "--batch", "4", "--runs", "3"]) == 2
    assert "fixed batch of 1" in capsys.readouterr().err


def test_missing_provider_is_an_error(tmp_model_path, capsys):
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is installed here")
    path = tmp_model_path(small_cnn())
    assert main(["bench", str(path), "--providers", "cuda", "--runs", "3"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_input_shape_sets_the_batch(tmp_model_path, tmp_path):
    path = tmp_model_path(small_cnn())
    report = tmp_path / "b.json"
    assert main(["bench", str(path), "--input-shape", "x:5x3x8x8", "--runs", "3", "--warmup", "0",
                 "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"][0]["batch"] == 5


def test_time_interleaved_runs_every_target_in_blocks(tmp_model_path):
    feeds = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    targets = [BenchTarget("a", tmp_model_path(small_cnn(), "a.onnx"), feeds, 1),
               BenchTarget("b", tmp_model_path(small_cnn(), "b.onnx"), feeds, 1)]
    order = []
    results = time_interleaved(targets, runs=5, block=2, warmup=0, threads=1, on_run=order.append)
    assert [r.label for r in results] == ["a", "b"] and all(r.runs == 5 for r in results)
    assert "".join(order) == "aabbaabbab"  # round-robin blocks of 2, the last block short


def test_timing_result_statistics():
    r = TimingResult.from_latencies("m", "cpu", 4, [0.001, 0.002, 0.003, 0.004, 0.010])
    assert r.median_ms == pytest.approx(3.0)
    assert r.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert r.min_ms == pytest.approx(1.0) and r.mean_ms == pytest.approx(4.0)
    assert r.throughput == pytest.approx(4 / 0.003)
