"""Pruning on the ONNX graph itself.

* :mod:`~onnxopt.prune.dependency`: channel groups (what must be removed together, what is frozen and why);
* :mod:`~onnxopt.prune.plan`: the :class:`PruningPlan` (groups, kept units, kept channels per tensor; JSON);
* :mod:`~onnxopt.prune.importance`: scoring criteria (L1, L2, BN scale, activations, random);
* :mod:`~onnxopt.prune.structured`: selection and physical removal (pass ``prune_structured``);
* :mod:`~onnxopt.prune.unstructured`: magnitude and N:M masks (pass ``prune_unstructured``).
"""

from onnxopt.prune.dependency import analyze, describe_groups
from onnxopt.prune.plan import Group, Member, PruningPlan

__all__ = ["Group", "Member", "PruningPlan", "analyze", "describe_groups"]
