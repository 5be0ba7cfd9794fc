"""The proxied routes: parse, authenticate, route, build the upstream request, then answer or stream.

Streams are relayed by `gateway.relay`, whole SSE events at a time as they arrive, each teed to the call's
`Answer` only after it was written: the log tee sits beside the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from gateway.calls import Call
from gateway.dialects import check_spoken, dialect_of
from gateway.edge import LinesResponse
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    ProviderUnavailable,
    RequestTimeout,
    normalize_upstream_error,
)
from gateway.http1 import Response
from gateway.relay import relay_stream, tee
from gateway.repair import ToolCallRepair
from gateway.state import GATEWAY, RATE_HEADERS, REQUEST_ID, Gateway
from gateway.upstream import RETRY_STATUSES
from providers.base import Endpoint, InvalidBody, Provider, UpstreamRequest

# Upstream headers worth handing back: rate limits tell well-behaved clients when to slow down.
_PASSED_HEADERS = frozenset({"retry-after", "openai-processing-ms"})
_PASSED_PREFIX = ("x-ratelimit-", "anthropic-ratelimit-")
_PASSED_BESIDE_LIMITS = ("anthropic-ratelimit-",)  # the gateway's own x-ratelimit-* replace the others
_REQUIRED: dict[Endpoint, str | None] = {
    Endpoint.CHAT: "messages",
    Endpoint.COMPLETIONS: "prompt",
    Endpoint.EMBEDDINGS: "input",
    Endpoint.RESPONSES: None,  # `input` may be left out (a stored prompt, a previous response)
    Endpoint.MESSAGES: "messages",
    Endpoint.COUNT_TOKENS: "messages",
}
_NO_ANSWER = frozenset({Endpoint.EMBEDDINGS, Endpoint.COUNT_TOKENS})  # nothing to rebuild for the records
# Model ids are printable ASCII without spaces: a name is a route, a label and a record field, never prose.
_MODEL_NAME = re.compile(r"[\x21-\x7e]{1,256}")
_ESCAPED_KEY = re.compile(rb'("(?:[^"\\]|\\.)*\\u(?:[^"\\]|\\.)*")\s*:')
HEADER_CAP = 512  # characters of a client header (session, client, origin) a call keeps


def handler_for(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler proxying `endpoint`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle(request, endpoint)

    handler.__name__ = f"proxy_{endpoint.name.lower()}"
    return handler


async def handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """One proxied call, recorded whatever happens to it."""
    gw = request.app[GATEWAY]
    headers = request.headers
    call = Call(
        request[REQUEST_ID],
        endpoint,
        origin=_header(headers.get("Origin") or headers.get("Referer")),
        client=_header(headers.get("X-Client")),
        session_id=_header(headers.get("X-Session-Id")),
    )
    call.deadline = call.started + gw.config.upstream.call_deadline_s
    call.answer.keep = gw.config.logging.content_max_chars
    if (dialect := dialect_of(endpoint)) is not None:
        call.answer.fold = dialect.fold()
    gw.in_flight += 1
    hold = True  # an answer (or an error) not yet sent leaves once its records are written
    try:
        response = await _proxy(gw, request, call)
        hold = not response.prepared  # a stream has left already
        return response
    except GatewayError as exc:
        call.status, call.error = exc.status, exc.message
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        hold = False  # no one is waiting for it
        call.client_disconnected = True
        call.status = call.status or 499  # nginx's "client closed request"
        raise
    finally:
        gw.in_flight -= 1
        gw.finish(call)
        if hold and (written := gw.recorded()) is not None:
            await written


async def _proxy(gw: Gateway, request: web.Request, call: Call) -> web.StreamResponse:
    try:
        call.key_name = _authenticate(gw, request, call)
    except AuthenticationFailed as exc:
        # A refused call costs a small bounded read; a body left unread closes the connection.
        exc.close_connection = not await _describe_refused(request, call)
        raise
    raw, body = await _read_body(request, call.endpoint)
    _describe(call, body)
    if call.endpoint is not Endpoint.RAW:
        _validate(body, _REQUIRED[call.endpoint])
    provider = gw.router.default if call.endpoint is Endpoint.RAW else gw.router.resolve(call.model or "")
    if provider is None:
        raise InvalidRequest("This deployment has no default provider for /llm.", code="no_default_provider")
    call.provider = provider.id
    check_spoken(provider, call.endpoint)
    _check_ready(provider)
    call.tool_repair = _tool_repair(call, provider)
    rate = gw.limits.admit(call, len(raw))  # at once, unless a shared store is to be waited for
    request[RATE_HEADERS] = rate if isinstance(rate, bytes) else await rate
    gw.log_request(call)
    provider, upstream, strip_usage = await _send(gw, call, provider, body, raw)
    call.tool_repair = _tool_repair(call, provider)  # a fallback's provider may say otherwise
    done = False
    try:
        if upstream.content_type == "text/event-stream" and upstream.status == 200:
            response: web.StreamResponse = await relay_stream(gw, request, call, upstream, strip_usage)
        else:
            response = await _relay_body(gw, request, call, upstream)
        done = not call.client_disconnected
        return response
    finally:
        # Closing (not releasing) a response cut short aborts the upstream request at once.
        upstream.release() if done else upstream.close()


async def _read_body(request: web.Request, endpoint: Endpoint) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object, read within the body timeout."""
    server = request.app[GATEWAY].config.server
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(server.body_timeout_s):
                raw = await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {server.body_timeout_s:g} s.") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        error: GatewayError = PayloadTooLarge(
            f"The request body is larger than the limit of {server.max_body_bytes} bytes."
        )
        error.close_connection = True
        raise error from exc
    except web.RequestPayloadError as exc:
        error = InvalidRequest("The request body could not be read: bad encoding, or cut short.")
        error.close_connection = True  # the parser's state after a broken body is not worth trusting
        raise error from exc
    return raw, _parse(raw, endpoint)


