"""Provider plugins: one small class per upstream, found by the `open_llm_proxy.providers` entry points."""

from providers.base import Endpoint, Provider, ProviderSettings, UpstreamRequest

__all__ = ["Endpoint", "Provider", "ProviderSettings", "UpstreamRequest"]
