"""Pipelines from a recipe file (YAML or JSON) or a comma-separated pass list.

A recipe is a mapping with a ``steps`` list (or just the list). Each step is a
pass name, or a one-key mapping ``{name: {option: value}}``::

    steps:
      - cleanup
      - fold_constants: {size_limit_bytes: 1048576}
"""

from __future__ import annotations

import json
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


def load_recipe(path) -> PassManager:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as exc:
        raise RecipeError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {str(exc).splitlines()[0]}") from exc
    if isinstance(doc, dict):
        unknown = set(doc) - {"name", "description", "steps", "fixed_point"}
        if unknown:
            raise RecipeError(f"{path}: unknown recipe key(s) {', '.join(sorted(unknown))}")
        steps = doc.get("steps")
        fixed = bool(doc.get("fixed_point", False))
        name = str(doc.get("name") or path.stem)
    else:
        steps, fixed, name = doc, False, path.stem
    return PassManager(parse_steps(steps), fixed_point=fixed, name=name)


def pipeline_from_names(text: str) -> PassManager:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise RecipeError("--passes needs at least one pass name")
    return PassManager([create_pass(n) for n in names], fixed_point=False, name="passes")