def _parse(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if endpoint is Endpoint.RAW:
            return {}
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def _describe_refused(request: web.Request, call: Call) -> bool:
    """Read at most a small prefix of a refused call's body, for its records; True when it was all read.

    Whatever its framing (a chunked body has no Content-Length to check first), a caller without a key
    never gets more than `server.refused_body_bytes` read, parsed or kept.
    """
    server = request.app[GATEWAY].config.server
    limit, content = server.refused_body_bytes, request.content
    parts, size = [], 0
    with contextlib.suppress(TimeoutError, web.RequestPayloadError, ConnectionError):
        async with asyncio.timeout(min(server.body_timeout_s, 5.0)):
            while size <= limit and (chunk := await content.read(limit + 1 - size)):
                parts.append(chunk)
                size += len(chunk)
    complete = size <= limit and content.at_eof()
    if complete:
        with contextlib.suppress(GatewayError):
            _describe(call, _parse(b"".join(parts), call.endpoint))
    return complete


def _authenticate(gw: Gateway, request: web.Request, call: Call) -> str | None:
    """The caller's key name; the dialects' clients may send the key as `x-api-key` instead."""
    headers = request.headers
    dialect = dialect_of(call.endpoint)
    if dialect is None:
        return gw.keys.authenticate(headers.get("Authorization"))
    name = gw.keys.authenticate_either(headers.get("Authorization"), headers.get("x-api-key"))
    call.forwarded_headers = dialect.forwarded(headers)
    return name


def _validate(body: dict[str, Any], required: str | None) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    if not _MODEL_NAME.fullmatch(model):
        raise InvalidRequest(
            "`model` must be at most 256 printable ASCII characters without spaces.",
            param="model",
            code="invalid_model",
        )
    value = body.get(required) if required else None
    if required == "messages":
        if not isinstance(value, list) or not value:
            raise InvalidRequest("`messages` is required and must be a non-empty array.", param="messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value):
            raise InvalidRequest("Each message must be an object with a string `role`.", param="messages")
    elif required and (value is None or value == "" or value == []):
        raise InvalidRequest(f"`{required}` is required.", param=required)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("`stream` must be true or false.", param="stream")


def _describe(call: Call, body: dict[str, Any]) -> None:
    call.body = body
    model = body.get("model")
    call.model = call.requested_model = model if isinstance(model, str) else None
    call.stream = body.get("stream") is True
    user = body.get("user")
    if isinstance(user, str) and user:
        call.session_id = user
    elif call.session_id is None and (dialect := dialect_of(call.endpoint)) is not None:
        call.session_id = dialect.session(body)  # an agent's own session id, where its body carries one


async def _send(
    gw: Gateway, call: Call, provider: Provider, body: dict[str, Any], raw: bytes
) -> tuple[Provider, Response, bool]:
    """Send to the routed model, then to its fallbacks while the answer is a retryable failure."""
    model = call.model or ""
    # /llm forwards the client's bytes to the default provider as they are: no other model stands in for it.
    fallbacks = () if call.endpoint is Endpoint.RAW else _fallbacks(gw, call.endpoint, model)
    candidates = [model, *fallbacks]
    for i, candidate in enumerate(candidates):
        last = i == len(candidates) - 1
        if i:
            provider = gw.router.resolve(candidate)
            try:
                _check_ready(provider)
            except ProviderUnavailable:
                if last:
                    raise
                continue
        # A copy per attempt: the plugin edits it, and the client's body stays as the records show it.
        attempt_body = {**body, "model": candidate} if len(candidates) > 1 else dict(body)
        request, strip_usage = _build(call, provider, attempt_body, raw if not i else b"", candidate)
        try:
            retry = call.endpoint is not Endpoint.RAW
            response = await gw.upstream.send(request, provider.id, call.deadline, retry=retry)
        except GatewayError:
            if last:
                raise
            continue
        if response.status in RETRY_STATUSES and not last:
            response.release()
            continue
        call.provider, call.model = provider.id, candidate or call.model
        return provider, response, strip_usage
    raise AssertionError("unreachable")  # pragma: no cover


def _fallbacks(gw: Gateway, endpoint: Endpoint, model: str) -> tuple[str, ...]:
    """The fallbacks configured for `model` whose providers speak the call's dialect."""
    listed = gw.upstream.settings.fallbacks.get(model, ())
    return tuple(m for m in listed if gw.router.resolve(m).speaks(endpoint)) if listed else ()


def _check_ready(provider: Provider) -> None:
    """Refuse at once, without contacting it, a provider that has no endpoint or lacks its key."""
    if not provider.settings.endpoint:
        raise ProviderUnavailable(f"The provider {provider.id!r} has no endpoint configured.")
    if provider.settings.api_key_env and not provider.api_key:
        raise ProviderUnavailable(
            f"The provider {provider.id!r} has no key: set the environment variable "
            f"{provider.settings.api_key_env} (or `api_key_env: null` for a provider that needs none).",
            code="provider_key_missing",
        )


def _tool_repair(call: Call, provider: Provider) -> ToolCallRepair | None:
    """Repair of tool calls leaked as text: for a chat request offering tools, to a model that has it on."""
    if call.endpoint is not Endpoint.CHAT or not provider.repairs_tool_calls(call.model or ""):
        return None
    return ToolCallRepair.for_request(call.body)


def _build(
    call: Call, provider: Provider, body: dict[str, Any], raw: bytes, model: str
) -> tuple[UpstreamRequest, bool]:
    """The upstream request, asking for stream usage when the client did not (it is removed again)."""
    # The client's own bytes go upstream only when they say exactly what was parsed and routed: a second
    # `model` key, or one spelled with escapes, would let the upstream read another model than the route.
    changed = not raw or raw.count(b'"model"') != 1 or _escaped_model_key(raw)
    strip_usage = False
    if (
        call.stream
        and call.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)
        and provider.accepts_stream_usage
    ):
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            changed = strip_usage = True
    try:
        payload = provider.prepare(call.endpoint, body, raw, model, changed=changed)
    except InvalidBody as exc:
        raise InvalidRequest(str(exc), param=exc.param) from exc
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            "The request body nests too deeply to be forwarded (at most 254 levels).", code="body_too_deep"
        ) from exc
    upstream = provider.build_request(call.endpoint, payload, call.stream)
    if call.forwarded_headers:
        upstream = replace(upstream, headers={**upstream.headers, **call.forwarded_headers})
    return upstream, strip_usage


