"""An example provider plugin: an OpenAI-compatible upstream with a header and a thinking switch of its own.

Everything but the two differences comes from `providers.base.Provider`: the gateway sends the request,
retries, streams and logs; a plugin only says what the upstream request looks like.
"""

from __future__ import annotations

from typing import Any

from providers.base import Provider


class ExampleProvider(Provider):
    """Wants `X-Example-Plugin` on every request and thinking as `thinking: {"type": "enabled"}`."""

    name = "example"
    # Defaults for a config section served by this plugin; the section's own settings win.
    defaults = {
        "api_key_env": "EXAMPLE_API_KEY",
        "models": ["example-model"],
        "model_prefixes": ["example/"],
        "extra_headers": {"X-Example-Plugin": "olp-example-plugin/0.1.0"},
    }

    def apply_thinking(self, body: dict[str, Any], model: str, enabled: bool) -> None:
        body["thinking"] = {"type": "enabled" if enabled else "disabled"}
