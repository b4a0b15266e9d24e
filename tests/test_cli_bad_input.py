"""Bad input, end to end through the CLI: one line on stderr naming the problem, exit 2, no traceback."""

import argparse
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import ROOT, small_cnn
from onnxopt.cli.main import build_parser, main


def unchecked_model(nodes, inputs=("x",)) -> onnx.ModelProto:
    """A model saved without onnx's checker (so broken graphs can be written)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2]) for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_bad(kind: str, tmp_path):
    path = tmp_path / "bad.onnx"
    if kind == "missing":
        return tmp_path / "missing.onnx"
    if kind == "folder":
        path = tmp_path / "folder.onnx"
        path.mkdir()
    elif kind == "truncated":
        data = small_cnn().SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "cycle":
        onnx.save(unchecked_model([helper.make_node("Relu", ["t2"], ["t1"], name="first"),
                                   helper.make_node("Relu", ["t1"], ["t2"], name="second"),
                                   helper.make_node("Add", ["x", "t1"], ["y"], name="out")]), str(path))
    elif kind == "dangling":
        onnx.save(unchecked_model([helper.make_node("Add", ["x", "ghost"], ["y"])]), str(path))
    return path


BAD_MODELS = {
    "missing": "not found",
    "folder": "is a folder",
    "truncated": "not an ONNX model",
    "random": "not an ONNX model",
    "cycle": "cycle",
    "dangling": "'ghost'",
}


def command_line(command: str, model, tmp_path) -> list[str]:
    extra = {"optimize": ["-o", str(tmp_path / "out.onnx")], "bench": ["--runs", "1"]}.get(command, [])
    return [command, str(model), *extra]


def assert_one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("kind", list(BAD_MODELS))
@pytest.mark.parametrize("command", ["inspect", "optimize", "check", "bench"])
def test_bad_model_files(command, kind, tmp_path, capsys):
    model = write_bad(kind, tmp_path)
    assert main(command_line(command, model, tmp_path)) == 2
    assert_one_line_error(capsys, BAD_MODELS[kind], f"onnxopt {command}: error:")
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_pass_name(tmp_model_path, tmp_path, capsys):
    model = tmp_model_path(small_cnn())
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "remove_identity,fold_bn"]) == 2
    assert_one_line_error(capsys, "unknown pass 'fold_bn'")
    assert not (tmp_path / "o.onnx").exists()


def test_recipe_with_unknown_option(tmp_model_path, tmp_path, capsys):
    model = tmp_model_path(small_cnn())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n  - remove_identity: {aggressive: true}\n")
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--recipe", str(recipe)]) == 2
    assert_one_line_error(capsys, "unknown option 'aggressive'", "remove_identity")


@pytest.mark.parametrize("arrays, needle", [
    ({"x": np.zeros((2, 3, 8, 8), np.float32), "extra": np.zeros((2, 4), np.float32)},
     "array(s) extra match no model input"),  # names
    ({"x": np.zeros((2, 3, 9, 9), np.float32)}, "shape [2, 3, 9, 9]"),  # shapes
])
@pytest.mark.parametrize("command", ["check-reference", "check", "optimize"])
def test_data_that_does_not_match_the_model(command, arrays, needle, tmp_model_path, tmp_path, capsys):
    model = tmp_model_path(small_cnn())
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    argv = {"check-reference": ["check", str(model), "--reference", str(model)],
            "check": ["check", str(model)],
            "optimize": ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "remove_identity"],
            }[command]
    assert main([*argv, "--inputs", str(data)]) == 2
    assert_one_line_error(capsys, needle)
    assert not (tmp_path / "o.onnx").exists()


def test_output_equal_to_input_without_in_place(tmp_model_path, capsys):
    model = tmp_model_path(small_cnn())
    before = model.read_bytes()
    assert main(["optimize", str(model), "-o", str(model), "--passes", "remove_identity"]) == 2
    assert_one_line_error(capsys, "is the input model", "--in-place")
    assert model.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


def test_output_into_a_missing_folder(tmp_model_path, tmp_path, capsys):
    model = tmp_model_path(small_cnn())
    assert main(["optimize", str(model), "-o", str(tmp_path / "no" / "o.onnx"), "--passes", "remove_identity"]) == 2
    assert_one_line_error(capsys, "does not exist")


def test_unknown_provider_name(tmp_model_path, capsys):
    model = tmp_model_path(small_cnn())
    assert main(["check", str(model), "--providers", "cpu,warp9"]) == 2
    assert_one_line_error(capsys, "unknown execution provider 'warp9'")


def run_module(*argv):
    return subprocess.run([sys.executable, "-m", "onnxopt", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_module_exit_code_and_debug_traceback(tmp_path):
    bad = write_bad("truncated", tmp_path)
    proc = run_module("inspect", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not an ONNX model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_module("--debug", "inspect", str(bad))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ModelLoadError" in proc.stderr


@pytest.mark.parametrize("command", ["inspect", "optimize", "check", "bench", "passes"])
def test_every_option_is_explained(command, capsys):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    for action in parser._actions:
        assert action.help and len(action.help.split()) >= 3, (command, action.option_strings or action.dest)
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
