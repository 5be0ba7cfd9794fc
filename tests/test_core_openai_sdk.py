"""The openai Python SDK as a real client, `base_url` pointed at the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest
from conftest import PROXY_KEY, RunningGateway
from fake_upstream import FakeUpstream, Reply
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Berkeley?"}]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    # The SDK's own retries are off: retrying is the gateway's job, and these tests look at what it did.
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=PROXY_KEY, max_retries=0, timeout=30) as sdk:
        yield sdk


async def test_a_plain_completion(client: AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    completion = await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert fake_upstream.requests[0]["body"]["messages"] == MESSAGES


async def test_a_streamed_completion_with_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": {"content": "Sunny and mild today"}},
    )
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "Sunny and mild today"
    assert len(text) >= 4  # it arrived in pieces
    assert usage is not None and usage.completion_tokens == 4


async def test_a_streamed_tool_call_is_reassembled_by_the_sdk(client: AsyncOpenAI) -> None:
    arguments = json.dumps({"city": "Berkeley", "unit": "celsius"})
    async with client.chat.completions.stream(
        model="fake-model",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body={"fake": {"content": "", "tool_calls": [{"name": "get_weather", "arguments": arguments}]}},
    ) as stream:
        deltas = [event async for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) >= 2  # the arguments came in several deltas
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Berkeley", "unit": "celsius"}


async def test_a_non_streamed_tool_call(client: AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    arguments = '{"city": "Oakland"}'
    completion = await client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        extra_body={"fake": {"tool_calls": [{"name": "get_weather", "arguments": arguments}]}},
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].type == "function"
    assert (calls[0].function.name, calls[0].function.arguments) == ("get_weather", arguments)
    sent = fake_upstream.requests[0]["body"]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required"


async def test_a_wrong_key_is_an_authentication_error(gateway: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.request_id is not None and len(caught.value.request_id) == 32  # our X-Request-Id


async def test_an_unknown_model_is_not_found(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "fake-model" in caught.value.message


async def test_rate_limits_that_outlast_the_gateways_retries_are_a_rate_limit_error(
    client: AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    limited = Reply(
        status=429,
        error=b'{"error": {"message": "Too many requests", "type": "rate_limit_error", "code": "rl"}}',
    )
    fake_upstream.queue(limited, limited, limited)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert caught.value.code == "rl"
    assert caught.value.message.endswith("Too many requests")
    assert len(fake_upstream.requests) == 3  # the first try and the gateway's two retries


async def test_a_bad_request_is_a_bad_request_error(client: AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fake-model", messages=[])
    assert caught.value.param == "messages"
    assert fake_upstream.requests == []


async def test_an_upstream_400_reaches_the_sdk_as_a_bad_request_error(
    client: AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    error = (
        b'{"error": {"message": "This model\'s maximum context length is 8192 tokens", '
        b'"type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}'
    )
    fake_upstream.queue(Reply(status=400, error=error))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert caught.value.code == "context_length_exceeded"


async def test_models_and_embeddings_through_the_sdk(client: AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert "fake-model" in models
    embedding = await client.embeddings.create(model="fake-model", input=["a", "b"])
    assert len(embedding.data) == 2
