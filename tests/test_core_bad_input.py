"""Bad input gets a clear 4xx in OpenAI's shape, never a 500, and never reaches a provider."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import AUTH, CHAT, MakeGateway, RunningGateway, gateway_config
from conftest import provider_section as section
from fake_upstream import FakeUpstream

MESSAGES = CHAT["messages"]
JSON = {**AUTH, "Content-Type": "application/json"}


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


BAD_BODIES = [
    ("/v1/chat/completions", b"{not json", None),
    ("/v1/chat/completions", b"", None),
    ("/v1/chat/completions", b"\xff\xfe{}", None),
    ("/v1/chat/completions", b"[1, 2]", None),
    ("/v1/chat/completions", b'"just a string"', None),
    ("/v1/chat/completions", _json({"messages": MESSAGES}), "model"),
    ("/v1/chat/completions", _json({"model": "", "messages": MESSAGES}), "model"),
    ("/v1/chat/completions", _json({"model": "   ", "messages": MESSAGES}), "model"),
    ("/v1/chat/completions", _json({"model": 7, "messages": MESSAGES}), "model"),
    ("/v1/chat/completions", _json({"model": ["fake-model"], "messages": MESSAGES}), "model"),
    ("/v1/chat/completions", _json({"model": "fake-model"}), "messages"),
    ("/v1/chat/completions", _json({"model": "fake-model", "messages": []}), "messages"),
    ("/v1/chat/completions", _json({"model": "fake-model", "messages": "hello"}), "messages"),
    ("/v1/chat/completions", _json({"model": "fake-model", "messages": ["hello"]}), "messages"),
    ("/v1/chat/completions", _json({"model": "fake-model", "messages": [{"content": "hi"}]}), "messages"),
    ("/v1/chat/completions", _json({**CHAT, "stream": "yes"}), "stream"),
    ("/chat", _json({"model": "fake-model", "messages": None}), "messages"),
    ("/v1/completions", _json({"model": "fake-model"}), "prompt"),
    ("/v1/completions", _json({"model": "fake-model", "prompt": ""}), "prompt"),
    ("/v1/embeddings", _json({"model": "fake-model", "input": []}), "input"),
    ("/v1/embeddings", _json({"input": "text"}), "model"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_BODIES)
async def test_malformed_or_incomplete_bodies_get_a_clear_400(
    path: str,
    body: bytes,
    param: str | None,
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(gateway.url + path, data=body, headers=JSON) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert fake_upstream.requests == []
    assert [c.status for c in gateway.recorder.responses()] == [400]


async def test_a_body_over_the_limit_gets_413(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(gateway_config(fake_upstream.url, server={"max_body_bytes": 2048}))
    small = {**CHAT, "messages": [{"role": "user", "content": "x" * 1000}]}
    async with http.post(gateway.url + "/v1/chat/completions", json=small, headers=AUTH) as response:
        assert response.status == 200
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with http.post(gateway.url + "/v1/chat/completions", json=big, headers=AUTH) as response:
        assert response.status == 413
        error = (await response.json())["error"]
    assert error["code"] == "request_too_large"
    assert "2048" in error["message"]
    assert len(fake_upstream.requests) == 1


async def test_an_unknown_model_without_default_provider_is_404_naming_the_served_models(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "model": "gpt-unknown"}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "gpt-unknown" in error["message"]
    assert "fake-model" in error["message"]
    assert "fake/*" in error["message"]
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("PUT", "/v1/chat/completions", 405),
        ("DELETE", "/chat", 405),
        ("GET", "/llm", 405),
        ("POST", "/health", 405),
        ("POST", "/v1/models", 405),
        ("GET", "/v1/chat/completion", 404),
        ("POST", "/v2/chat/completions", 404),
        ("GET", "/", 404),
        ("GET", "/v1/models/fake-model/extra", 404),
    ],
)
async def test_unknown_routes_and_wrong_methods_are_openai_shaped_errors(
    method: str, path: str, status: int, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.request(method, gateway.url + path, json=CHAT, headers=AUTH) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert path in error["message"]


async def test_a_provider_without_an_endpoint_is_503_not_500(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # Nimbus without NIMBUS_ENDPOINT: configured in name only.
    raw_config = gateway_config(fake_upstream.url, providers={"nimbus": {"models": ["nim"]}})
    gateway = await make_gateway(raw_config, env={})
    body = {**CHAT, "model": "nim"}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "provider_not_configured"


async def test_a_provider_without_its_key_is_503_naming_the_variable_and_never_contacted(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw_config = gateway_config(
        fake_upstream.url,
        providers={
            "fake": section(fake_upstream.url),
            "open": section(fake_upstream.url, api_key_env=None, models=["open-model"], model_prefixes=[]),
        },
    )
    gateway = await make_gateway(raw_config, env={})  # FAKE_KEY unset
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "provider_key_missing" and "FAKE_KEY" in error["message"]
    assert fake_upstream.requests == []
    body = {**CHAT, "model": "open-model"}  # a provider that says it needs no key is called as before
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
    assert len(fake_upstream.requests) == 1


async def _raw_http(url: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send bytes no well-behaved client library would; return the status and the response body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    length = b"Content-Length: %d\r\n" % len(body)
    writer.write(head + length + b"Connection: close\r\n\r\n" + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_an_authorization_header_that_is_not_utf8_is_401_not_500(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
    status, body = await _raw_http(gateway.url, head, orjson.dumps(CHAT))
    assert status == 401
    assert orjson.loads(body)["error"]["type"] == "authentication_error"
    assert fake_upstream.requests == []


async def test_a_body_that_cannot_be_decoded_is_400_not_500(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gzipped = {**JSON, "Content-Encoding": "gzip"}
    # aiohttp closes a connection whose body it could not decode; `close` keeps the client from reusing it.
    broken = {**gzipped, "Connection": "close"}
    async with http.post(gateway.url + "/v1/chat/completions", data=b"not gzip", headers=broken) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    # A body that really is gzip is read as usual.
    body = gzip.compress(orjson.dumps(CHAT))
    async with http.post(gateway.url + "/v1/chat/completions", data=body, headers=gzipped) as response:
        assert response.status == 200
    assert fake_upstream.requests[0]["body"] == CHAT
