"""OpenRouter: many vendors' models behind one OpenAI-compatible API."""

from __future__ import annotations

from typing import Any

from providers.base import Provider, sub_object


class OpenRouterProvider(Provider):
    """OpenRouter: attribution headers, and thinking as `reasoning: {enabled}`."""

    name = "openrouter"
    defaults = {
        "endpoint": "https://openrouter.ai/api/v1/chat/completions",
        "api_key_env": "OPENROUTER_KEY",
        "model_prefixes": ["anthropic/", "mistralai/", "openai/", "qwen/", "nvidia/", "amazon/"],
        "extra_headers": {
            "HTTP-Referer": "https://github.com/boettiger-lab/open-llm-proxy",
            "X-Title": "open-llm-proxy",
        },
    }

    def apply_thinking(self, body: dict[str, Any], model: str, enabled: bool) -> None:
        body["reasoning"] = {**sub_object(body, "reasoning"), "enabled": enabled}
