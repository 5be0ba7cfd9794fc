"""The protocol edge under attack, over real loopback sockets: slow senders lose their sockets, requests the
HTTP parser rejects get a fixed OpenAI-shaped answer that echoes nothing, and no answer names versions.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from conftest import AUTH, CHAT, MakeGateway, RunningGateway, gateway_config
from fake_upstream import FakeUpstream

HEADER_TIMEOUT_S = 1.0
GRACE_S = 2.0  # the server closes within header_timeout_s + this
MARKER = b"MARKER-7d1e"


@pytest.fixture
async def short_gateway(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    """A gateway whose request line and headers must arrive within one second."""
    return await make_gateway(
        gateway_config(fake_upstream.url, server={"header_timeout_s": HEADER_TIMEOUT_S})
    )


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Every byte the server sends until it closes the connection; a TimeoutError if it keeps it open."""
    received = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def closed_after(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closes the connection."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await read_until_closed(reader, within)
    return loop.time() - start


async def exchange(url: str, raw: bytes, within: float = 5) -> bytes:
    """Send `raw` in one write and return every byte the server sends until it closes the connection."""
    reader, writer = await connect(url)
    try:
        writer.write(raw)
        return await read_until_closed(reader, within)
    finally:
        writer.close()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one raw HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def test_slowloris_sockets_are_closed_while_the_gateway_keeps_answering(
    short_gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    request = b"GET /livez HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"

    async def drip(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)

    connections = await asyncio.gather(*(connect(short_gateway.url) for _ in range(200)))
    drips = [asyncio.create_task(drip(w)) for _, w in connections]
    closings = asyncio.gather(*(closed_after(r, HEADER_TIMEOUT_S + GRACE_S) for r, _ in connections))
    try:
        await asyncio.sleep(0.3)
        async with asyncio.timeout(0.5), http.get(short_gateway.url + "/livez") as response:
            assert response.status == 200
        assert max(await closings) < HEADER_TIMEOUT_S + GRACE_S
    finally:
        closings.cancel()
        for task in drips:
            task.cancel()
        for _, writer in connections:
            writer.close()


async def test_sockets_that_send_nothing_are_closed(short_gateway: RunningGateway) -> None:
    connections = await asyncio.gather(*(connect(short_gateway.url) for _ in range(100)))
    try:
        waits = await asyncio.gather(*(closed_after(r, HEADER_TIMEOUT_S + GRACE_S) for r, _ in connections))
        assert max(waits) < HEADER_TIMEOUT_S + GRACE_S
    finally:
        for _, writer in connections:
            writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    short_gateway: RunningGateway,
) -> None:
    reader, writer = await connect(short_gateway.url)
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, _ = split_response(head)
        assert status == 200
        assert headers.get("connection", "").lower() != "close"
        await reader.readexactly(int(headers["content-length"]))
        waited = await closed_after(reader, HEADER_TIMEOUT_S + GRACE_S)
        assert 0.5 < waited < HEADER_TIMEOUT_S + GRACE_S  # kept alive for a while, not for ever
    finally:
        writer.close()


HOST = b"Host: gateway\r\n"
# Each sent in one write, so that the parser meets the fault before it could hand a request to the app.
UNPARSABLE = {
    "control bytes in a header": (
        400,
        b"GET /livez HTTP/1.1\r\n" + HOST + b"X-Evil: " + MARKER + b"\x00\xff\r\n\r\n",
    ),
    "garbage request line": (400, b"\x16\x01" + MARKER + b" garbage \xfe\r\n" + HOST + b"\r\n"),
    "invalid method": (400, MARKER + b"(): /livez HTTP/1.1\r\n" + HOST + b"\r\n"),
    "header too large": (
        431,
        b"GET /livez HTTP/1.1\r\n" + HOST + b"X-Big: " + MARKER + b"a" * 20_000 + b"\r\n\r\n",
    ),
    "content-length with transfer-encoding": (
        400,
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\nX-Note: " + MARKER + b"\r\n\r\n0\r\n\r\n",
    ),
    "bad chunk size": (
        400,
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz" + MARKER + b"\r\n{}\r\n0\r\n\r\n",
    ),
}


def loud_server_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """aiohttp's own log lines at warning level or above: a hostile client must not be able to cause any."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 30]


@pytest.mark.parametrize(("status", "raw"), UNPARSABLE.values(), ids=UNPARSABLE.keys())
async def test_unparsable_requests_get_a_fixed_json_error_that_echoes_nothing(
    status: int,
    raw: bytes,
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = await exchange(gateway.url, raw)  # returns only once the gateway has closed the connection
    assert MARKER.lower() not in answer.lower()
    answered, headers, body = split_response(answer)
    assert answered == status
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert headers["server"] == "open-llm-proxy"
    assert fake_upstream.requests == []
    assert loud_server_logs(caplog) == []


async def test_every_answer_names_the_server_without_versions(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + "/livez") as ok, http.get(gateway.url + "/nowhere") as missing:
        assert (ok.status, missing.status) == (200, 404)
        servers = [ok.headers["Server"], missing.headers["Server"]]
    preflight_headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with http.options(gateway.url + "/v1/chat/completions", headers=preflight_headers) as preflight:
        assert preflight.status == 204
        servers.append(preflight.headers["Server"])
    _, headers, _ = split_response(await exchange(gateway.url, b"NOT HTTP AT ALL\r\n\r\n"))
    servers.append(headers["server"])
    assert servers == ["open-llm-proxy"] * 4


@pytest.mark.parametrize("encoding", ["br", "bogus", "gzip, gzip", "zstd"])
async def test_a_body_in_an_encoding_the_gateway_cannot_decode_gets_a_json_4xx(
    encoding: str, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding}
    url = gateway.url + "/v1/chat/completions"
    async with http.post(url, data=orjson.dumps(CHAT), headers=headers) as response:
        assert 400 <= response.status < 500
        assert response.content_type == "application/json"
        assert response.headers["Server"] == "open-llm-proxy"
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert fake_upstream.requests == []


async def test_a_body_that_does_not_decode_is_refused_without_a_logged_traceback(
    gateway: RunningGateway, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"not gzip at all"
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    head = b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST
    head += b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
    raw = head + b"Content-Length: %d\r\n\r\n" % len(garbage) + garbage
    status, _, body = split_response(await exchange(gateway.url, raw))
    assert 400 <= status < 500
    assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert fake_upstream.requests == []
    await asyncio.sleep(0.1)  # aiohttp meets the bad body again when it drains it, after the answer
    assert loud_server_logs(caplog) == []


def dechunked(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body decoded, its framing checked: each size line, each chunk's end, the last."""
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", f"bytes after the last chunk: {body[:80]!r}"
            return out
        assert body[size : size + 2] == b"\r\n", "a chunk not ended where its size says"
        out, body = out + body[:size], body[size + 2 :]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_a_stream_is_framed_for_the_clients_http_version(
    gateway: RunningGateway, fake_upstream: FakeUpstream, version: str
) -> None:
    """HTTP/1.1 gets chunks whose sizes add up; HTTP/1.0 gets the events as they are, ended by the close."""
    body = orjson.dumps({**CHAT, "stream": True})
    head = f"POST /v1/chat/completions HTTP/{version}\r\n".encode() + HOST
    head += b"".join(f"{name}: {value}\r\n".encode() for name, value in AUTH.items())
    connection = b"Connection: close\r\n" if version == "1.1" else b""
    raw = head + connection + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, headers, received = split_response(await exchange(gateway.url, raw + body))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    if version == "1.1":
        assert headers["transfer-encoding"] == "chunked"
        received = dechunked(received)
    else:
        assert "transfer-encoding" not in headers and "content-length" not in headers
    events = [e for e in received.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "Hello from the fake upstream."
