"""The dialects besides chat completions: OpenAI's Responses API and Anthropic's Messages API.

Each is passed through as it is (no dialect is translated into another); a `Dialect` says what the gateway
needs to know to serve it: how its answers fold into the records, how its conversation reads as chat messages
for the request record, the session an agent names in it, how an error is said in its streams, and which
client headers travel upstream with it. Chat completions need none of this: `gateway.calls.Answer` folds
them itself, at no extra cost.
"""

from __future__ import annotations

from gateway.dialects.base import Dialect
from gateway.dialects.messages import MESSAGES
from gateway.dialects.responses import RESPONSES
from gateway.errors import InvalidRequest
from providers.base import Endpoint, Provider

_BY_ENDPOINT = {Endpoint.RESPONSES: RESPONSES, Endpoint.MESSAGES: MESSAGES, Endpoint.COUNT_TOKENS: MESSAGES}

__all__ = ["MESSAGES", "RESPONSES", "Dialect", "check_spoken", "dialect_of"]


def dialect_of(endpoint: Endpoint) -> Dialect | None:
    """The dialect a route speaks; None for chat completions and the other OpenAI routes."""
    return _BY_ENDPOINT.get(endpoint)


def check_spoken(provider: Provider, endpoint: Endpoint) -> None:
    """Refuse a call in a dialect the routed provider does not speak, naming the ones it does."""
    if not provider.speaks(endpoint):
        raise InvalidRequest(
            f"The provider {provider.id!r} serving this model does not speak the {endpoint.dialect} API "
            f"({endpoint.value}); it speaks: {', '.join(provider.settings.dialects)}.",
            code="unsupported_dialect",
        )
