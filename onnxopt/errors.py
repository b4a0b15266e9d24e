"""Errors that the CLI turns into one-line messages and exit codes.

``OnnxoptError`` and its subclasses mean "the user's input or request is wrong"
(exit code 2); ``CheckFailed`` means "the model was read fine but failed a check"
(exit code 1). Anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class OnnxoptError(Exception):
    """A problem with the user's input or request. Exit code 2."""

    exit_code = 2


class ModelLoadError(OnnxoptError):
    """The model file is missing, unreadable, not ONNX, or structurally broken."""


class UnsafeExternalDataError(ModelLoadError):
    """An external-data location points outside the model's folder."""


class DataError(OnnxoptError):
    """Input data does not exist or does not match the model."""


class RecipeError(OnnxoptError):
    """A recipe or pass list names an unknown pass or option, or is malformed."""


class OpsetError(OnnxoptError):
    """The model's opset is below what a pass supports and cannot be upgraded."""


class UnsupportedError(OnnxoptError):
    """The model uses something this tool cannot handle (an op, a provider...)."""


class CheckFailed(OnnxoptError):
    """A validation check ran and failed. Exit code 1."""

    exit_code = 1
