"""A fake OpenAI-compatible LLM server that speaks SSE the way vLLM and OpenRouter do.

It also answers the two other dialects vLLM serves, from the same `Reply`: OpenAI's Responses API
(`/v1/responses`) and Anthropic's Messages API (`/v1/messages` and `/v1/messages/count_tokens`); their
bodies and events are built in `fake_dialects`.

It is the only fake in the test suite: everything else is real. Each answer is a `Reply`: the next one
queued with `FakeUpstream.queue(...)` (say, two failures before the responder's answer), else the one
`FakeUpstream.responder(body)` chooses; the default responder reads an optional `"fake": {...}` object from
the request body (so tests that drive the gateway as a subprocess can steer it), else answers with a short
text. Every request is kept in `requests` with the bytes sent back, so tests can compare exact bytes, and
counted by path in `hits` (unknown paths too), so a test can show that nothing reached a server at all.

Hostile answers for the hardening tests: redirects, bytes sent verbatim (`raw_events`, `raw_body`), gzip,
streams that never end (`endless`) or arrive one byte at a time (`drip`), and the provider key echoed back
in several spellings (`echo_style`).

Run on its own: `python tests/fake_upstream.py --port 18000`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import itertools
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from fake_dialects import (
    DialectBody,
    DialectEvents,
    message_object,
    messages_events,
    pieces,
    prompt_words,
    response_object,
    responses_events,
)


@dataclass
class Reply:
    """What the fake answers to one request."""

    content: str = "Hello from the fake upstream."
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"  # vLLM >= 0.10 says "reasoning"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "arguments": str}]
    status: int = 200
    error: bytes | None = None  # the raw error body when status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0
    chunks: int = 0  # split content into this many chunks (0: one per word)
    comments: bool = False  # OpenRouter's ": OPENROUTER PROCESSING" keep-alive lines
    finish_reason: str = ""
    cost: float | None = None  # OpenRouter reports usage.cost
    delay: float = 0.0  # before the response headers
    abort_after: int | None = None  # close the connection after this many chunks
    drop: bool = False  # close the connection without answering at all
    echo_key: bool = False  # the error body quotes the request's Authorization header, as careless servers do
    # How the echoed header is spelled inside the JSON: "json" (orjson's escapes), "slash" (also `\/`),
    # "unicode" (`\u0022` for every non-alphanumeric) or "url" (percent-encoded). A 200 stream echoes it in
    # an error event after the content, then ends without [DONE], as providers fail mid-stream.
    echo_style: str = "json"
    model: str = ""
    redirect: str = ""  # with a 3xx status: answer with this Location and nothing else
    raw_events: list[bytes] | None = None  # the stream body, each item written verbatim as one write
    raw_body: bytes | None = None  # the whole answer body, verbatim, with `status`
    gzip: bool = False  # compress the body (stream writes each flushed at once) with Content-Encoding: gzip
    endless: bool = False  # stream content deltas (or, non-streamed, spaces) until the client goes away
    drip: float = 0.0  # send the answer one byte every `drip` seconds, forever
    pings: bool = True  # Messages streams: `ping` events, as Anthropic sends them
    stream_error: str = ""  # Responses and Messages streams: an `error` event after the content, then the end


def default_responder(body: dict[str, Any]) -> Reply:
    spec = body.get("fake") or {}
    known = {f.name for f in fields(Reply)}
    reply = Reply(**{k: v for k, v in spec.items() if k in known})
    if isinstance(reply.error, str):
        reply.error = reply.error.encode()
    if isinstance(reply.raw_body, str):
        reply.raw_body = reply.raw_body.encode()
    if reply.raw_events is not None:
        reply.raw_events = [e.encode() if isinstance(e, str) else e for e in reply.raw_events]
    return reply


def spell(text: str, style: str) -> bytes:
    """`text` as it appears inside a JSON string, spelled one of the ways servers do (Reply.echo_style)."""
    if style == "url":
        return orjson.dumps(quote(text, safe=""))[1:-1]
    if style == "unicode":
        return "".join(c if c.isalnum() or c == " " else f"\\u{ord(c):04x}" for c in text).encode()
    escaped = orjson.dumps(text)[1:-1]
    return escaped.replace(b"/", b"\\/") if style == "slash" else escaped


class FakeUpstream:
    """The server: `app` to run, `requests` to inspect, `gate` to pace streams chunk by chunk."""

    def __init__(self, responder: Callable[[dict[str, Any]], Reply] = default_responder) -> None:
        self.responder = responder
        self.url = ""  # the base URL, once something serves `app`
        # {"path", "headers", "body", "raw", "at", "sent", "sent_bytes"}; of an endless or dripped answer
        # `sent` keeps only the first two writes, so a test measuring memory is not measuring the fake.
        self.requests: list[dict[str, Any]] = []
        self.hits: collections.Counter[str] = collections.Counter()  # every request, by path
        self.queued: collections.deque[Reply] = collections.deque()
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.gate: asyncio.Queue[None] | None = None  # when set, each stream chunk waits for a token
        self.models = ["fake-model"]
        self.model_listings: list[dict[str, str]] = []  # the headers of each GET /v1/models
        self.models_redirect = ""  # when set, GET /v1/models answers `models_redirect_status` to it
        self.models_redirect_status = 302
        self._ids = itertools.count(1)
        self.app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._count])
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/responses", self.responses)
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/_requests", self.dump_requests)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        self.hits[request.path] += 1
        response: web.StreamResponse = await handler(request)
        return response

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order, before the responder has its say again."""
        self.queued.extend(replies)

    async def _take(self, request: web.Request) -> tuple[dict[str, Any], Reply]:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.requests.append(
            {
                "path": request.path,
                "headers": {str(k): v for k, v in request.headers.items()},  # orjson wants plain str keys
                "body": body,
                "raw": raw,
                "at": time.monotonic(),
                "sent": [],
                "sent_bytes": 0,
            }
        )
        reply = self.queued.popleft() if self.queued else self.responder(body)
        if reply.delay:
            await self._wait(reply.delay)
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
        if reply.echo_key:
            said = spell(request.headers.get("Authorization", ""), reply.echo_style)
            reply.error = b'{"error": {"message": "key ' + said + b' is over quota", "type": "quota"}}'
        return body, reply

    def _sent(self, data: bytes, keep: bool = True) -> bytes:
        record = self.requests[-1]
        record["sent_bytes"] += len(data)
        if keep:
            record["sent"].append(data)
        return data

    def _fixed(self, reply: Reply, error: bytes | None = None) -> web.Response | None:
        """The answer when `reply` fixes it whatever the request: a redirect, an error, or raw bytes."""
        if reply.redirect:
            headers = {"Location": reply.redirect, **reply.headers}
            return web.Response(status=reply.status, body=self._sent(b"moved"), headers=headers)
        if reply.raw_body is not None:
            return self._whole(reply.raw_body, reply, reply.status)
        if reply.status >= 400:
            return self._error(reply, error)
        return None

    def _whole(self, raw: bytes, reply: Reply, status: int = 200) -> web.Response:
        """A whole body: the bytes kept in `sent` are the uncompressed ones the client should end up with."""
        self._sent(raw)
        headers = _json_headers(reply)
        if reply.gzip:
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=status, body=raw, headers=headers)

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self._mark_disconnect()
            raise

    def _mark_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._take(request)
        if (fixed := self._fixed(reply)) is not None:
            return fixed
        model = reply.model or body.get("model", "fake-model")
        if body.get("stream") or reply.raw_events is not None:
            return await self._stream(request, body, reply, model)
        if reply.endless or reply.drip:
            return await self._endless_body(request, reply)
        return self._whole(orjson.dumps(self._completion(body, reply, model)), reply)

    def _error(self, reply: Reply, error: bytes | None = None) -> web.Response:
        raw = reply.error or error or _OPENAI_ERROR
        return self._whole(raw, reply, reply.status)

    def _completion(self, body: dict[str, Any], reply: Reply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
        if reply.reasoning:
            message[reply.reasoning_field] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": t["name"], "arguments": t["arguments"]},
                }
                for i, t in enumerate(reply.tool_calls)
            ]
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
            "usage": _usage(body, reply),
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, model: str
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", **reply.headers}
        if reply.gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        base = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        events: Iterable[bytes]
        if reply.raw_events is not None:
            events = reply.raw_events
        elif reply.endless or reply.drip:
            events = self._endless_events(reply, base)
        else:
            events = self._events(body, reply, base)
        return await self._write_all(request, response, events, reply)

    async def _write_all(
        self,
        request: web.Request,
        response: web.StreamResponse,
        events: Iterable[bytes],
        reply: Reply,
    ) -> web.StreamResponse:
        """Write `events` paced as `reply` says; `sent` keeps them uncompressed, as the client reads them."""
        packer = zlib.compressobj(wbits=31) if reply.gzip else None  # wbits 31: the gzip container
        if reply.drip:
            events = (bytes([byte]) for byte in itertools.chain.from_iterable(events))
        sent = 0
        try:
            for event in events:
                if reply.abort_after is not None and sent >= reply.abort_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if self.gate is not None:
                    await self.gate.get()
                elif reply.drip and sent:
                    await asyncio.sleep(reply.drip)
                elif reply.chunk_delay and sent:
                    await asyncio.sleep(reply.chunk_delay)
                data = self._sent(event, keep=sent < 2 or not (reply.endless or reply.drip))
                if packer is not None:
                    data = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
                await response.write(data)
                sent += 1
            if packer is not None:
                await response.write(packer.flush())
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self._mark_disconnect()
            raise
        return response

    def _endless_events(self, reply: Reply, base: dict[str, Any]) -> Iterator[bytes]:
        """The role chunk, then the same content delta forever: a client can check every byte it gets."""
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        more = {"index": 0, "delta": {"content": reply.content}, "finish_reason": None}
        delta = {**base, "choices": [more]}
        yield b"data: " + orjson.dumps(first) + b"\n\n"
        yield from itertools.repeat(b"data: " + orjson.dumps(delta) + b"\n\n")

    async def _endless_body(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        """A non-streamed answer that never ends: JSON may begin with any amount of whitespace."""
        response = web.StreamResponse(headers=_json_headers(reply))
        await response.prepare(request)
        return await self._write_all(request, response, itertools.repeat(b" " * 65536), reply)

    def _events(self, body: dict[str, Any], reply: Reply, base: dict[str, Any]) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return b"data: " + orjson.dumps(data) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        if reply.comments:
            events.append(b": OPENROUTER PROCESSING\n\n")
        events += [chunk({reply.reasoning_field: piece}) for piece in pieces(reply.reasoning, 0)]
        events += [chunk({"content": piece}) for piece in pieces(reply.content, reply.chunks)]
        if reply.echo_key:
            return [*events, b"data: " + (reply.error or b"") + b"\n\n"]
        for i, call in enumerate(reply.tool_calls):
            head = {
                "index": i,
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            events.append(chunk({"tool_calls": [head]}))
            for piece in pieces(call["arguments"], 3):
                events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        events.append(chunk({}, _finish(reply)))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                b"data: " + orjson.dumps({**base, "choices": [], "usage": _usage(body, reply)}) + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")
        return events

    async def completions(self, request: web.Request) -> web.Response:
        body, reply = await self._take(request)
        if (fixed := self._fixed(reply)) is not None:
            return fixed
        data = {
            "id": f"cmpl-fake-{next(self._ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "usage": _usage(body, reply),
            "choices": [{"index": 0, "text": reply.content, "finish_reason": "stop", "logprobs": None}],
        }
        return self._whole(orjson.dumps(data), reply)

    async def embeddings(self, request: web.Request) -> web.Response:
        body, reply = await self._take(request)
        if (fixed := self._fixed(reply)) is not None:
            return fixed
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))]
        usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
        out = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        return self._whole(orjson.dumps(out), reply)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses API, as vLLM serves it."""
        return await self._dialect(request, responses_events, response_object, _OPENAI_ERROR)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages API, as Anthropic and vLLM serve it; errors in Anthropic's shape."""
        return await self._dialect(request, messages_events, message_object, _ANTHROPIC_ERROR)

    async def count_tokens(self, request: web.Request) -> web.Response:
        body, reply = await self._take(request)
        if (fixed := self._fixed(reply, _ANTHROPIC_ERROR)) is not None:
            return fixed
        return self._whole(orjson.dumps({"input_tokens": prompt_words(body)}), reply)

    async def _dialect(
        self, request: web.Request, events: DialectEvents, whole: DialectBody, error: bytes
    ) -> web.StreamResponse:
        body, reply = await self._take(request)
        if (fixed := self._fixed(reply, error)) is not None:
            return fixed
        answer_id = f"fake-{next(self._ids)}"
        model = reply.model or str(body.get("model", "fake-model"))
        if not (body.get("stream") or reply.raw_events is not None):
            return self._whole(orjson.dumps(whole(body, reply, answer_id, model)), reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **reply.headers})
        await response.prepare(request)
        stream = reply.raw_events if reply.raw_events is not None else events(body, reply, answer_id, model)
        return await self._write_all(request, response, stream, reply)

    async def list_models(self, request: web.Request) -> web.Response:
        self.model_listings.append(dict(request.headers))
        if self.models_redirect:
            headers = {"Location": self.models_redirect}
            return web.Response(status=self.models_redirect_status, headers=headers, text="moved")
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def dump_requests(self, request: web.Request) -> web.Response:
        safe = [{k: v for k, v in r.items() if k not in ("raw", "sent")} for r in self.requests]
        return web.Response(body=orjson.dumps(safe), content_type="application/json")


def _json_headers(reply: Reply) -> dict[str, str]:
    return {"Content-Type": "application/json", **reply.headers}


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt = sum(
        len(str(m.get("content") or "").split()) for m in body.get("messages", []) if isinstance(m, dict)
    )
    completion = len(reply.content.split()) + len(reply.reasoning.split())
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reply.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": len(reply.reasoning.split())}
    if reply.cost is not None:
        usage["cost"] = reply.cost
    return usage


_OPENAI_ERROR = orjson.dumps({"error": {"message": "fake failure", "type": "server_error"}})
_ANTHROPIC_ERROR = orjson.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "fake failure"}}
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    args = parser.parse_args()
    web.run_app(FakeUpstream().app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
