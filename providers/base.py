"""The provider plugin base class.

A plugin is a subclass with a `name`, a `defaults` mapping (endpoint, key env, models, prefixes, headers,
thinking switch, parameters it must not receive) and, where the provider needs it, an override of one of the
pure hooks below. The gateway owns all I/O: a plugin only says what the upstream request looks like.
An OpenAI-compatible provider is a handful of lines; see `providers/nimbus.py`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

SAMPLING_PARAMS = ("temperature", "top_p")
# The APIs an upstream may answer: OpenAI's chat completions (with completions and embeddings beside it),
# OpenAI's Responses and Anthropic's Messages. The gateway passes each through; it translates none.
DIALECTS = ("chat", "responses", "messages")


class Endpoint(enum.Enum):
    """The routes the gateway serves, with their path under the provider's base URL."""

    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"
    RESPONSES = "/responses"
    MESSAGES = "/messages"
    COUNT_TOKENS = "/messages/count_tokens"
    RAW = ""  # /llm: the body goes to the provider's configured endpoint untouched

    @functools.cached_property
    def label(self) -> str:  # read for every record: kept on the member after the first time
        return _LABELS.get(self.name, self.name.lower())

    @property
    def dialect(self) -> str | None:
        """The API this route belongs to (None for /llm, which is whatever the endpoint speaks)."""
        return _DIALECT_OF.get(self.name, "chat")


_LABELS = {"CHAT": "chat.completions", "RAW": "llm", "COUNT_TOKENS": "messages.count_tokens"}
_DIALECT_OF = {"RESPONSES": "responses", "MESSAGES": "messages", "COUNT_TOKENS": "messages", "RAW": None}


@dataclass(frozen=True)
class ProviderSettings:
    """One provider's settings: the plugin's defaults with the config section laid over them."""

    name: str
    plugin: str
    endpoint: str | None  # None: not configured (e.g. Nimbus without NIMBUS_ENDPOINT)
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    model_prefixes: tuple[str, ...] | None = None  # None: every model is a prefix too (old configs)
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    thinking_models: Mapping[str, str] = field(default_factory=dict)  # model -> chat_template_kwargs key
    no_sampling_params: tuple[str, ...] = ()
    models_auth: str = "bearer"  # how /models discovery authenticates: bearer or x-api-key
    discover_models: bool = True
    # Tool calls a model leaks into its text made real: every model (true), or those names and prefixes.
    repair_tool_calls: bool | tuple[str, ...] = False
    dialects: tuple[str, ...] = DIALECTS  # the APIs the upstream answers, at the URLs `Provider.url` gives
    options: Mapping[str, Any] = field(default_factory=dict)  # plugin-specific extras

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.models if self.model_prefixes is None else self.model_prefixes


class InvalidBody(ValueError):
    """A field of the client's body that a plugin must build on has the wrong type (the client gets a 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def sub_object(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`body[key]` when it is an object ({} when absent), for a plugin to extend; InvalidBody otherwise."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidBody(f"`{key}` must be an object.", key)
    return value


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes
    stream: bool


class Provider:
    """OpenAI-compatible upstream; subclasses change `name`, `defaults` and a hook or two."""

    name: ClassVar[str] = "openai"  # the entry-point name this plugin is registered under
    defaults: ClassVar[Mapping[str, Any]] = {}
    thinking_kwarg: ClassVar[str | None] = None  # chat_template_kwargs key for models not in thinking_models
    accepts_stream_usage: ClassVar[bool] = True  # honours stream_options.include_usage

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.id = settings.name  # the config section's name; `name` is the plugin's
        self.api_key = env.get(settings.api_key_env) if settings.api_key_env else None
        self.base_url = (settings.endpoint or "").removesuffix("/").removesuffix("/chat/completions")
        self.headers = {**self.auth_headers(self.api_key), **settings.extra_headers}
        self.secrets = tuple(s for s in (self.api_key,) if s)

    @property
    def configured(self) -> bool:
        """Whether the provider has an endpoint and the key it needs."""
        return bool(self.settings.endpoint) and (bool(self.api_key) or not self.settings.api_key_env)

    def auth_headers(self, key: str | None) -> dict[str, str]:
        """Headers that carry the provider key."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def url(self, endpoint: Endpoint) -> str:
        """The upstream URL for one of the gateway's endpoints: beside the chat endpoint, as vLLM has them."""
        if endpoint is Endpoint.RAW and self.settings.endpoint:
            return self.settings.endpoint
        return self.base_url + endpoint.value

    def speaks(self, endpoint: Endpoint) -> bool:
        """Whether the upstream answers this route's dialect (/llm goes wherever the endpoint points)."""
        dialect = endpoint.dialect
        return dialect is None or dialect in self.settings.dialects

    def dialect_headers(self, endpoint: Endpoint) -> Mapping[str, str]:
        """The headers (the key among them) one dialect's requests carry; the same for all by default."""
        return self.headers

    def repairs_tool_calls(self, model: str) -> bool:
        """Whether tool calls `model` writes into its text as markup are turned into real `tool_calls`."""
        setting = self.settings.repair_tool_calls
        if isinstance(setting, bool):
            return setting
        listed = setting if isinstance(setting, list | tuple) else ()
        return any(isinstance(m, str) and model.startswith(m) for m in listed)

    def apply_thinking(self, body: dict[str, Any], model: str, enabled: bool) -> None:
        """Translate the client's `enable_thinking` into this provider's switch."""
        kwarg = self.settings.thinking_models.get(model, self.thinking_kwarg)
        if kwarg:
            body["chat_template_kwargs"] = {**sub_object(body, "chat_template_kwargs"), kwarg: enabled}

    def adjust_body(self, body: dict[str, Any], model: str, endpoint: Endpoint) -> bool:
        """Add what this provider always needs; return whether the body changed."""
        return False

    def prepare(
        self, endpoint: Endpoint, body: dict[str, Any], raw: bytes, model: str, *, changed: bool = False
    ) -> bytes:
        """Build the upstream body: the client's fields, minus what must not go, plus what the plugin adds.

        An unchanged body is forwarded as the client's own bytes; `changed` says the gateway altered it.
        """
        if endpoint is Endpoint.RAW:
            return raw
        if "enable_thinking" in body:
            enabled = body.pop("enable_thinking")
            if isinstance(enabled, bool):
                self.apply_thinking(body, model, enabled)
            changed = True
        if model in self.settings.no_sampling_params:
            for param in SAMPLING_PARAMS:
                changed = body.pop(param, None) is not None or changed
        changed = self.adjust_body(body, model, endpoint) or changed
        return orjson.dumps(body) if changed else raw

    def build_request(self, endpoint: Endpoint, body: bytes, stream: bool) -> UpstreamRequest:
        """The request the gateway sends: URL, headers with the provider's key, body."""
        headers = {**self.dialect_headers(endpoint), "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return UpstreamRequest(self.url(endpoint), headers, body, stream)

    def models_request(self) -> tuple[str, dict[str, str]] | None:
        """Where and how to ask the upstream for its models, or None when it has no such route."""
        if not self.settings.discover_models or not self.configured:
            return None
        if self.settings.models_auth == "x-api-key" and self.api_key:
            return self.base_url + "/models", {"x-api-key": self.api_key, **self.settings.extra_headers}
        return self.base_url + "/models", dict(self.headers)


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be an upstream endpoint, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"endpoint {url!r} is not an http(s) URL"
    return None
