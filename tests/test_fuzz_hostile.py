"""Hostile clients and hostile upstreams, fuzzed together: whatever arrives, the gateway answers in OpenAI's
shape, writes both records of the call, and lets no key out in any spelling.

One gateway (with the real log writer) and one scripted upstream serve every example; each example picks a
request (path, body, headers, key) and the upstream's reply to it. Requests go out through a raw socket
writer, because aiohttp's client refuses to send the header bytes a hostile client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import io
import json
import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from aiohttp import web
from conftest import serving
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.config import parse_config

# Keys with the characters that JSON and URL encoding rewrite, so a scrubber that only knows the raw
# spelling misses them.
PROVIDER_KEY = 'upk"9Q\\x/7+Lm=Zt2-fuzz'
PROXY_KEY = 'pxk"4R\\b/2+Wn=Yq8-fuzz'
EXAMPLES = 1000  # per group of properties: about 60 s in all on a 2-core machine while every property holds
READ_TIMEOUT_S = 20.0  # longer than the gateway's call deadline below


def spellings(secret: str) -> tuple[str, ...]:
    """Every way a key may be written out: as is, JSON-escaped four ways, URL-encoded four ways."""
    escaped = json.dumps(secret)[1:-1]
    quoted = quote(secret, safe="")
    forms = {
        secret,
        escaped,
        escaped.replace("/", "\\/"),
        "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in secret),
        "".join(c if c.isalnum() else f"\\u{ord(c):04X}" for c in secret),
        quoted,
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quoted),
        quote_plus(secret),
        quote(secret),
    }
    return tuple(sorted(forms))


SPELLINGS = spellings(PROVIDER_KEY) + spellings(PROXY_KEY)
SECRET_BYTES = tuple(s.encode() for s in SPELLINGS)


def short(data: bytes, keep: int = 160) -> str:
    return repr(data) if len(data) <= keep else f"{data[:keep]!r}... ({len(data)} bytes)"


@dataclass(frozen=True)
class Reply:
    """What the scripted upstream answers, to every attempt of the current example."""

    status: int = 200
    content_type: str = "application/json"
    parts: tuple[bytes, ...] = (b"{}",)
    encoding: str = "identity"  # gzip, or bad-gzip: the header without compressed bytes
    abort: bool = False  # cut the connection after the parts
    headers: tuple[tuple[str, str], ...] = ()

    def wire_parts(self) -> tuple[bytes, ...]:
        if self.status in (204, 304):
            return ()
        return (gzip.compress(b"".join(self.parts)),) if self.encoding == "gzip" else self.parts


@dataclass(frozen=True)
class Case:
    """One example: the client's request and the upstream's reply."""

    path: bytes
    auth: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool
    reply: Reply

    def wire(self) -> bytes:
        lines = [b"POST " + self.path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        lines += [b"Content-Type: application/json", *(name + b": " + value for name, value in self.headers)]
        lines += [b"Authorization: " + self.auth] if self.auth is not None else []
        body = self.body
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        else:
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


# ---------------------------------------------------------------------------------------------- requests
def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` about three times in four; shrinking goes towards it. (`one_of` would not weight repeats.)"""
    return st.sampled_from([True, True, True, False]).flatmap(lambda pick: usual if pick else odd)


def fragment(value: Any) -> bytes:
    return json.dumps(value).encode()


