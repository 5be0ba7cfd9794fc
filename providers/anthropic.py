"""Anthropic's own API: the Messages dialect, and chat through its OpenAI-compatible endpoint.

Messages calls carry the key as `x-api-key` with an `anthropic-version`; chat calls carry it as a bearer
token, as earlier configs (a section named `anthropic` pointing at `/v1/chat/completions`) always sent it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import Endpoint, Provider, ProviderSettings, sub_object

API_VERSION = "2023-06-01"  # asked for when the client names none (its own `anthropic-version` goes instead)
MIN_BUDGET = 1024  # Anthropic's smallest thinking budget


class AnthropicProvider(Provider):
    """Claude models at api.anthropic.com; thinking (Messages calls) as `thinking: {type, budget_tokens}`."""

    name = "anthropic"
    defaults = {
        "endpoint": "https://api.anthropic.com/v1/messages",
        "api_key_env": "ANTHROPIC_API_KEY",
        "model_prefixes": ["claude-"],
        "dialects": ["chat", "messages"],
        "thinking_budget_tokens": 2048,  # what `enable_thinking: true` gives a call that set no budget
    }

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        # Given either route, the others sit beside it under /v1, as an OpenAI server's do.
        self.base_url = self.base_url.removesuffix("/messages")
        key = {"x-api-key": self.api_key} if self.api_key else {}
        self.messages_headers = {**key, "anthropic-version": API_VERSION, **settings.extra_headers}

    def dialect_headers(self, endpoint: Endpoint) -> Mapping[str, str]:
        return self.messages_headers if endpoint.dialect == "messages" else self.headers

    def models_request(self) -> tuple[str, dict[str, str]] | None:
        found = super().models_request()
        return None if found is None else (found[0], dict(self.messages_headers))

    def prepare(
        self, endpoint: Endpoint, body: dict[str, Any], raw: bytes, model: str, *, changed: bool = False
    ) -> bytes:
        if endpoint.dialect == "chat" and "enable_thinking" in body:
            # The OpenAI-compatible endpoint never got a thinking switch from the gateway: dropped, as before.
            body.pop("enable_thinking")
            changed = True
        return super().prepare(endpoint, body, raw, model, changed=changed)

    def apply_thinking(self, body: dict[str, Any], model: str, enabled: bool) -> None:
        if not enabled:
            body["thinking"] = {"type": "disabled"}
            return
        thinking = sub_object(body, "thinking")
        budget = thinking.get("budget_tokens") or self.settings.options.get("thinking_budget_tokens", 2048)
        ceiling = body.get("max_tokens")
        if isinstance(ceiling, int) and ceiling > MIN_BUDGET and isinstance(budget, int):
            budget = min(budget, ceiling - 1)  # the budget must stay below `max_tokens`
        body["thinking"] = {**thinking, "type": "enabled", "budget_tokens": budget}
