"""Kept for the tools' imports: the reader lives in :mod:`onnxopt.data.fashion_mnist`."""

from onnxopt.data.fashion_mnist import *  # noqa: F401,F403
from onnxopt.data.fashion_mnist import __all__  # noqa: F401