async def _relay_body(gw: Gateway, request: web.Request, call: Call, upstream: Response) -> web.Response:
    """A whole answer: the upstream status and body, errors in OpenAI shape with secrets scrubbed."""
    raw = await gw.upstream.read(upstream, call.provider or "", call.deadline)
    call.first_byte = call.first_byte or time.perf_counter()
    call.status = upstream.status
    # The provider's own headers, scrubbed: a careless upstream may echo its key in any of them. The gateway's
    # own limits' x-ratelimit-* headers take the place of the provider's.
    rate = request[RATE_HEADERS]
    prefixes = _PASSED_BESIDE_LIMITS if rate else _PASSED_PREFIX
    headers = {
        str(k): gw.scrubber.text(v) for k, v in upstream.headers.items() if _passed(k.lower(), prefixes)
    }
    if upstream.status >= 400:
        call.upstream_headers = headers or None
        # Scrubbed before and after: normalizing may unescape a secret the provider wrote escaped.
        raw = gw.scrubber.raw(normalize_upstream_error(upstream.status, gw.scrubber.raw(raw)))
        call.error = _error_message(raw)
        headers["Content-Type"] = "application/json"
    else:
        if call.tool_repair is not None:  # before scrubbing: a repaired body is written anew
            raw = call.tool_repair.body(raw)
        raw = gw.scrubber.stream(raw)
        headers["Content-Type"] = upstream.headers.get("Content-Type", "application/json")
        if call.endpoint not in _NO_ANSWER:
            tee(call, call.answer.add_body, raw)
    response = LinesResponse(body=raw, status=upstream.status, headers=headers)
    response.head_lines = rate
    return response


def _passed(name: str, prefixes: tuple[str, ...]) -> bool:
    return name in _PASSED_HEADERS or name.startswith(prefixes)


def _error_message(raw: bytes) -> str:
    try:
        return str(orjson.loads(raw)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:500].decode("utf-8", "replace")


def _escaped_model_key(raw: bytes) -> bool:
    """Whether an object key spells `model` with escapes (`"mod\\u0065l"`): a second model key in disguise."""
    if b"\\u" not in raw:
        return False
    # Between two unescaped quotes lies a whole string or a gap of JSON punctuation, which holds no `\\u`;
    # so every match is one whole string followed by a colon: a key.
    for match in _ESCAPED_KEY.finditer(raw):
        with contextlib.suppress(orjson.JSONDecodeError):
            if orjson.loads(match.group(1)) == "model":
                return True
    return False


def _header(value: str | None) -> str | None:
    """A client header as a record keeps it: undecodable bytes replaced, at most HEADER_CAP characters."""
    if value is None or (value.isascii() and len(value) <= HEADER_CAP):
        return value
    # aiohttp hands undecodable header bytes over as lone surrogates, which no JSON writer accepts.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:HEADER_CAP]
