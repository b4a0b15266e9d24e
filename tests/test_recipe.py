"""Recipes (YAML/JSON) and --passes lists build pipelines; unknown names are clear errors."""

import pytest

from conftest import assert_same_outputs, count_ops, small_cnn
from onnxopt.errors import RecipeError
from onnxopt.ir import Model
from onnxopt.passes import build_pipeline


def test_yaml_recipe_with_options_runs(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mine\nsteps:\n  - remove_identity\n  - fold_batchnorm\n"
                      "  - fold_constants: {size_limit_bytes: 4096}\n")
    pm = build_pipeline(recipe=recipe)
    assert pm.name == "mine" and [p.name for p in pm.passes] == ["remove_identity", "fold_batchnorm", "fold_constants"]
    assert pm.passes[2].size_limit_bytes == 4096
    proto = small_cnn()
    res = pm(Model.from_onnx(proto))
    assert count_ops(res.model, "BatchNormalization") == 0 and count_ops(res.model, "Identity") == 0
    assert_same_outputs(proto, res.model)


def test_recipe_can_nest_the_cleanup_pipeline(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text('{"steps": [{"cleanup": {"max_iterations": 3}}]}')
    pm = build_pipeline(recipe=recipe)
    res = pm(Model.from_onnx(small_cnn()))
    assert res.modified and count_ops(res.model) < count_ops(small_cnn())


@pytest.mark.parametrize("text,match", [
    ("steps: [no_such_pass]", "unknown pass 'no_such_pass'"),
    ("steps: [{fold_constants: {size_limt_bytes: 1}}]", "unknown option 'size_limt_bytes'.*size_limit_bytes"),
    ("steps: []", "non-empty list"),
    ("stepz: [cleanup]", "unknown recipe key"),
    ("steps: [cleanup\n", "not valid YAML"),
])
def test_bad_recipes(tmp_path, text, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError, match=match):
        build_pipeline(recipe=recipe)


def test_pass_list_suggests_close_names():
    with pytest.raises(RecipeError, match="did you mean fold_batchnorm"):
        build_pipeline(passes="fold_batchnrom")
