"""Hostile clients, over real loopback against the real server: what a caller without a key, with odd bytes
in its headers or body, or with a body that never finishes arriving can make the gateway do.

Some of these need bytes no client library sends, or need to see exactly what the server did with the
connection, so they speak HTTP/1.1 by hand through `RawConnection`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from conftest import (
    AUTH,
    CHAT,
    PROVIDER_KEY,
    PROXY_KEY,
    ROOT,
    MakeGateway,
    RunningGateway,
    gateway_config,
    until,
)
from conftest import provider_section as section
from fake_upstream import FakeUpstream, Reply
from prometheus_client.parser import text_string_to_metric_families

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.logs.records import RecordBuilder

KEY_HEADER = f"Authorization: Bearer {PROXY_KEY}\r\n".encode()
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def parse_response(data: bytes, closed: bool) -> RawResponse | None:
    """The first HTTP response in `data`, or None while it is incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    if "content-length" in headers:
        length = int(headers["content-length"])
        return (
            RawResponse(int(status_line.split()[1]), headers, rest[:length]) if len(rest) >= length else None
        )
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return None
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return RawResponse(int(status_line.split()[1]), headers, body)
            if len(rest) < size + 2:
                return None
            body, rest = body + rest[:size], rest[size + 2 :]
    return RawResponse(int(status_line.split()[1]), headers, rest) if closed else None


