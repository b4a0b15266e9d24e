"""Data sources for the pipeline: the project's data format, or an installed data set by name.

A recipe names its data relative to the recipe file (``../data.npz:calib``),
so a recipe and its data can move together; flags are relative to the
working directory as usual. ``fashion-mnist`` (the train split) and
``fashion-mnist:test`` name the full Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` (read by :mod:`onnxopt.data.fashion_mnist`),
normalized as the reference models expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from onnxopt.data import Dataset, InputSpec, open_dataset
from onnxopt.errors import DataError
from onnxopt.pipeline.context import DataRole, DataSource, DataSources

#: data set names a source may use instead of a path, with the split each means
NAMED_DATASETS: dict[str, str] = {"fashion-mnist": "train", "fashion-mnist:train": "train",
                                  "fashion-mnist:test": "test"}


def is_named_dataset(text: str) -> bool:
    return text.strip().lower() in NAMED_DATASETS


def resolve_source(text: str, base: Path | None, origin: str) -> DataSource:
    """``text`` as a :class:`DataSource`: a data set name as is, a relative path joined to ``base``."""
    text = str(text).strip()
    if not text:
        raise DataError(f"{origin}: empty data source")
    if is_named_dataset(text) or base is None or Path(text).is_absolute():
        return DataSource(text, origin)
    return DataSource(str(base / text), origin)


def sources_from_recipe(data, recipe_path: Path) -> DataSources:
    """The recipe's ``data:`` section (a :class:`~onnxopt.passes.recipe.RecipeData`) resolved beside the recipe."""
    base = Path(recipe_path).resolve().parent
    found = {}
    for role in DataRole:
        text = getattr(data, role.value)
        if text is not None:
            found[role.value] = resolve_source(text, base, f"data.{role.value} in {recipe_path}")
    return DataSources(**found)


def sources_from_flags(calib: str | None, train: str | None, eval_: str | None) -> DataSources:
    from onnxopt.pipeline.context import ROLE_FLAGS

    given = {DataRole.CALIB: calib, DataRole.TRAIN: train, DataRole.EVAL: eval_}
    return DataSources(**{r.value: resolve_source(v, None, ROLE_FLAGS[r]) for r, v in given.items() if v})


def fashion_mnist_dataset(split: str, specs: Sequence[InputSpec], description: str) -> Dataset:
    from onnxopt.data import fashion_mnist

    if len(specs) != 1:
        raise DataError(f"{description}: Fashion-MNIST fits single-input models; this one has {len(specs)} inputs")
    try:
        images, labels = fashion_mnist.load_fashion_mnist(split)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{description}: {exc}") from exc
    x = fashion_mnist.normalize(images)
    spec = specs[0]
    if not spec.accepts_shape(x.shape):
        raise DataError(f"{description}: Fashion-MNIST gives images of shape [N, 1, 28, 28]; the model expects "
                        f"{list(spec.shape)}")
    arrays = {spec.name: x.astype(spec.dtype), "labels": labels}
    return Dataset(lambda: iter([arrays]), specs, f"fashion-mnist {split} split", length=len(labels),
                   has_labels=True)


def open_named(source: str, specs: Sequence[InputSpec], description: str) -> Dataset | None:
    """The named data set ``source`` stands for (see :data:`NAMED_DATASETS`), or None when it is a path."""
    key = str(source).strip().lower()
    if key not in NAMED_DATASETS:
        return None
    return fashion_mnist_dataset(NAMED_DATASETS[key], specs, description)


def open_source(src: DataSource, specs: Sequence[InputSpec]) -> Dataset:
    """Open a source for a model with inputs ``specs``; errors say where the source came from."""
    named = open_named(src.source, specs, f"{src.origin} ({src.source})")
    if named is not None:
        return named
    try:
        return open_dataset(src.source, specs)
    except DataError as exc:
        raise DataError(f"{src.origin}: {exc}") from exc
