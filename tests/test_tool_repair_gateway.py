"""Leaked tool calls repaired through the real gateway over loopback, with the openai SDK as the client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import AUTH, PROXY_KEY, MakeGateway, RunningGateway, gateway_config, provider_section
from fake_upstream import FakeUpstream
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from test_tool_repair import DIALECTS, PARIS, UTC, markup

from gateway.config import LoggingSettings
from gateway.logs.records import RecordBuilder

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris, time in UTC?"}]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]},
        },
    }
    for name, arg in (("get_weather", "city"), ("get_time", "zone"))
]
TEXT = "Let me look both up.\n"


@pytest.fixture
async def repairing(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    """A gateway whose provider has repair on for every model (the test provider's default is off)."""
    section = provider_section(fake_upstream.url, repair_tool_calls=True)
    return await make_gateway(gateway_config(fake_upstream.url, providers={"fake": section}))


@pytest.fixture
async def client(repairing: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=repairing.url + "/v1", api_key=PROXY_KEY, max_retries=0, timeout=30
    ) as sdk:
        yield sdk


def parsed(tool_calls: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls or ()]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_whole_answer_with_leaked_calls_reaches_the_sdk_as_tool_calls(
    client: AsyncOpenAI, repairing: RunningGateway, dialect: str
) -> None:
    completion = await client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        tools=TOOLS,
        extra_body={"fake": {"content": TEXT + markup(dialect, PARIS, UTC)}},
    )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == TEXT
    assert parsed(choice.message.tool_calls) == [PARIS, UTC]
    assert all(c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls or ())
    [call] = repairing.recorder.responses()
    assert call.tool_repair is not None and call.tool_repair.report()["dialects"] == [dialect]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_stream_with_markup_in_one_character_chunks_reaches_the_sdk_as_tool_calls(
    client: AsyncOpenAI, repairing: RunningGateway, dialect: str
) -> None:
    content = TEXT + markup(dialect, PARIS, UTC)
    async with client.chat.completions.stream(
        model="fake-model",
        messages=MESSAGES,
        tools=TOOLS,
        extra_body={"fake": {"content": content, "chunks": len(content)}},
    ) as stream:
        text = [e.delta async for e in stream if e.type == "content.delta" and e.delta]
        final = await stream.get_final_completion()
    assert "".join(text) == TEXT and len(text) == len(TEXT)  # the text before the markup came as it was
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls" and parsed(choice.message.tool_calls) == [PARIS, UTC]
    [call] = repairing.recorder.responses()
    records = RecordBuilder(LoggingSettings())
    [request], response = records.request(call), records.response(call, time.time())
    assert request["tool_calls_repaired"] is True
    assert response["tool_calls_repaired"] == {"count": 2, "dialects": [dialect], "left_as_text": 0}
    assert [(t["name"], json.loads(t["arguments"])) for t in response["tool_calls"]] == [PARIS, UTC]
    assert response["content"] == TEXT and response["finish_reason"] == "tool_calls"


async def post(gateway: RunningGateway, body: dict[str, Any]) -> bytes:
    url = gateway.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=AUTH) as response:
        assert response.status == 200
        return await response.read()


def request_body(content: str, *, stream: bool, tools: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "messages": MESSAGES, "fake": {"content": content}}
    if stream:  # usage asked for, so the gateway has no chunk of its own to hold back
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body | {"tools": TOOLS} if tools else body


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_without_markup_passes_as_the_exact_upstream_bytes(
    repairing: RunningGateway, fake_upstream: FakeUpstream, stream: bool
) -> None:
    received = await post(repairing, request_body("Sunny, if a<b and x > y; see <b>this</b>.", stream=stream))
    assert received == b"".join(fake_upstream.requests[-1]["sent"])
    [call] = repairing.recorder.responses()
    assert call.tool_repair is not None and call.tool_repair.report()["count"] == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_to_a_request_without_tools_is_never_touched(
    repairing: RunningGateway, fake_upstream: FakeUpstream, stream: bool
) -> None:
    content = TEXT + markup("hermes", PARIS)
    received = await post(repairing, request_body(content, stream=stream, tools=False))
    assert received == b"".join(fake_upstream.requests[-1]["sent"])
    assert repairing.recorder.responses()[0].tool_repair is None


async def test_markup_naming_a_tool_not_offered_reaches_the_sdk_as_text(client: AsyncOpenAI) -> None:
    content = TEXT + markup("qwen3_coder", ("rm_rf", {"path": "/"}))
    completion = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, tools=TOOLS, extra_body={"fake": {"content": content}}
    )
    assert completion.choices[0].message.content == content and completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None


async def test_nrp_models_are_repaired_by_default_and_other_providers_are_not(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    nrp = {
        "endpoint": f"{fake_upstream.url}/v1/chat/completions",
        "api_key_env": "FAKE_KEY",
        "models": ["kimi"],
    }
    config = gateway_config(
        fake_upstream.url, providers={"nrp": nrp, "fake": provider_section(fake_upstream.url)}
    )
    gateway = await make_gateway(config)
    content = markup("kimi_k2", PARIS)
    repaired = orjson.loads(await post(gateway, request_body(content, stream=False) | {"model": "kimi"}))
    [call] = repaired["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert await post(gateway, request_body(content, stream=True)) == b"".join(
        fake_upstream.requests[-1]["sent"]
    )
