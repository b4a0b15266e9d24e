"""Pipelines from a recipe file (YAML or JSON) or a comma-separated pass list.

A recipe is a mapping with a ``steps`` list (or just the list). Each step is a
pass name, or a one-key mapping ``{name: {option: value}}``::

    steps:
      - cleanup
      - fold_constants: {size_limit_bytes: 1048576}

A recipe may also name its data (paths relative to the recipe file, the
project's data format, e.g. ``../data.npz:calib``) for the steps that need
some (``prune`` by activations, ``distill``, ``quantize``, ``check``,
``report``; see :mod:`onnxopt.pipeline`)::

    data: {calib: ../data.npz:calib, train: ../data.npz:calib, eval: ../data.npz:eval}

``--recipe NAME`` finds a built-in recipe (``onnxopt/recipes/NAME.yaml``)
when no file NAME exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from onnxopt.errors import RecipeError
from onnxopt.passes.base import Pass, PassManager, create_pass


def parse_steps(steps) -> list[Pass]:
    if not isinstance(steps, list) or not steps:
        raise RecipeError("a recipe needs a non-empty list of steps")
    passes = []
    for i, step in enumerate(steps, 1):
        if isinstance(step, str):
            passes.append(create_pass(step.strip()))
        elif isinstance(step, dict) and len(step) == 1:
            (name, opts), = step.items()
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise RecipeError(f"step {i} ({name}): options must be a mapping, got {type(opts).__name__}")
            passes.append(create_pass(str(name), opts))
        else:
            raise RecipeError(f"step {i}: expected a pass name or {{name: {{options}}}}, got {step!r}")
    return passes


#: keys of a recipe's ``data:`` section
DATA_KEYS = ("calib", "train", "eval")


@dataclass(frozen=True)
class RecipeData:
    """The ``data:`` section as written (relative to the recipe file; resolved by the pipeline)."""

    calib: str | None = None
    train: str | None = None
    eval: str | None = None


@dataclass
class Recipe:
    name: str
    path: Path
    pipeline: PassManager
    data: RecipeData = field(default_factory=RecipeData)


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe name -> its YAML file (shipped as package data in ``onnxopt/recipes``)."""
    folder = resources.files("onnxopt") / "recipes"
    if not folder.is_dir():
        return {}
    return {Path(f.name).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith((".yaml", ".yml"))}


def find_recipe(name_or_path) -> Path:
    """A recipe file: ``name_or_path`` if it is a file, else the built-in recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    raise RecipeError(f"recipe file not found: {path} (and no built-in recipe of that name; built-in: "
                      f"{', '.join(builtin) or 'none'})")


def _parse_data(doc, path: Path) -> RecipeData:
    if doc is None:
        return RecipeData()
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: 'data' must be a mapping of {', '.join(DATA_KEYS)} to data sources")
    unknown = set(doc) - set(DATA_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown data key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"known: {', '.join(DATA_KEYS)}")
    for k, v in doc.items():
        if not isinstance(v, str) or not v.strip():
            raise RecipeError(f"{path}: data.{k} must be a data source (a path or a data set name), got {v!r}")
    return RecipeData(**doc)


def read_recipe(name_or_path) -> Recipe:
    """Parse a recipe file (or a built-in recipe by name): its pipeline and its data section."""
    path = find_recipe(name_or_path)
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as exc:
        raise RecipeError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {str(exc).splitlines()[0]}") from exc
    data = RecipeData()
    if isinstance(doc, dict):
        unknown = set(doc) - {"name", "description", "steps", "fixed_point", "data"}
        if unknown:
            raise RecipeError(f"{path}: unknown recipe key(s) {', '.join(sorted(unknown))}")
        steps = doc.get("steps")
        fixed = bool(doc.get("fixed_point", False))
        name = str(doc.get("name") or path.stem)
        data = _parse_data(doc.get("data"), path)
    else:
        steps, fixed, name = doc, False, path.stem
    return Recipe(name, path, PassManager(parse_steps(steps), fixed_point=fixed, name=name), data)


def load_recipe(path) -> PassManager:
    """The pipeline of a recipe file (or built-in recipe name)."""
    return read_recipe(path).pipeline


def pipeline_from_names(text: str) -> PassManager:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise RecipeError("--passes needs at least one pass name")
    return PassManager([create_pass(n) for n in names], fixed_point=False, name="passes")
