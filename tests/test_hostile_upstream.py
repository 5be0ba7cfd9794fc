"""Hostile upstreams, over real loopback against the real server: what a provider (or whoever answers in its
name) can make the gateway do by redirecting, never ending an event or an answer, dripping bytes, sending
chunks of the wrong shape, odd SSE framing, or quoting the provider key back.

The client's bytes are the contract: a stream that started is forwarded byte for byte, whatever the log tee
beside it makes of the events; only the gateway's own failures end a stream, with one error event.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from conftest import (
    AUTH,
    CHAT,
    PROXY_KEY,
    MakeGateway,
    RunningGateway,
    StartCli,
    event_json,
    gateway_config,
    read_events,
    serving,
    until,
)
from conftest import provider_section as section
from fake_upstream import FakeUpstream, Reply, spell
from test_hostile_client import built_records, openai_error, rss_bytes

from gateway.calls import Call

STREAM = {**CHAT, "stream": True}


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeUpstream]:
    """A second fake server, where redirects point: it must never be asked anything."""
    fake = FakeUpstream()
    async with serving(fake.app) as url:
        fake.url = url
        yield fake


def last_call(gateway: RunningGateway) -> Call:
    return gateway.recorder.responses()[-1]


def chunk(delta: Any = None, **fields: Any) -> bytes:
    """One SSE event with a chat chunk; `fields` replace its parts (choices, usage) with anything at all."""
    data: dict[str, Any] = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "model": "fake-model"}
    data["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": None}]
    return b"data: " + orjson.dumps({**data, **fields}) + b"\n\n"


def content(text: str) -> bytes:
    return chunk({"content": text})


DONE = b"data: [DONE]\n\n"


# --- redirects are never followed ---------------------------------------------------------------------------

REDIRECTED_CALLS = [
    ("/v1/chat/completions", CHAT, "/v1/chat/completions"),
    ("/v1/chat/completions", STREAM, "/v1/chat/completions"),
    ("/v1/completions", {"model": "fake-model", "prompt": "hi"}, "/v1/completions"),
    ("/v1/embeddings", {"model": "fake-model", "input": "hi"}, "/v1/embeddings"),
    ("/llm", CHAT, "/v1/chat/completions"),
]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize(
    ("path", "body", "upstream_path"),
    REDIRECTED_CALLS,
    ids=["chat", "chat-stream", "completions", "embeddings", "llm"],
)
async def test_an_upstream_redirect_is_a_502_and_is_not_followed(
    status: int,
    path: str,
    body: dict[str, Any],
    upstream_path: str,
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    elsewhere: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, default_provider="fake"))
    location = f"{elsewhere.url}/elsewhere{upstream_path}"
    fake_upstream.queue(Reply(status=status, redirect=location))
    async with http.post(gateway.url + path, json=body, headers=AUTH) as response:
        assert response.status == 502
        assert response.content_type == "application/json"
        error = openai_error(await response.read())
    assert error["code"] == "upstream_redirect"
    assert location in error["message"]
    assert elsewhere.total_hits == 0
    assert fake_upstream.hits[upstream_path] == 1
    assert last_call(gateway).status == 502


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_model_discovery_does_not_follow_a_redirect_with_the_provider_key(
    status: int,
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    elsewhere: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    providers = {"fake": section(fake_upstream.url, models_auth="x-api-key")}
    gateway = await make_gateway(gateway_config(fake_upstream.url, providers=providers))
    fake_upstream.models_redirect = elsewhere.url + "/v1/models"
    fake_upstream.models_redirect_status = status
    async with http.get(gateway.url + "/v1/models", headers=AUTH) as response:
        assert response.status == 200
        listing = await response.json()
    assert [m["id"] for m in listing["data"]] == ["fake-model"]
    assert len(fake_upstream.model_listings) == 1  # it was asked, and answered with a redirect
    assert elsewhere.total_hits == 0


# --- an event that never ends: 1 MiB without a blank line ------------------------------------------------

UNENDED_EVENT = [b'data: {"choices":[{"index":0,"delta":{"content":"'] + [b"x" * 16384] * 64  # 1 MiB


async def _hostile_streams(
    gateway: RunningGateway, http: aiohttp.ClientSession, stop: asyncio.Event
) -> list[bytes]:
    """Stream calls answered with one unended event, one after the other until `stop`; their bodies."""
    bodies: list[bytes] = []
    while not stop.is_set():
        async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
            bodies.append(await response.read())
    return bodies


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_an_event_past_max_event_bytes_ends_the_stream_and_others_are_not_slowed(
    gzipped: bool,
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream = {"max_event_bytes": 256 * 1024, "retries": 0, "idle_timeout_s": 5}
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream=upstream))
    fake_upstream.responder = lambda body: (
        Reply(raw_events=UNENDED_EVENT, gzip=gzipped) if body.get("stream") else Reply()
    )
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200  # a warm connection, so the timings below are the calls alone
    stop = asyncio.Event()
    hostile = asyncio.create_task(_hostile_streams(gateway, http, stop))
    try:
        await until(lambda: any(r["body"].get("stream") for r in fake_upstream.requests), what="a stream")
        seconds = []
        for i in range(50):
            started = time.perf_counter()
            async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
                assert response.status == 200
                await response.read()
            seconds.append(time.perf_counter() - started)
            if i % 10 == 0:
                async with http.get(gateway.url + "/livez") as response:
                    assert response.status == 200
    finally:
        stop.set()
        bodies = await asyncio.wait_for(hostile, 10)
    assert statistics.quantiles(seconds, n=100)[98] < 0.050, sorted(seconds)[-5:]
    assert bodies
    for body in bodies:
        assert len(body) < 4096, f"{len(body)} bytes reached the client: {body[:100]!r}"
        events = [e for e in body.split(b"\n\n") if e]
        assert len(events) == 1, body
        assert event_json(events[0] + b"\n\n")["error"]["code"] == "upstream_event_too_large"
    hostile_calls = [c for c in gateway.recorder.responses() if c.stream]
    assert hostile_calls and all(c.error for c in hostile_calls)


# --- answers that never end ---------------------------------------------------------------------------------

DELTA_TEXT = "endless " * 512  # 4 KiB a chunk


def _expected(first: bytes, repeated: bytes, start: int, length: int) -> bytes:
    """Bytes `start` to `start + length` of `first` followed by `repeated` forever."""
    if start >= len(first):
        offset = (start - len(first)) % len(repeated)
        return (repeated * ((offset + length) // len(repeated) + 1))[offset : offset + length]
    head = first[start : start + length]
    return head + _expected(first, repeated, len(first), length - len(head))


async def _endless_pattern(fake: FakeUpstream) -> tuple[bytes, bytes]:
    """The role event and the content event an endless answer repeats: the fake keeps its first two writes."""
    sent = fake.requests[-1]["sent"]
    await until(lambda: len(sent) == 2, what="the fake's first two events")
    return sent[0], sent[1]


async def test_an_endless_stream_reaches_the_client_whole_while_its_record_stops_growing(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    keep = 10_000
    gateway = await make_gateway(gateway_config(fake_upstream.url, logging={"content_max_chars": keep}))
    fake_upstream.queue(Reply(endless=True, content=DELTA_TEXT))
    before = rss_bytes()
    received = 0
    first = repeated = b""
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 200
        async for data in response.content.iter_any():
            if not repeated:
                first, repeated = await _endless_pattern(fake_upstream)
            assert data == _expected(first, repeated, received, len(data)), f"bytes changed at {received}"
            received += len(data)
            if received > 30 << 20:
                break
    await until(lambda: gateway.recorder.responses(), what="the response record")
    call = last_call(gateway)
    assert getattr(call.answer, "truncated", None) is True
    assert len(call.answer.text) <= keep
    assert call.answer.text.startswith(DELTA_TEXT)
    assert rss_bytes() - before < 60 << 20


async def test_a_client_that_stops_reading_pauses_its_upstream_and_then_gets_every_byte(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream={"idle_timeout_s": 5}))
    fake_upstream.queue(Reply(endless=True, content=DELTA_TEXT))
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 200
        received = b""
        while len(received) < 64 << 10:
            received += await response.content.readany()
        first, repeated = await _endless_pattern(fake_upstream)
        before = rss_bytes()
        await asyncio.sleep(2)  # the client reads nothing: the upstream keeps writing as fast as it can
        held = rss_bytes() - before
        total = len(received)
        assert received == _expected(first, repeated, 0, total)
        async for data in response.content.iter_any():  # then it reads again
            assert data == _expected(first, repeated, total, len(data)), f"bytes changed at {total}"
            total += len(data)
            if total > 30 << 20:
                break
    assert held < 24 << 20, f"{held >> 20} MiB held for a client that was not reading"


@pytest.mark.parametrize(
    "reply",
    [Reply(endless=True, content="tick ", chunk_delay=0.05), Reply(drip=0.3)],
    ids=["endless", "drip"],
)
async def test_a_stream_ends_at_the_call_deadline_with_an_error_event(
    reply: Reply, make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream={"call_deadline_s": 2}))
    fake_upstream.queue(reply)
    started = time.monotonic()
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 200
        try:
            async with asyncio.timeout(5):
                events = await read_events(response)
        except TimeoutError:
            pytest.fail("the stream went on past the call deadline")
    assert 1.5 < time.monotonic() - started < 4.5
    assert event_json(events[-1])["error"]["code"] == "upstream_timeout"
    for event in events[:-1]:  # what came before the error is the upstream's, as sent
        assert event_json(event)["choices"][0]["delta"]
    await until(lambda: gateway.recorder.responses(), what="the response record")
    assert last_call(gateway).error
    await until(lambda: fake_upstream.disconnects >= 1, what="the upstream request closed")


async def test_a_whole_answer_that_drips_ends_at_the_call_deadline_with_a_504(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream={"call_deadline_s": 2}))
    fake_upstream.queue(Reply(drip=0.3))
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(5),
            http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response,
        ):
            assert response.status == 504
            error = openai_error(await response.read())
    except TimeoutError:
        pytest.fail("the call went on past its deadline")
    assert error["code"] == "upstream_timeout"
    assert time.monotonic() - started < 4.5
    assert last_call(gateway).error


BIG_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-big",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200_000}}],
    }
)


@pytest.mark.parametrize(
    ("reply", "limit"),
    [
        (Reply(raw_body=BIG_ANSWER), 64 * 1024),
        (Reply(raw_body=BIG_ANSWER, gzip=True), 64 * 1024),
        (Reply(endless=True), 64 * 1024),
        (Reply(), 64),  # a small answer that comes whole with the headers: read without waiting, still capped
    ],
    ids=["plain", "gzip", "endless", "one-packet"],
)
async def test_a_whole_answer_past_max_body_bytes_is_a_502(
    reply: Reply,
    limit: int,
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    upstream = {"max_body_bytes": limit, "retries": 0}
    gateway = await make_gateway(gateway_config(fake_upstream.url, upstream=upstream))
    fake_upstream.queue(reply)
    try:
        async with (
            asyncio.timeout(5),
            http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response,
        ):
            assert response.status == 502
            error = openai_error(await response.read())
    except TimeoutError:
        pytest.fail("the gateway went on reading an answer past max_body_bytes")
    assert error["code"] == "upstream_answer_too_large"
    assert last_call(gateway).status == 502


# --- chunks of the wrong shape never corrupt a stream -------------------------------------------------------

ODD_CHUNKS = {
    "choices-string": chunk(choices="x"),
    "choices-number": chunk(choices=5),
    "choices-object": chunk(choices={"index": 0, "delta": {}}),
    "choice-number": chunk(choices=[5]),
    "delta-string": chunk(choices=[{"index": 0, "delta": "x"}]),
    "tool-calls-number": chunk({"tool_calls": [5]}),
    "tool-calls-string": chunk({"tool_calls": "x"}),
    "usage-string": chunk(usage="x"),
}


@pytest.mark.parametrize("odd", list(ODD_CHUNKS.values()), ids=list(ODD_CHUNKS))
async def test_a_chunk_of_the_wrong_shape_passes_through_and_is_counted(
    odd: bytes, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    events = [chunk({"role": "assistant"}), content("Hello"), odd, content(" world"), DONE]
    fake_upstream.queue(Reply(raw_events=events))
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    assert received == b"".join(fake_upstream.requests[-1]["sent"])
    assert b"HTTP/1.1" not in received
    await until(lambda: gateway.recorder.responses(), what="the response record")
    call = last_call(gateway)
    assert call.status == 200
    assert call.answer.bad_chunks >= 1
    assert call.answer.text == "Hello world"
    assert built_records(call)[1]["content"] == "Hello world"


ODD_BODIES = {
    "message-string": {"choices": [{"index": 0, "message": "str", "finish_reason": "stop"}]},
    "choices-string": {"choices": "x"},
    "tool-calls-number": {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [5]}}]},
    "usage-string": {"choices": [{"index": 0, "message": {"content": "hi"}}], "usage": "x"},
}


@pytest.mark.parametrize("odd", list(ODD_BODIES.values()), ids=list(ODD_BODIES))
async def test_a_whole_answer_of_the_wrong_shape_passes_through_unchanged(
    odd: dict[str, Any], gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = orjson.dumps({"id": "chatcmpl-odd", "object": "chat.completion", **odd})
    fake_upstream.queue(Reply(raw_body=raw))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        assert await response.read() == raw
    await until(lambda: gateway.recorder.responses(), what="the response record")
    assert last_call(gateway).status == 200
    assert built_records(last_call(gateway))[1]["status"] == 200


# --- SSE framing as the spec allows it ----------------------------------------------------------------------

HI = b'{"choices":[{"index":0,"delta":{"content":"Hi"}}]}'
THERE = b'{"choices":[{"index":0,"delta":{"content":" there"}}]}'
FRAMINGS = {
    "id-after-data": [b"data: " + HI + b"\nid: 7\n\n", b"data: " + THERE + b"\nid: 8\n\n"],
    "event-and-id-before": [
        b"event: message\nid: 1\ndata: " + HI + b"\n\n",
        b"event: message\ndata: " + THERE + b"\n\n",
    ],
    "retry": [b"retry: 3000\n\n", b"retry: 10\ndata: " + HI + b"\n\n", b"data: " + THERE + b"\nretry: 5\n\n"],
    "comments": [b": keep-alive\n\n", b": note\ndata: " + HI + b"\n\n", b"data: " + THERE + b"\n: later\n\n"],
    "crlf": [b"data: " + HI + b"\r\nid: 2\r\n\r\n", b": c\r\ndata: " + THERE + b"\r\n\r\n"],
    "cr": [b"data: " + HI + b"\r\r", b"data: " + THERE + b"\rid: 3\r\r"],
    "multi-line-data": [
        b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"Hi"}}]}\n\n',
        b'data: {"choices":\r\ndata: [{"index":0,"delta":{"content":" there"}}]}\r\n\r\n',
    ],
    "no-space-after-colon": [b"data:" + HI + b"\n\n", b"data:" + THERE + b"\nid:9\n\n"],
}


@pytest.mark.parametrize("events", list(FRAMINGS.values()), ids=list(FRAMINGS))
async def test_sse_framing_is_forwarded_untouched_and_read_for_the_record(
    events: list[bytes], gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(Reply(raw_events=[*events, DONE]))
    async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    assert received == b"".join(fake_upstream.requests[-1]["sent"])
    await until(lambda: gateway.recorder.responses(), what="the response record")
    call = last_call(gateway)
    assert call.answer.text == "Hi there"
    assert call.answer.bad_chunks == 0


# --- the provider key never comes back ----------------------------------------------------------------------

HOSTILE_KEY = 'k"e\\y/+=9f3Zq8LmW2'
STYLES = ("json", "slash", "unicode", "url")


def key_spellings() -> list[bytes]:
    """Every way the key can appear in bytes that leave the gateway, and the tail no scrubbing may leave."""
    spelled = [spell(HOSTILE_KEY, style) for style in STYLES]
    return [HOSTILE_KEY.encode(), *spelled, quote(HOSTILE_KEY).encode(), b"9f3Zq8LmW2"]


def leaks(blob: bytes) -> list[bytes]:
    return [spelling for spelling in key_spellings() if spelling in blob]


async def test_a_provider_key_echoed_in_any_spelling_reaches_neither_client_nor_records(
    tmp_path: Path, start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = gateway_config(fake_upstream.url, logging={"capture": "full"})
    gateway = await start_cli(config, env={"PROXY_KEY": PROXY_KEY, "FAKE_KEY": HOSTILE_KEY})
    seen: list[bytes] = []
    for style in STYLES:
        fake_upstream.queue(Reply(status=401, echo_key=True, echo_style=style))
        async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
            assert response.status == 401
            seen.append(await response.read())
        fake_upstream.queue(Reply(echo_key=True, echo_style=style))
        async with http.post(gateway.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as response:
            assert response.status == 200
            seen.append(await response.read())
    # The fake did quote the key back each time, in the spelling asked for.
    for request, style in zip(fake_upstream.requests, [s for s in STYLES for _ in (0, 1)], strict=True):
        assert request["headers"]["Authorization"] == f"Bearer {HOSTILE_KEY}"
        assert spell(HOSTILE_KEY, style) in b"".join(request["sent"])
    assert await gateway.stop() == 0
    for body in seen:
        assert not leaks(body), body
    stdout = gateway.stdout_path.read_bytes()
    assert stdout.count(b'"type":"response"') == 2 * len(STYLES)
    assert not leaks(stdout), [line for line in stdout.splitlines() if leaks(line)]
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
    assert spooled.count(b'"type":"response"') == 2 * len(STYLES)
    assert not leaks(spooled)
    assert not leaks(gateway.stderr.encode())
