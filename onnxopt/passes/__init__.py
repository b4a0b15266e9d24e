"""Graph passes: one interface (:class:`Pass`), a :class:`PassManager`, a registry.

>>> from onnxopt.passes import create_pass, build_pipeline
>>> pm = build_pipeline(passes="fold_batchnorm,remove_dead_code")
"""

from onnxopt.passes.base import Pass, PassManager, PassRecord, PassResult, available_passes, create_pass, register


def build_pipeline(*, recipe=None, passes: str | None = None) -> PassManager:
    """The pipeline for a recipe file, a comma-separated pass list, or the default cleanup."""
    from onnxopt.passes.recipe import load_recipe, pipeline_from_names

    if recipe is not None:
        return load_recipe(recipe)
    if passes:
        return pipeline_from_names(passes)
    return create_pass("cleanup")


__all__ = ["Pass", "PassManager", "PassRecord", "PassResult", "available_passes", "create_pass", "register",
           "build_pipeline"]