class RawConnection(asyncio.Protocol):
    """One client connection that writes whatever bytes a test gives it and keeps every byte it receives.

    asyncio's StreamReader drops what it buffered once the server resets the connection, and a server that
    closes without reading the rest of a body does reset it: the answer it sent first is what tests check.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        host, port = url.removeprefix("http://").split(":")
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, int(port))
        assert conn.transport is not None
        # A small write buffer, so that bytes accepted for sending are close to bytes the server pulled.
        conn.transport.set_write_buffer_limits(high=16 * 1024)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def send(self, data: bytes, within: float = 1.0) -> bool:
        """Write `data` once the server takes more; False when the connection closed or stalled `within` s."""
        try:
            await asyncio.wait_for(self._writable.wait(), within)
        except TimeoutError:
            return False
        if self.closed.is_set() or self.transport is None:
            return False
        self.transport.write(data)
        await asyncio.sleep(0)  # let the answer, if any, be received between two writes
        return True

    async def wait_closed(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), within)
        except TimeoutError:
            return False
        return True

    async def response(self, within: float) -> RawResponse | None:
        """The first complete response, once it arrived within `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            closed = self.closed.is_set()
            parsed = parse_response(bytes(self.received), closed)
            if parsed is not None or closed:
                return parsed
            await asyncio.sleep(0.01)
        return None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def raw_request(url: str, head: bytes, body: bytes, within: float = 10) -> RawResponse:
    """Send `head` (request line and headers, without the blank line) and `body`; the parsed response."""
    conn = await RawConnection.open(url)
    try:
        await conn.send(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = await conn.response(within)
    finally:
        conn.abort()
    assert answer is not None, "no response"
    return answer


def openai_error(raw: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error body, checked for its shape."""
    error = orjson.loads(raw)["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def records_of(gateway: RunningGateway, request_id: str) -> list[tuple[str, Call]]:
    return [(kind, call) for kind, call in gateway.recorder.records if call.request_id == request_id]


def built_records(call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's request and response records as the log writer serializes them (no scrubbing).

    Building must not raise: the writer would then keep only a stub saying the record could not be built.
    """
    builder = RecordBuilder(LoggingSettings(capture="full"))
    *_, request = builder.request(call)  # in full capture, new system prompts come first
    response = builder.response(call, time.time())
    return orjson.loads(orjson.dumps(request)), orjson.loads(orjson.dumps(response))


def rss_bytes() -> int:
    """This process's resident memory: the gateway runs in it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --- a refused caller cannot make the gateway read (or keep) its body --------------------------------------

BIG_BODY = 8 << 20
PIECE = 16 * 1024
# What a correct server may still have pulled when its answer arrives: the refused prefix it reads, plus
# what the kernel buffers on both sides of a loopback socket and aiohttp reads ahead. Far below BIG_BODY.
PULLED_AT_ANSWER_MAX = 512 * 1024
PULLED_IN_ALL_MAX = 1 << 20


def chunked_chat_body(total: int) -> Iterator[tuple[int, bytes]]:
    """A JSON chat body of `total` bytes in chunked framing: (payload bytes, frame) pairs, then the end."""
    head = b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    sent = 0
    while sent < total:
        size = min(PIECE, total - sent)
        piece = b"x" * size
        if sent == 0:
            piece = head + piece[len(head) :]
        if sent + size == total:
            piece = piece[: -len(tail)] + tail
        yield size, b"%x\r\n" % size + piece + b"\r\n"
        sent += size
    yield 0, b"0\r\n\r\n"


@dataclass
class Upload:
    answer: RawResponse | None
    pulled_at_answer: int
    pulled: int
    closed: bool
    seconds: float


async def refused_upload(url: str, authorization: bytes) -> Upload:
    """Post an 8 MiB chunked body without a valid key, writing only as fast as the server takes it."""
    started = time.monotonic()
    conn = await RawConnection.open(url)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    await conn.send(head + authorization + b"Transfer-Encoding: chunked\r\n\r\n")
    pulled, at_answer = 0, None
    for size, frame in chunked_chat_body(BIG_BODY):
        if at_answer is None and conn.received:
            at_answer = pulled
        if not await conn.send(frame):
            break  # closed, or the server stopped taking bytes
        pulled += size
    answer = await conn.response(5)
    closed = await conn.wait_closed(3)
    conn.abort()
    seconds = time.monotonic() - started
    return Upload(answer, pulled if at_answer is None else at_answer, pulled, closed, seconds)


async def test_a_keyless_upload_is_refused_after_a_bounded_prefix_and_costs_no_memory(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    wrong = b"Authorization: Bearer not-the-key\r\n"
    await refused_upload(gateway.url, wrong)  # allocations made once per process are not growth
    before = rss_bytes()
    for i in range(20):
        upload = await refused_upload(gateway.url, b"" if i % 2 else wrong)
        assert upload.answer is not None, f"call {i}: no answer"
        assert upload.answer.status == 401
        assert openai_error(upload.answer.body)["type"] == "authentication_error"
        assert upload.pulled_at_answer <= PULLED_AT_ANSWER_MAX, f"call {i}: {upload}"
        assert upload.pulled <= PULLED_IN_ALL_MAX, f"call {i}: the server kept pulling: {upload}"
        assert upload.closed, f"call {i}: the connection stayed open after the answer"
        assert upload.seconds < 2, f"call {i}: {upload}"
    assert rss_bytes() - before < 8 << 20
    assert fake_upstream.requests == []
    await until(lambda: len(gateway.recorder.records) == 2 * 21, what="two records per call")
    by_id: dict[str, list[str]] = {}
    for kind, call in gateway.recorder.records:
        by_id.setdefault(call.request_id, []).append(kind)
    assert sorted(by_id.values()) == [["request", "response"]] * 21
    assert {call.status for call in gateway.recorder.responses()} == {401}


# --- metrics labels are not the client's to choose ----------------------------------------------------------


def model_labels(metrics_text: str) -> dict[tuple[str, str], float]:
    """`gateway_requests_total` by (model, status)."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                key = (sample.labels["model"], sample.labels["status"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


async def test_model_names_made_up_by_callers_never_become_metric_labels(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    long_names = [f"long-{i}-" + "m" * 100_000 for i in range(3)]
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    for model in long_names:
        answer = await raw_request(gateway.url, head, orjson.dumps({**CHAT, "model": model}))
        assert answer.status == 401
    made_up = [f"made-up-{i}" for i in range(200)]
    for i, model in enumerate(made_up):
        headers = {"Authorization": "Bearer wrong"} if i % 2 else {}
        async with http.post(
            gateway.url + "/v1/chat/completions", json={**CHAT, "model": model}, headers=headers
        ) as response:
            assert response.status == 401
    # A configured model, a prefix-routed name its upstream answered, and one it refused.
    fake_upstream.queue(Reply(), Reply(), Reply(status=404))
    for model, status in (("fake-model", 200), ("fake/alpha", 200), ("fake/missing", 404)):
        body = {**CHAT, "model": model}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            assert response.status == status
    async with http.get(gateway.url + "/metrics", headers=AUTH) as response:
        assert response.status == 200
        text = await response.text()
    assert len(text) < 100_000
    counts = model_labels(text)
    labels = {model for model, _ in counts}
    assert not labels & set(made_up)
    assert all(len(label) < 100 for label in labels)
    assert labels <= {"fake-model", "fake/alpha", "other", "none"}
    assert counts[("fake-model", "200")] == 1
    assert counts[("fake/alpha", "200")] == 1
    assert counts[("other", "404")] == 1
    assert sum(n for (_, status), n in counts.items() if status == "401") == 203


# --- odd bytes in headers and bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("origin_header", [b"Origin", b"Referer"])
async def test_header_values_that_are_not_utf8_are_recorded_with_a_replacement_character(
    origin_header: bytes, gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + KEY_HEADER
        + b"X-Session-Id: sess-\xff-1\r\nX-Client: cli\xffent\r\n"
        + origin_header
        + b": https://o\xff.example\r\n"
    )
    answer = await raw_request(gateway.url, head, orjson.dumps(CHAT))
    assert answer.status == 200
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"]
    request_id = answer.headers["x-request-id"]
    await until(lambda: len(records_of(gateway, request_id)) == 2, what="both records")
    kinds = [kind for kind, _ in records_of(gateway, request_id)]
    assert kinds == ["request", "response"]
    call = records_of(gateway, request_id)[0][1]
    assert (call.session_id, call.client, call.origin) == (
        "sess-\ufffd-1",
        "cli\ufffdent",
        "https://o\ufffd.example",
    )
    assert (call.model, call.key_name, call.status) == ("fake-model", "default", 200)
    # The records serialize: a lone surrogate would make orjson refuse the whole record.
    request_record, response_record = built_records(call)
    assert request_record["client"] == "cli\ufffdent"
    for record in (request_record, response_record):
        assert record["request_id"] == request_id
        assert record["session_id"] == "sess-\ufffd-1"
        assert record["origin"] == "https://o\ufffd.example"
        assert record["key_name"] == "default"
        assert record["model"] == "fake-model"


async def test_a_deeply_nested_streamed_body_is_a_400_not_a_500(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    nested = b"[" * 300 + b"]" * 300
    body = orjson.dumps({**CHAT, "stream": True})[:-1] + b', "x": ' + nested + b"}"
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(gateway.url + "/v1/chat/completions", data=body, headers=headers) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        error = openai_error(await response.read())
        request_id = response.headers["X-Request-Id"]
    assert error["type"] == "invalid_request_error"
    await until(lambda: len(records_of(gateway, request_id)) == 2, what="both records")
    assert [kind for kind, _ in records_of(gateway, request_id)] == ["request", "response"]
    assert gateway.recorder.responses()[-1].status == 400


@pytest.mark.parametrize(
    "model",
    ["fake/" + "a" * 100_000, "fake/a\nb", "fake/a\x01b", "fake/a\x7fb", "fake/a b", "fake/a\tb"],
    ids=["100KB", "newline", "control", "delete", "space", "tab"],
)
async def test_a_model_name_that_cannot_be_one_is_a_400_on_model(
    model: str, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "model": model}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 400
        error = openai_error(await response.read())
    assert error["param"] == "model"
    assert len(error["message"]) < 2000  # the name is not echoed whole
    assert fake_upstream.requests == []


def top_level_pairs(raw: bytes) -> list[tuple[str, Any]]:
    """The top-level key/value pairs of a JSON object in order, duplicates kept."""
    pairs: list[tuple[str, Any]] = []

    def keep_top(items: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs[:] = items  # the outermost object is decoded last
        return dict(items)

    json.loads(raw, object_pairs_hook=keep_top)
    return pairs


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_duplicated_model_key_reaches_the_upstream_once_as_the_routed_model(
    stream: bool, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    messages = orjson.dumps(CHAT["messages"])
    raw = b'{"model": "fake/evil", "model": "fake-model", "stream": %s, "messages": %s}' % (
        b"true" if stream else b"false",
        messages,
    )
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(gateway.url + "/v1/chat/completions", data=raw, headers=headers) as response:
        assert response.status == 200
        await response.read()
    call = gateway.recorder.responses()[-1]
    sent = top_level_pairs(fake_upstream.requests[-1]["raw"])
    models = [value for key, value in sent if key == "model"]
    assert models == [call.model]
    assert call.model in ("fake-model", "fake/evil")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "cache_salt": "mine"}),
        ("/v1/chat/completions", {**CHAT, "stream": True, "cache_salt": "mine"}),
        ("/v1/completions", {"model": "fake-model", "prompt": "hi", "cache_salt": "mine"}),
        ("/v1/chat/completions", {**CHAT, "cache_salt": None}),
    ],
    ids=["chat", "chat-stream", "completions", "null"],
)
async def test_a_client_cache_salt_never_replaces_the_deployment_salt(
    path: str,
    body: dict[str, Any],
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    providers = {"fake": section(fake_upstream.url, plugin="nrp")}
    gateway = await make_gateway(
        gateway_config(fake_upstream.url, providers=providers),
        env={"FAKE_KEY": PROVIDER_KEY, "CACHE_SALT": "deploy-salt"},
    )
    async with http.post(gateway.url + path, json=body, headers=AUTH) as response:
        assert response.status == 200
        await response.read()
    assert fake_upstream.requests[-1]["body"]["cache_salt"] == "deploy-salt"
    assert b"mine" not in fake_upstream.requests[-1]["raw"]


# --- what the gateway tells callers without a key -----------------------------------------------------------


async def test_health_without_a_key_says_only_whether_the_gateway_is_up(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + "/health") as response:
        assert response.status == 200
        raw = await response.read()
    health = orjson.loads(raw)
    assert set(health) == {"status", "providers", "proxy_key_configured"}
    assert health["providers"] == {"fake": {"configured": True}}
    assert health["proxy_key_configured"] is True
    assert fake_upstream.url.encode() not in raw
    async with http.get(gateway.url + "/health", headers={"Authorization": "Bearer wrong"}) as response:
        assert set(await response.json()) == {"status", "providers", "proxy_key_configured"}
    async with http.get(gateway.url + "/health", headers=AUTH) as response:
        full = await response.json()
    assert full["providers"]["fake"]["endpoint"] == f"{fake_upstream.url}/v1/chat/completions"
    assert full["providers"]["fake"]["configured"] is True
    assert {"logging", "pid", "in_flight", "default_provider"} <= set(full)


async def test_metrics_can_require_a_key(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, server={"metrics_require_key": True}))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.get(gateway.url + "/metrics", headers=headers) as response:
            assert response.status == 401
            assert openai_error(await response.read())["type"] == "authentication_error"
    async with http.get(gateway.url + "/metrics", headers=AUTH) as response:
        assert response.status == 200
        assert "gateway_in_flight_requests" in await response.text()


def _ingress_routes(rule_path: str, path_type: str, path: str) -> bool:
    """Whether an Ingress path rule sends `path` to the backend (Prefix matches whole path segments)."""
    if path_type == "Exact":
        return path == rule_path
    prefix = rule_path.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def test_the_ingress_does_not_route_metrics() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy/base/ingress.yaml").read_text()))
    ingresses = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Ingress"]
    assert ingresses
    rules = [
        (p["path"], p.get("pathType", "ImplementationSpecific"))
        for ingress in ingresses
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert not any(_ingress_routes(path, kind, "/metrics") for path, kind in rules), rules
    for served in ("/v1/chat/completions", "/v1/models", "/chat", "/llm", "/health"):
        assert any(_ingress_routes(path, kind, served) for path, kind in rules), served


# --- a body that never finishes arriving ---------------------------------------------------------------


async def test_a_body_that_arrives_too_slowly_is_a_408_and_the_connection_is_closed(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, server={"body_timeout_s": 1}))
    conn = await RawConnection.open(gateway.url)
    started = time.monotonic()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    await conn.send(head + KEY_HEADER + b"Content-Length: 1000\r\n\r\n")
    try:
        for byte in orjson.dumps(CHAT)[:10]:  # 5 s of drip at most, far past the timeout
            if conn.received or not await conn.send(bytes([byte])):
                break
            await asyncio.sleep(0.5)
        answer = await conn.response(0.5)
        answered_after = time.monotonic() - started
        closed = await conn.wait_closed(1)
    finally:
        conn.abort()
    assert answer is not None, "no answer while the body dripped in"
    assert answer.status == 408
    assert openai_error(answer.body)
    assert answered_after < 1 + 2
    assert closed
    assert fake_upstream.requests == []
