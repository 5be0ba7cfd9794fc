"""NRP's hosted models (the National Research Platform's managed LLM service)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import Endpoint, Provider, ProviderSettings


class NRPProvider(Provider):
    """NRP: thinking via `chat_template_kwargs`, and a `cache_salt` to keep prefix caches per deployment."""

    name = "nrp"
    defaults = {
        "endpoint": "https://ellm.nrp-nautilus.io/v1/chat/completions",
        "api_key_env": "NRP_API_KEY",
        "models": ["kimi", "qwen3", "glm-4.7"],
        "model_prefixes": [],
        "thinking_models": {"kimi": "thinking", "qwen3": "enable_thinking", "glm-4.7": "enable_thinking"},
        "repair_tool_calls": True,  # vLLM's tool parsers miss some calls, which then arrive as text
    }

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        # vLLM keys its prefix cache by salt: one deployment never shares cached prompts with another.
        self.cache_salt = env.get("CACHE_SALT") or None

    def adjust_body(self, body: dict[str, Any], model: str, endpoint: Endpoint) -> bool:
        # Only generation has a prefix cache to salt; an embeddings server would reject the field. The
        # deployment's salt wins over a client's: a client must not read another deployment's cached prompts.
        salted = endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)
        if self.cache_salt and salted and body.get("cache_salt") != self.cache_salt:
            body["cache_salt"] = self.cache_salt
            return True
        return False
