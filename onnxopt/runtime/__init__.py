"""Execution in onnxruntime: sessions, providers (a data table), comparison, timing."""

from onnxopt.runtime.providers import PROVIDERS, ProviderInfo, available_providers, parse_providers, provider_info
from onnxopt.runtime.session import make_session, run_batches

__all__ = ["PROVIDERS", "ProviderInfo", "available_providers", "parse_providers", "provider_info",
           "make_session", "run_batches"]
