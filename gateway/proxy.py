"""The proxied routes: parse, authenticate, route, build the upstream request, then answer or stream.

The stream loop forwards upstream bytes as they arrive, whole SSE events at a time, and feeds a copy of
each event to the call's `Answer` only after it was written: the log tee sits beside the stream.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.calls import Call
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    ProviderUnavailable,
    normalize_upstream_error,
)
from gateway.sse import DONE, EventSplitter, error_event, event_data
from gateway.state import GATEWAY, REQUEST_ID, Gateway
from gateway.upstream import RETRY_STATUSES
from providers.base import Endpoint, InvalidBody, Provider, UpstreamRequest

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Upstream headers worth handing back: rate limits tell well-behaved clients when to slow down.
_PASSED_HEADERS = frozenset({"retry-after", "openai-processing-ms"})
_PASSED_PREFIX = "x-ratelimit-"
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_REQUIRED = {Endpoint.CHAT: "messages", Endpoint.COMPLETIONS: "prompt", Endpoint.EMBEDDINGS: "input"}


def route(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler proxying `endpoint`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle(request, endpoint)

    handler.__name__ = f"proxy_{endpoint.name.lower()}"
    return handler


async def handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """One proxied call, recorded whatever happens to it."""
    gw = request.app[GATEWAY]
    call = Call(
        request[REQUEST_ID],
        endpoint,
        origin=_origin(request),
        client=request.headers.get("X-Client"),
        session_id=request.headers.get("X-Session-Id"),
    )
    gw.in_flight += 1
    try:
        return await _proxy(gw, request, call)
    except GatewayError as exc:
        call.status, call.error = exc.status, exc.message
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        call.client_disconnected = True
        call.status = call.status or 499  # nginx's "client closed request"
        raise
    finally:
        gw.in_flight -= 1
        gw.finish(call)


async def _proxy(gw: Gateway, request: web.Request, call: Call) -> web.StreamResponse:
    try:
        call.key_name = gw.keys.authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed:
        await _describe_refused(request, call)
        raise
    raw, body = await _read_body(request, call.endpoint)
    _describe(call, body)
    if call.endpoint is not Endpoint.RAW:
        _validate(body, _REQUIRED[call.endpoint])
    provider = gw.router.default if call.endpoint is Endpoint.RAW else gw.router.resolve(call.model or "")
    if provider is None:
        raise InvalidRequest("This deployment has no default provider for /llm.", code="no_default_provider")
    call.provider = provider.id
    if not provider.settings.endpoint:
        raise ProviderUnavailable(f"The provider {provider.id!r} has no endpoint configured.")
    gw.log_request(call)
    provider, upstream, strip_usage = await _send(gw, call, provider, body, raw)
    done = False
    try:
        if upstream.content_type == "text/event-stream" and upstream.status == 200:
            response: web.StreamResponse = await _relay_stream(gw, request, call, upstream, strip_usage)
        else:
            response = await _relay_body(gw, call, upstream)
        done = not call.client_disconnected
        return response
    finally:
        # Closing (not releasing) a response cut short aborts the upstream request at once.
        upstream.release() if done else upstream.close()


async def _read_body(request: web.Request, endpoint: Endpoint) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object, checked for what the endpoint requires."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[GATEWAY].config.server.max_body_bytes
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.") from exc
    except web.RequestPayloadError as exc:
        raise InvalidRequest("The request body could not be read: bad encoding, or cut short.") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if endpoint is Endpoint.RAW:
            return raw, {}
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return raw, body


async def _describe_refused(request: web.Request, call: Call) -> None:
    """Let a refused call's records still name its model and session, when its body is small and readable."""
    if (request.content_length or 0) > 1 << 20:
        return
    try:
        _, body = await _read_body(request, call.endpoint)
    except GatewayError:
        return  # an unreadable body adds nothing to the record; the call is refused for its key anyway
    _describe(call, body)