TEXT = st.text(max_size=20)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
HOSTILE = st.one_of(
    st.integers(1, 300).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 300).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    st.integers(0, 3_000_000).map(lambda n: b'"' + b"x" * n + b'"'),
    st.sampled_from([b'"\\ud800"', b'"a\\udfff b"', b'"\\ud83d\\ude00"', b"NaN", b"1e999", b"-0"]),
    st.binary(min_size=1, max_size=6).map(lambda b: b'"' + re.sub(b'["\\\\]', b"", b) + b'"'),
    st.sampled_from(SPELLINGS).map(lambda s: fragment(f"my key is {s}")),  # a pasted key
)
VALUE = st.one_of(JSON_VALUES.map(fragment), HOSTILE)
ROLE = st.sampled_from(["user", "system", "assistant", "tool"]).map(fragment)
CONTENT = mostly(TEXT.map(fragment), VALUE)
MESSAGE = st.builds(lambda r, c: b'{"role":%s,"content":%s}' % (r, c), ROLE, CONTENT)
ODD_MESSAGE = st.builds(lambda r, c: b'{"role":%s,"content":%s}' % (r, c), VALUE, CONTENT) | VALUE
MESSAGE_LISTS = mostly(st.lists(MESSAGE, min_size=1, max_size=3), st.lists(MESSAGE | ODD_MESSAGE, max_size=3))
MESSAGES = mostly(MESSAGE_LISTS.map(lambda ms: b"[" + b",".join(ms) + b"]"), VALUE)
MODEL = mostly(st.sampled_from(["fake-model", "fake/odd", "made-up"]).map(fragment), VALUE)
CLEAN_BODIES = st.builds(
    lambda model, messages, stream: b'{"model":%s,"messages":[%s],"stream":%s}' % (model, messages, stream),
    st.sampled_from(["fake-model", "fake/odd"]).map(fragment),
    st.lists(
        st.builds(lambda r, c: b'{"role":%s,"content":%s}' % (r, fragment(c)), ROLE, TEXT),
        min_size=1,
        max_size=3,
    ).map(b",".join),
    st.sampled_from([b"false", b"true"]),
)
STREAM = mostly(st.sampled_from([b"false", b"true"]), st.sampled_from([b'"yes"', b"1", b"null"]))
EXTRA_KEYS = [b"model", b"messages", b"stream", b"user", b"stream_options", b"enable_thinking", b"prompt"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A chat body built from JSON fragments, so keys can repeat and strings can hold what JSON forbids."""
    entries = [(b"model", draw(MODEL)), (b"messages", draw(MESSAGES)), (b"prompt", draw(CONTENT))]
    entries += [(b"stream", draw(STREAM))] if draw(st.booleans()) else []
    entries += draw(mostly(st.just([]), st.lists(st.tuples(st.sampled_from(EXTRA_KEYS), VALUE), max_size=2)))
    body = b"{" + b",".join(b'"%s":%s' % pair for pair in entries) + b"}"
    mutation = draw(st.sampled_from(["none"] * 8 + ["truncate", "replace"]))
    if mutation == "truncate":
        return body[: draw(st.integers(0, len(body)))]
    return draw(VALUE | st.binary(max_size=64)) if mutation == "replace" else body


PARSEABLE = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]  # what HTTP allows in a value, obs-text included
HEADER_VALUE = mostly(
    st.one_of(
        st.sampled_from([b"s-1", b"https://app.example", b"curl/8"]),
        st.lists(st.sampled_from(PARSEABLE), max_size=24).map(bytes),
        st.integers(0, 12_000).map(lambda n: b"v" * n),
    ),
    st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),  # control characters
)
HEADER_NAMES = [b"X-Session-Id", b"X-Client", b"Origin", b"Referer", b"User-Agent"]
HEADER = st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUE)
HEADERS = mostly(st.lists(HEADER, max_size=4, unique_by=lambda h: h[0]), st.lists(HEADER, max_size=4)).map(
    tuple
)
KEY = PROXY_KEY.encode()
AUTHS = mostly(
    st.just(b"Bearer " + KEY),
    st.sampled_from(
        [None, b"Bearer wrong", b"Basic abc", b"Bearer " + KEY + b"\xff", b"bearer  " + KEY, b""]
    ),
)
PATHS = mostly(st.just(b"/v1/chat/completions"), st.sampled_from([b"/chat", b"/v1/completions", b"/llm"]))

# ---------------------------------------------------------------------------------------------- replies
CHUNKS = st.sampled_from(
    [
        b'{"id":"c1","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
        *(b"1", b'"s"', b"[]", b"null", b"{broken", b"[DONE]", b"\xff\xfe", b'{"id":5}'),
        *(b'{"choices":5}', b'{"choices":[5]}', b'{"choices":[{"delta":5}]}', b'{"choices":[{"index":"0"}]}'),
        b'{"choices":[{"delta":{"content":5,"reasoning_content":[1]},"finish_reason":5}]}',
        b'{"choices":[{"delta":{"tool_calls":5}}]}',
        b'{"choices":[{"delta":{"tool_calls":[5,{"index":[],"function":{"name":5,"arguments":{}}}]}}]}',
        b'{"choices":[],"usage":5}',
        b'{"choices":[],"usage":{"prompt_tokens":"x","completion_tokens":[],"cost":"1"}}',
    ]
)
ECHOED = st.sampled_from(SPELLINGS).map(lambda s: b'{"choices":[{"delta":{"content":%s}}]}' % fragment(s))
EVENT = st.builds(
    lambda prefix, data, end: prefix + data + end,
    st.sampled_from([b"data: ", b"data:", b": keep-alive\ndata: ", b"event: x\ndata: ", b""]),
    st.one_of(CHUNKS, ECHOED, JSON_VALUES.map(fragment), st.integers(0, 2_000_000).map(lambda n: b"x" * n)),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n", b""]),
)
BODIES = st.sampled_from(
    [
        b'{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{}}',
        *(b'{"choices":5}', b'{"choices":"abc"}', b'{"choices":[{"message":"x"}]}', b'{"choices":[]}'),
        b'{"choices":[{"message":{"content":5,"tool_calls":[5]}}],"usage":5,"id":[1]}',
        *(b"[1,2]", b'"text"', b"", b"<html>oops</html>", b"\xff\xfe\x00", b'{"detail":[1]}'),
        *(b'{"error":"str"}', b'{"error":{"message":5,"type":[]}}', b'{"error":{"message":"m","type":"t"}}'),
    ]
)
TEMPLATES = [b'{"error":{"message":"bad key %s","type":"auth"}}', b'{"detail":"bad key %s"}', b"key=%s"]
ECHO_BODIES = st.builds(lambda t, s: t % s.encode(), st.sampled_from(TEMPLATES), st.sampled_from(SPELLINGS))
STATUSES = [200, 400, 401, 404, 422, 429, 500, 502, 503, 504, 301, 302, 303, 307, 308, 300, 304, 204, 418]
ODD_HEADERS = st.one_of(
    st.sampled_from([("Location", "/v1/chat/completions"), ("Location", "/elsewhere"), ("Retry-After", "0")]),
    st.sampled_from(SPELLINGS).map(lambda s: ("x-ratelimit-note", s)),
)


@st.composite
def splits(draw: st.DrawFn, events: list[bytes]) -> tuple[bytes, ...]:
    """The stream cut into writes at arbitrary points, so events and line ends straddle chunk boundaries."""
    data = b"".join(events)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=4))))
    return tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a)


STREAM_REPLIES = st.builds(
    Reply,
    status=mostly(st.just(200), st.sampled_from(STATUSES)),
    content_type=st.sampled_from(["text/event-stream", "text/event-stream; charset=utf-8"]),
    parts=st.lists(EVENT, max_size=5).flatmap(splits),
    encoding=mostly(st.just("identity"), st.sampled_from(["gzip", "bad-gzip"])),
    abort=mostly(st.just(False), st.just(True)),
    headers=st.lists(ODD_HEADERS, max_size=2).map(tuple),
)
BODY_REPLIES = st.builds(
    Reply,
    status=st.sampled_from(STATUSES),
    content_type=st.sampled_from(["application/json", "text/plain", "text/html", "text/event-stream"]),
    parts=st.one_of(BODIES, ECHO_BODIES).map(lambda b: (b,)),
    encoding=mostly(st.just("identity"), st.sampled_from(["gzip", "bad-gzip"])),
    abort=mostly(st.just(False), st.just(True)),
    headers=st.lists(ODD_HEADERS, max_size=2).map(tuple),
)
CASES = st.builds(
    Case,
    PATHS,
    AUTHS,
    HEADERS,
    CLEAN_BODIES | bodies(),  # half the calls well-formed, so that the upstream's replies get their turn
    mostly(st.just(False), st.just(True)),
    BODY_REPLIES | STREAM_REPLIES,
)


# ---------------------------------------------------------------------------------------------- the harness
class _Bytes:
    """Just enough of a socket for `http.client` to parse an answer already received."""

    def __init__(self, data: bytes) -> None:
        self.file = io.BytesIO(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.file


@dataclass
class Received:
    """One raw HTTP/1.1 answer, taken apart; `complete` when its framing says every byte arrived."""

    raw: bytes
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Received:
        response = http.client.HTTPResponse(_Bytes(raw))  # type: ignore[arg-type]
        try:
            response.begin()
        except (http.client.HTTPException, ValueError):
            return cls(raw)
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        headers = {name.lower(): value for name, value in response.getheaders()}
        if headers.get("content-encoding") == "gzip":
            with contextlib.suppress(OSError, EOFError, zlib.error):
                body = gzip.decompress(body)
        return cls(raw, response.status, headers, body, complete)


async def send_raw(port: int, request: bytes) -> Received:
    """Write the request in one go, then read until the gateway closes (or the read timeout passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks = []
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT_S):
                while data := await reader.read(1 << 16):
                    chunks.append(data)
    finally:
        writer.close()
    return Received.parse(b"".join(chunks))


class ScriptedUpstream:
    """Answers every request, on any path, with the reply the current example chose."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.statuses: list[int] = []
        self.app = web.Application(client_max_size=64 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        reply = self.reply
        self.statuses.append(reply.status)
        headers = {"Content-Type": reply.content_type, **dict(reply.headers)}
        if reply.encoding != "identity":
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(status=reply.status, headers=headers)
        await response.prepare(request)
        for part in reply.wire_parts():
            await response.write(part)
        if reply.abort and request.transport is not None:
            request.transport.abort()
            return response
        await response.write_eof()
        return response


class SpoolReader:
    """Reads what the log writer appended since the last look; indexes records by request id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.offsets: dict[Path, int] = defaultdict(int)
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def read_new(self) -> bytes:
        new = []
        for path in sorted(self.root.glob("*/*.jsonl*")):
            with path.open("rb") as f:
                f.seek(self.offsets[path])
                data = f.read()
            data = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            self.offsets[path] += len(data)
            new.append(data)
        for line in b"".join(new).splitlines():
            record = orjson.loads(line)
            self.records[str(record.get("request_id"))].append(record)
        return b"".join(new)


def gateway_config(upstream_url: str, spool: Path) -> dict[str, Any]:
    """Small limits, so that a hostile upstream costs each example seconds at most."""
    provider = {"endpoint": f"{upstream_url}/v1/chat/completions", "api_key_env": "FAKE_KEY"}
    upstream = {"retries": 1, "retry_backoff_s": 0.01, "retry_max_wait_s": 0.05, "idle_timeout_s": 2}
    upstream |= {"first_byte_timeout_s": 5, "call_deadline_s": 10, "max_event_bytes": 1 << 20}
    logging = {"stdout": False, "spool_dir": str(spool), "flush_interval_s": 3600, "capture": "full"}
    return {
        "default_provider": "fake",
        "providers": {"fake": {**provider, "models": ["fake-model"], "model_prefixes": ["fake/"]}},
        "upstream": upstream | {"max_body_bytes": 4 << 20},
        "server": {"max_body_bytes": 2 << 20},
        "logging": logging | {"chunk_max_bytes": 1 << 30},  # one chunk file: the reader keeps offsets
    }


@dataclass
class Exchange:
    """One example played out: the case, the answer, the call's records, the spool bytes written meanwhile."""

    case: Case
    got: Received
    records: list[dict[str, Any]]
    spool: bytes
    upstream_statuses: list[int]


@dataclass
class Harness:
    upstream: ScriptedUpstream
    spool: SpoolReader
    port: int

    async def exchange(self, case: Case) -> Exchange:
        """Set the upstream's reply, send the request, and collect what came of it."""
        self.upstream.reply, self.upstream.statuses = case.reply, []
        got = await send_raw(self.port, case.wire())
        rid = got.headers.get("x-request-id")
        written = self.spool.read_new()
        for _ in range(5 if rid else 0):  # both records are written before the connection closes: a margin
            if len(self.spool.records.get(rid or "", ())) >= 2:
                break
            await asyncio.sleep(0.01)
            written += self.spool.read_new()
        records = self.spool.records.get(rid or "", [])
        return Exchange(case, got, records, written, self.upstream.statuses)


def fuzz(tmp_path: Path, check: Callable[[Exchange], None]) -> None:
    """Run `check` on EXAMPLES cases against one gateway (real log writer) and one scripted upstream."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        upstream = ScriptedUpstream()
        upstream_url = runner.run(stack.enter_async_context(serving(upstream.app)))
        raw = gateway_config(upstream_url, tmp_path / "spool")
        env = {"FAKE_KEY": PROVIDER_KEY, "PROXY_KEY": PROXY_KEY, "LOG_SPOOL_DIR": str(tmp_path / "spool")}
        app = create_app(parse_config(raw), keys=KeyRing.from_env({"PROXY_KEY": PROXY_KEY}), env=env)
        gateway_url = runner.run(stack.enter_async_context(serving(app)))
        harness = Harness(upstream, SpoolReader(tmp_path / "spool"), int(gateway_url.rsplit(":", 1)[1]))

        @seed(zlib.crc32(check.__name__.encode()))  # fixed, and different for each group of properties
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
        )
        @given(case=CASES)
        def one_example(case: Case) -> None:
            played = runner.run(harness.exchange(case))
            got = played.got
            note(f"answer: {got.status} {got.headers} {short(got.body, 400)}")
            note(f"upstream statuses: {played.upstream_statuses}")
            note(f"records: {short(orjson.dumps(played.records), 600)}")
            check(played)

        try:
            one_example()
        finally:
            runner.run(stack.aclose())


def openai_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of an OpenAI-shaped error body (text `message` and `type`), or None."""
    with contextlib.suppress(orjson.JSONDecodeError):
        error = orjson.loads(body).get("error") if body.startswith(b"{") else None
        if isinstance(error, dict) and all(isinstance(error.get(k), str) for k in ("message", "type")):
            return error
    return None


# What the HTTP edge answers to a request its parser refuses: no route ran, so there is no call to record.
EDGE_CODES = {"bad_request", "request_header_fields_too_large", "unsupported_content_encoding"}


def refused_at_the_edge(played: Exchange) -> bool:
    error = openai_error(played.got.body)
    return error is not None and error.get("code") in EDGE_CODES and not played.upstream_statuses


# Four groups of properties, each searched on its own, so that one failing property does not hide the others
# (Hypothesis stops looking for new failures soon after its first). Within a group each property fails from a
# line of its own, so each is shrunk to a minimal example of its own.
def check_answers(played: Exchange) -> None:
    got, upstream = played.got, played.upstream_statuses
    assert got.status, "the gateway sent no HTTP answer"
    assert got.complete, "the answer was cut short"
    error = openai_error(got.body)
    assert got.status < 400 or error is not None, "an error answer not in OpenAI's shape"
    if got.status >= 500 and error is not None:
        passed_on = bool(upstream) and got.status == upstream[-1] and error.get("code") != "internal_error"
        bad_upstream = got.status in (502, 504) and error["type"] == "upstream_error"
        assert passed_on or bad_upstream, "a 5xx of the gateway's own making"


def check_request_ids(played: Exchange) -> None:
    assert played.got.headers.get("x-request-id"), "no X-Request-Id on the answer"


def check_records(played: Exchange) -> None:
    if not played.got.headers.get("x-request-id"):
        return  # check_request_ids reports that
    if refused_at_the_edge(played):
        assert played.records == [], "an edge refusal has records: then it was a call and needs both"
        return
    kinds = sorted(str(r.get("type")) for r in played.records if r.get("type") != "system_prompt")
    assert kinds == ["request", "response"], "not exactly one request and one response record"
    assert all({"request_id", "model"} <= r.keys() for r in played.records), "a record lacks request_id/model"
    response = next(r for r in played.records if r["type"] == "response")
    assert response.get("status") == played.got.status, "the response record's status is not the one answered"


def check_keys(played: Exchange) -> None:
    got = played.got
    client_leaks = [s for s in SECRET_BYTES if s in got.raw or s in got.body]
    assert not client_leaks or got.status >= 400, f"a key reached the client in an answer: {client_leaks}"
    assert not client_leaks, f"a key reached the client in an error answer: {client_leaks}"
    assert not [s for s in SECRET_BYTES if s in played.spool], "a key reached the spool"


# Hypothesis may shrink failures for up to 300 s on top of the examples.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "check", [check_answers, check_request_ids, check_records, check_keys], ids=lambda c: c.__name__
)
def test_hostile_requests_and_replies(tmp_path: Path, check: Callable[[Exchange], None]) -> None:
    fuzz(tmp_path, check)
