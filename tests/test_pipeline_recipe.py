"""Recipes with a data section, built-in recipes by name, data sources, and the pipeline steps' options."""

import os
from pathlib import Path

import pytest

from onnxopt.errors import RecipeError
from onnxopt.passes import create_pass
from onnxopt.passes.recipe import builtin_recipes, find_recipe, read_recipe
from onnxopt.pipeline import DataRole, PipelineContext
from onnxopt.pipeline.data import is_named_dataset, resolve_source, sources_from_flags, sources_from_recipe
from onnxopt.prune.plan import Group, Member, PruningPlan

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_recipes_are_found_by_name_and_parse():
    names = builtin_recipes()
    assert {"cleanup", "cpu-int8", "cpu-prune50-int8"} <= set(names)
    steps = {name: [p.name for p in read_recipe(name).pipeline.passes] for name in ("cleanup", "cpu-int8",
                                                                                    "cpu-prune50-int8")}
    assert steps == {"cleanup": ["cleanup"], "cpu-int8": ["cleanup", "quantize", "check", "report"],
                     "cpu-prune50-int8": ["cleanup", "prune", "distill", "quantize", "check", "report"]}
    prune = read_recipe("cpu-prune50-int8").pipeline.passes[1]
    assert prune.target_macs == 0.5 and prune.ratio is None


def test_a_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cpu-int8").write_text("steps: [remove_identity]\n")
    assert find_recipe("cpu-int8") == Path("cpu-int8")
    assert [p.name for p in read_recipe("cpu-int8").pipeline.passes] == ["remove_identity"]


def test_unknown_recipe_lists_the_builtins():
    with pytest.raises(RecipeError, match="recipe file not found: no-such.*built-in: .*cpu-int8"):
        read_recipe("no-such")


def test_data_section_resolves_relative_to_the_recipe_file(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = folder / "r.yaml"
    recipe.write_text("data: {calib: ../d.npz:calib, eval: fashion-mnist:test}\nsteps: [cleanup]\n")
    r = read_recipe(recipe)
    assert (r.data.calib, r.data.train, r.data.eval) == ("../d.npz:calib", None, "fashion-mnist:test")
    sources = sources_from_recipe(r.data, recipe)
    assert Path(sources.calib.source.rsplit(":", 1)[0]).resolve() == (tmp_path / "d.npz").resolve()
    assert sources.calib.source.endswith(":calib") and "data.calib in" in sources.calib.origin
    assert sources.eval.source == "fashion-mnist:test"  # a data set name, not a path
    assert sources.train is None
    merged = sources.overridden_by(sources_from_flags("x.npz", None, None))
    assert merged.calib.source == "x.npz" and merged.calib.origin == "--calib"
    assert merged.eval == sources.eval


@pytest.mark.parametrize("data,match", [
    ("{calibration: x.npz}", "unknown data key.*calibration"),
    ("[x.npz]", "'data' must be a mapping"),
    ("{calib: 3}", "data.calib must be a data source"),
])
def test_bad_data_sections(tmp_path, data, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {data}\nsteps: [cleanup]\n")
    with pytest.raises(RecipeError, match=match):
        read_recipe(recipe)


def test_absolute_paths_and_flags_are_not_rebased(tmp_path):
    assert resolve_source(str(tmp_path / "a.npz"), Path("/elsewhere"), "x").source == str(tmp_path / "a.npz")
    assert resolve_source("a.npz", None, "--calib").source == "a.npz"
    assert resolve_source("fashion-mnist", Path("/elsewhere"), "x").source == "fashion-mnist"


@pytest.mark.parametrize("name,options,match", [
    ("prune", {}, "exactly one of ratio or target_macs"),
    ("prune", {"ratio": 0.5, "target_macs": 0.5}, "exactly one of ratio or target_macs"),
    ("prune", {"target_macs": 1.5}, "target_macs must be a fraction"),
    ("prune", {"ratio": 0.5, "importance": "nope"}, "unknown importance"),
    ("quantize", {"method": "bogus"}, "unknown method"),
    ("distill", {"epochs": 0}, "epochs must be >= 1"),
    ("check", {"max_drop": -1}, "max_drop"),
    ("report", {"batch_sizes": [0]}, "batch_sizes"),
    ("distill", {"epoch": 2}, "unknown option 'epoch'.*did you mean epochs"),
])
def test_step_options_are_checked_when_the_recipe_is_read(name, options, match):
    with pytest.raises(RecipeError, match=match):
        create_pass(name, options)


def test_data_needs_follow_the_options():
    assert create_pass("prune", {"ratio": 0.5}).data_needs() == ()
    assert create_pass("prune", {"ratio": 0.5, "importance": "activation"}).data_needs() == (DataRole.CALIB,)
    assert create_pass("quantize").data_needs() == (DataRole.CALIB,)
    assert create_pass("distill").data_needs() == (DataRole.TRAIN,)
    assert create_pass("check").data_needs() == create_pass("report").data_needs() == (DataRole.EVAL,)


def _plan(kept: list[int] | None, size: int = 6) -> PruningPlan:
    return PruningPlan([Group(0, size, [Member("t", 1, size, [[c] for c in range(size)])], kept=kept)])


def test_pruning_twice_composes_kept_channels_into_the_inputs_numbering():
    ctx = PipelineContext(teacher_path=Path("m.onnx"))
    ctx.record_pruning(_plan([0, 2, 3, 5]))
    assert ctx.kept_channels == {"t": [0, 2, 3, 5]}
    ctx.record_pruning(_plan([1, 3], size=4))  # the second plan numbers the 4 channels left
    assert ctx.kept_channels == {"t": [2, 5]} and len(ctx.plans) == 2


@pytest.mark.skipif(not (ROOT / "models" / "recipes").is_dir(), reason="no bundled recipes")
def test_bundled_recipes_name_the_sample_data_beside_the_models():
    recipes = sorted((ROOT / "models" / "recipes").glob("*.yaml"))
    assert any(p.name == "resnet-prune50-int8.yaml" for p in recipes)
    for path in recipes:
        r = read_recipe(path)
        sources = sources_from_recipe(r.data, path)
        for role in (DataRole.CALIB, DataRole.EVAL):
            src = sources.get(role).source
            if role is DataRole.EVAL and is_named_dataset(src):  # the full test split from the Debian package
                assert path.stem.endswith("-full") and src == "fashion-mnist:test"
                continue
            assert os.path.normpath(src.rsplit(":", 1)[0]) == str(ROOT / "models" / "fashion_mnist_sample.npz")
        steps = [p.name for p in r.pipeline.passes]
        assert steps[0] in ("cleanup", "prune") and steps[-2:] == ["check", "report"] and "quantize" in steps