def _validate(body: dict[str, Any], required: str) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    value = body.get(required)
    if required == "messages":
        if not isinstance(value, list) or not value:
            raise InvalidRequest("`messages` is required and must be a non-empty array.", param="messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value):
            raise InvalidRequest("Each message must be an object with a string `role`.", param="messages")
    elif value is None or value == "" or value == []:
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


async def _send(
    gw: Gateway, call: Call, provider: Provider, body: dict[str, Any], raw: bytes
) -> tuple[Provider, aiohttp.ClientResponse, bool]:
    """Send to the routed model, then to its fallbacks while the answer is a retryable failure."""
    model = call.model or ""
    # /llm forwards the client's bytes to the default provider as they are: no other model stands in for it.
    fallbacks = () if call.endpoint is Endpoint.RAW else gw.upstream.settings.fallbacks.get(model, ())
    candidates = [model, *fallbacks]
    for i, candidate in enumerate(candidates):
        last = i == len(candidates) - 1
        if i:
            provider = gw.router.resolve(candidate)
        attempt_body = {**body, "model": candidate} if len(candidates) > 1 else body
        request, strip_usage = _build(call, provider, attempt_body, raw if not i else b"", candidate)
        try:
            response = await gw.upstream.send(request, provider.id, retry=call.endpoint is not Endpoint.RAW)
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


def _build(
    call: Call, provider: Provider, body: dict[str, Any], raw: bytes, model: str
) -> tuple[UpstreamRequest, bool]:
    """The upstream request, asking for stream usage when the client did not (it is removed again)."""
    changed = not raw
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
    return provider.build_request(call.endpoint, payload, call.stream), strip_usage


async def _relay_body(gw: Gateway, call: Call, upstream: aiohttp.ClientResponse) -> web.Response:
    """A whole answer: the upstream status and body, errors in OpenAI shape with secrets scrubbed."""
    raw = await gw.upstream.read(upstream, call.provider or "")
    call.first_byte = call.first_byte or time.perf_counter()
    call.status = upstream.status
    headers = {str(k): v for k, v in upstream.headers.items() if _passed(k.lower())}
    if upstream.status >= 400:
        call.upstream_headers = headers or None
        raw = normalize_upstream_error(upstream.status, gw.scrubber.raw(raw))
        call.error = _error_message(raw)
        headers["Content-Type"] = "application/json"
    else:
        headers["Content-Type"] = upstream.headers.get("Content-Type", "application/json")
        if call.endpoint is not Endpoint.EMBEDDINGS:
            call.answer.add_body(raw)
    return web.Response(body=raw, status=upstream.status, headers=headers)


async def _relay_stream(
    gw: Gateway, request: web.Request, call: Call, upstream: aiohttp.ClientResponse, strip_usage: bool
) -> web.StreamResponse:
    """Forward SSE events as they arrive; a failure after the first byte ends with one error event."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await response.prepare(request)
    call.status = 200
    splitter = EventSplitter()
    gauge = gw.metrics.stream_gauge(call.provider or "", call.model)
    gauge.inc()
    try:
        async for data in gw.upstream.chunks(upstream, call.provider or ""):
            if call.first_byte is None:
                call.first_byte = time.perf_counter()
            events = splitter.feed(data)
            if events:
                await _forward(response, call, events, strip_usage)
        if tail := splitter.flush():
            await _forward(response, call, [tail], strip_usage)
        await response.write_eof()
    except GatewayError as exc:
        call.error = exc.message
        await response.write(error_event(exc.body()))
        await response.write_eof()
    except ConnectionResetError:
        call.client_disconnected = True
    finally:
        gauge.dec()
    return response


async def _forward(response: web.StreamResponse, call: Call, events: list[bytes], strip_usage: bool) -> None:
    kept = [e for e in events if not _usage_only(e)] if strip_usage else events
    if kept:
        await response.write(kept[0] if len(kept) == 1 else b"".join(kept))
    answer = call.answer
    for event in events:  # the tee: the answer is rebuilt after the bytes went out
        payload = event_data(event)
        if payload and payload != DONE:
            answer.add_chunk(payload)


def _passed(name: str) -> bool:
    return name in _PASSED_HEADERS or name.startswith(_PASSED_PREFIX)


def _usage_only(event: bytes) -> bool:
    """The usage chunk the gateway asked for: `"choices": []` with a `usage` object."""
    return b'"usage"' in event and _EMPTY_CHOICES.search(event) is not None


def _error_message(raw: bytes) -> str:
    try:
        return str(orjson.loads(raw)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:500].decode("utf-8", "replace")


def _origin(request: web.Request) -> str | None:
    return request.headers.get("Origin") or request.headers.get("Referer")
