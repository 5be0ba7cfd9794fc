"""Nimbus: a private vLLM server; the endpoint comes from config or `NIMBUS_ENDPOINT`."""

from __future__ import annotations

from providers.base import Provider


class NimbusProvider(Provider):
    """A vLLM server whose chat template takes `enable_thinking` for every model."""

    name = "nimbus"
    defaults = {
        "endpoint_env": "NIMBUS_ENDPOINT",
        "api_key_env": "NIMBUS_API_KEY",
        "models": [],
    }
    thinking_kwarg = "enable_thinking"
