"""The whole cleanup pipeline on graphs written by torch's real exporters.

The files come from ``tools/export_test_graphs.py`` (tests/data/exported/,
listed with their exporter and op histogram in index.json). Parser-written
graphs only show patterns we thought of; these show what TorchScript and
dynamo actually emit. For every file: the cleaned model passes the full ONNX
checker, computes the same outputs in onnxruntime (optimizations off, so ORT
does not paper over anything), keeps the graph's input/output names and order,
has no Identity/Dropout and no foldable BatchNormalization left, and is no
bigger than what onnxslim makes of the same file.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import assert_same_outputs, random_feeds, run_ort
from onnxopt.ir import load_model, save_model
from onnxopt.passes import create_pass

DATA = Path(__file__).resolve().parent / "data" / "exported"
INDEX = json.loads((DATA / "index.json").read_text())
FILES = [e["file"] for e in INDEX["models"] if "error" not in e]

#: ops a BatchNormalization can be folded into (when it is their only consumer)
BN_FOLD_TARGETS = {"Conv", "ConvTranspose", "Gemm"}


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """``cleaned(file) -> Path`` of the file after the cleanup pipeline (run once per file)."""
    out_dir = tmp_path_factory.mktemp("cleaned")
    done: dict[str, Path] = {}

    def _clean(file: str) -> Path:
        if file not in done:
            result = create_pass("cleanup")(load_model(DATA / file))
            done[file] = save_model(result.model, out_dir / file)
        return done[file]

    return _clean


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _histogram(proto: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def _foldable_batchnorms(proto: onnx.ModelProto) -> list[str]:
    """BNs that read the sole-consumed output of a Conv/ConvTranspose/Gemm (folding should have removed them)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    uses = collections.Counter(i for n in proto.graph.node for i in n.input)
    uses.update(o.name for o in proto.graph.output)
    bad = []
    for n in proto.graph.node:
        if n.op_type != "BatchNormalization":
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type in BN_FOLD_TARGETS and uses[n.input[0]] == 1:
            bad.append(f"{n.name or n.output[0]} after {src.op_type}")
    return bad


def test_index_lists_files_that_exist():
    assert FILES, "tests/data/exported/index.json lists no successful export"
    for file in FILES:
        assert (DATA / file).is_file(), f"{file} is in index.json but missing; rerun tools/export_test_graphs.py"


@pytest.mark.parametrize("file", FILES)
def test_cleaned_model_passes_full_checker(file, cleaned):
    onnx.checker.check_model(str(cleaned(file)), full_check=True)


@pytest.mark.parametrize("file", FILES)
def test_cleaned_model_computes_the_same_outputs(file, cleaned):
    original = _load(DATA / file)
    feeds = random_feeds(original, batch=2, seed=1)
    assert_same_outputs(original, _load(cleaned(file)), feeds, rtol=1e-5)


@pytest.mark.parametrize("file", FILES)
def test_cleaned_model_keeps_io_names_and_order(file, cleaned):
    original, after = _load(DATA / file), _load(cleaned(file))
    init = {t.name for t in original.graph.initializer}
    assert [i.name for i in after.graph.input if i.name not in init] == \
        [i.name for i in original.graph.input if i.name not in init]
    assert [o.name for o in after.graph.output] == [o.name for o in original.graph.output]


@pytest.mark.parametrize("file", FILES)
def test_cleaned_model_has_no_identity_dropout_or_foldable_batchnorm(file, cleaned):
    after = _load(cleaned(file))
    hist = _histogram(after)
    assert hist["Identity"] == 0, f"{hist['Identity']} Identity left"
    assert hist["Dropout"] == 0, f"{hist['Dropout']} Dropout left"
    left = _foldable_batchnorms(after)
    assert not left, f"BatchNormalization left that folds into its producer: {left}"


@pytest.mark.parametrize("file", FILES)
def test_cleaned_model_is_no_bigger_than_onnxslim(file, cleaned):
    onnxslim = pytest.importorskip("onnxslim", reason="onnxslim is not installed (it is in the dev extra)")
    slim = onnxslim.slim(_load(DATA / file))
    after = _load(cleaned(file))
    ours, theirs = _histogram(after), _histogram(slim)
    extra = {op: ours[op] - theirs[op] for op in sorted(ours) if ours[op] > theirs[op]}
    n_ours, n_theirs = sum(ours.values()), sum(theirs.values())
    assert n_ours <= n_theirs, f"onnxopt {n_ours} nodes vs onnxslim {n_theirs}; ops onnxopt keeps beyond onnxslim: {extra}"


@pytest.mark.parametrize("file", FILES)
def test_load_save_round_trip_is_bit_identical(file, tmp_path):
    """No passes: loading into gs and saving back must not change a single output bit."""
    out = save_model(load_model(DATA / file), tmp_path / file)
    original = _load(DATA / file)
    feeds = random_feeds(original, batch=2, seed=2)
    ref, got = run_ort(original, feeds), run_ort(_load(out), feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.shape == g.shape
        assert np.array_equal(r, g)
