"""Fidelity: the upstream gets what the client sent (its exact bytes when nothing needs changing), and the
client gets what the upstream answered, errors included, in OpenAI shape and without secrets."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from conftest import AUTH, CHAT, PROVIDER_KEY, MakeGateway, RunningGateway, gateway_config
from conftest import provider_section as section
from fake_upstream import FakeUpstream, Reply

EVERYTHING: dict[str, Any] = {
    "model": "fake-model",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Berkeley?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "seed": 42,
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 64,
    "stop": ["\n\n"],
    "user": "session-7",
    "metadata": {"run": "x"},
    "vendor_thing": {"nested": [1, 2.5, None, "é"]},
    "min_p": 0.05,
}


@pytest.mark.parametrize("stream", [False, True])
async def test_every_field_reaches_the_upstream_as_the_clients_exact_bytes(
    stream: bool, gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**EVERYTHING, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    # Unusual but valid JSON spelling: only forwarding the bytes themselves keeps it.
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2).replace(b"\xc3\xa9", b"\\u00e9")
    async with http.post(gateway.url + "/v1/chat/completions", data=raw, headers=AUTH) as response:
        assert response.status == 200
        await response.read()
    assert fake_upstream.requests[0]["raw"] == raw


async def test_when_the_gateway_must_change_the_body_it_changes_only_that(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**EVERYTHING, "stream": True}  # no stream_options: the gateway asks for usage itself
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        await response.read()
    assert fake_upstream.requests[0]["body"] == {**body, "stream_options": {"include_usage": True}}
    body = {**EVERYTHING, "stream": True, "stream_options": {"include_usage": False, "continuous": True}}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        await response.read()
    assert fake_upstream.requests[1]["body"]["stream_options"] == {"include_usage": True, "continuous": True}


async def test_no_sampling_params_models_lose_temperature_and_top_p_and_nothing_else(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    providers = {
        "fake": section(fake_upstream.url, models=["fake-model", "strict"], no_sampling_params=["strict"])
    }
    gateway = await make_gateway(gateway_config(fake_upstream.url, providers=providers))
    for model in ("strict", "fake-model"):
        async with http.post(
            gateway.url + "/v1/chat/completions", json={**EVERYTHING, "model": model}, headers=AUTH
        ) as response:
            assert response.status == 200
    stripped, kept = (r["body"] for r in fake_upstream.requests)
    expected = {k: v for k, v in EVERYTHING.items() if k not in ("temperature", "top_p")}
    assert stripped == {**expected, "model": "strict"}
    assert kept == EVERYTHING


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, b'{"error":{"message":"context is 8192 tokens","type":"invalid_request_error","code":null}}'),
        (404, b'{"error": {"message": "The model `x` does not exist", "type": "invalid_request_error"}}'),
        (
            422,
            b'{"error": {"message": "Unprocessable", "type": "BadRequestError", "param": "n", "code": 422}}',
        ),
    ],
)
async def test_upstream_errors_in_openai_shape_come_back_exactly(
    status: int,
    error: bytes,
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    fake_upstream.queue(Reply(status=status, error=error))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        assert await response.read() == error
    assert gateway.recorder.responses()[0].error is not None


@pytest.mark.parametrize(
    ("status", "error", "message", "kind"),
    [
        (422, b'{"detail": "messages: field required"}', "messages: field required", "invalid_request_error"),
        (413, b"<html>Request Entity Too Large</html>", "<html>Request Entity Too Large</html>", None),
        (403, b'{"error": "Forbidden: no such model"}', "Forbidden: no such model", "permission_error"),
        (418, b" ", "upstream answered HTTP 418", "invalid_request_error"),
        (400, b'{"error": {"message": "bad thing"}}', "bad thing", "invalid_request_error"),
    ],
    ids=["fastapi-detail", "html", "string-error", "empty", "error-without-type"],
)
async def test_upstream_errors_in_other_shapes_are_wrapped_keeping_the_providers_words(
    status: int,
    error: bytes,
    message: str,
    kind: str | None,
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    fake_upstream.queue(Reply(status=status, error=error, headers={"Content-Type": "text/html"}))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        body = await response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == message
    if kind:
        assert body["error"]["type"] == kind


async def test_secrets_echoed_by_an_upstream_are_scrubbed_from_errors(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(Reply(status=400, echo_key=True))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 400
        body = await response.json()
    assert PROVIDER_KEY.encode() in fake_upstream.requests[0]["sent"][0]
    assert body["error"]["message"] == "key Bearer [REDACTED] is over quota"
    assert PROVIDER_KEY not in (gateway.recorder.responses()[0].error or "")


async def test_a_successful_answer_is_passed_through_byte_for_byte(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {
        **CHAT,
        "fake": {"reasoning": "first think", "tool_calls": [{"name": "f", "arguments": '{"a":1}'}]},
    }
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert await response.read() == fake_upstream.requests[0]["sent"][0]
    answer = gateway.recorder.responses()[0].answer
    assert answer.reasoning_text == "first think"
    assert answer.tool_call_list() == [{"name": "f", "arguments": '{"a":1}'}]


async def test_useful_upstream_headers_come_back_and_others_do_not(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    headers = {"X-RateLimit-Remaining-Tokens": "99", "Set-Cookie": "upstream=1", "X-Internal-Host": "gpu-7"}
    fake_upstream.queue(Reply(headers=headers))
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["X-RateLimit-Remaining-Tokens"] == "99"
        assert "Set-Cookie" not in response.headers
        assert "X-Internal-Host" not in response.headers
