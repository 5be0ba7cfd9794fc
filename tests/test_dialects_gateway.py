"""The Responses and Messages routes over loopback: bytes through unchanged, both records rebuilt, and chat's
guarantees kept (keys, retries, fallbacks, broken and oversized streams, deadlines, scrubbing, refusals)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import (
    AUTH,
    PROVIDER_KEY,
    PROXY_KEY,
    MakeGateway,
    RunningGateway,
    gateway_config,
    provider_section,
)
from fake_upstream import FakeUpstream, Reply

from gateway.analyze.cli import main as analyze_main
from gateway.config import LoggingSettings
from gateway.logs.records import RecordBuilder
from gateway.sse import event_data

THINK_AND_CALL = {
    "content": "It is sunny.",
    "reasoning": "The user wants weather.",
    "tool_calls": [{"name": "weather", "arguments": '{"city": "Paris"}'}],
}
RESPONSES = {"model": "fake-model", "input": "Weather in Paris?", "instructions": "Be brief."}
MESSAGES = {
    "model": "fake-model",
    "max_tokens": 100,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
}
BODIES = {"/v1/responses": RESPONSES, "/v1/messages": MESSAGES}
KEY_ONLY = {"x-api-key": PROXY_KEY}


def records(gateway: RunningGateway, capture: str = "summary") -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each call's request and response records, as the log writer would build them."""
    builder = RecordBuilder(LoggingSettings(capture=capture))
    calls = gateway.recorder.responses()
    return [(builder.request(call)[-1], builder.response(call, call.wall_end)) for call in calls]


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(data) for e in raw.split(b"\n\n") if (data := event_data(e))]


def dialect_config(fake_url: str, **upstream: Any) -> dict[str, Any]:
    """`fake-model` on an OpenAI-compatible server, `chat-only` on one that speaks only chat, and `claude-*`
    on the anthropic plugin (chat and messages), all three served by the fake upstream."""
    raw = gateway_config(fake_url)
    raw["providers"]["fake"]["thinking_models"] = {"fake-model": "enable_thinking"}
    raw["providers"]["plain"] = provider_section(
        fake_url, models=["chat-only"], model_prefixes=[], dialects=["chat"]
    )
    raw["providers"]["claude"] = {
        "plugin": "anthropic",
        "endpoint": f"{fake_url}/v1/messages",
        "api_key_env": "FAKE_KEY",
        "model_prefixes": ["claude-"],
    }
    raw["upstream"].update(upstream)
    return raw


@pytest.fixture
async def gateway(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    return await make_gateway(dialect_config(fake_upstream.url))


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
@pytest.mark.parametrize("stream", [True, False])
async def test_answers_pass_through_unchanged_and_both_records_hold_the_rebuilt_answer(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession, path: str, stream: bool
) -> None:
    body = {**BODIES[path], "stream": stream, "user": "s-1", "enable_thinking": True}
    fake_upstream.queue(Reply(**THINK_AND_CALL))
    async with http.post(gateway.url + path, json=body, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    [sent] = fake_upstream.requests
    assert received == b"".join(sent["sent"])  # every byte, pings and `event:` lines included
    assert sent["path"] == path and "stream_options" not in sent["body"]
    assert sent["body"]["chat_template_kwargs"] == {"enable_thinking": True}  # vLLM's switch
    if stream:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert b"event: " in received and (b"event: ping" in received) == (path == "/v1/messages")
    [(request, answer)] = records(gateway)
    dialect = path.removeprefix("/v1/")
    assert request["endpoint"] == answer["endpoint"] == dialect
    assert (request["session_id"], request["message_count"], request["enable_thinking"]) == ("s-1", 2, True)
    assert request["user_question"] == request["user_message_this_turn"] == "Weather in Paris?"
    assert answer["content"] == "It is sunny." and answer["reasoning_content"] == "The user wants weather."
    [call] = answer["tool_calls"]
    assert call["name"] == "weather" and orjson.loads(call["arguments"]) == {"city": "Paris"}
    assert answer["finish_reason"] == {"responses": "completed", "messages": "tool_use"}[dialect]
    tokens = answer["tokens"]
    assert tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] == 7  # what the fake counts
    assert (answer["ttft_ms"] is not None) == stream and answer["unreadable_chunks"] == 0


async def test_full_capture_keeps_the_conversation_as_chat_messages_with_the_prompt_by_hash(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    tool_turn = [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
    ]
    body = {**MESSAGES, "messages": [*MESSAGES["messages"], *tool_turn]}
    async with http.post(gateway.url + "/v1/messages", json=body, headers=AUTH) as response:
        assert response.status == 200
    [(request, _)] = records(gateway, capture="full")
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "tool"]
    assert request["system_prompt_sha256"] and "content" not in request["messages"][0]
    assert request["tool_results_this_turn"] == [
        {"tool_call_id": "t1", "name": "weather", "content": "sunny"}
    ]


async def test_count_tokens_is_routed_and_recorded_without_an_answer(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    path = "/v1/messages/count_tokens"
    async with http.post(gateway.url + path, json=MESSAGES, headers=KEY_ONLY) as response:
        assert response.status == 200 and await response.json() == {"input_tokens": 6}
    assert fake_upstream.requests[0]["path"] == path
    [(request, answer)] = records(gateway)
    assert request["endpoint"] == answer["endpoint"] == "messages.count_tokens"
    assert answer["tokens"] is None and answer["cost"] is None


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages", "/v1/messages/count_tokens"])
async def test_the_proxy_key_is_accepted_as_x_api_key_and_never_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession, path: str
) -> None:
    body = BODIES.get(path, MESSAGES)
    for headers in (KEY_ONLY, AUTH, {**KEY_ONLY, **AUTH}):
        async with http.post(gateway.url + path, json=body, headers=headers) as response:
            assert response.status == 200
    for headers, said in (({}, "x-api-key"), ({"x-api-key": "wrong"}, "Incorrect API key")):
        async with http.post(gateway.url + path, json=body, headers=headers) as response:
            assert response.status == 401 and said in (await response.json())["error"]["message"]
    assert len(fake_upstream.requests) == 3
    for sent in fake_upstream.requests:
        assert "x-api-key" not in {k.lower() for k in sent["headers"]}
        assert sent["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
        assert PROXY_KEY.encode() not in orjson.dumps(sent["headers"])
    assert [r[0]["key_name"] for r in records(gateway)] == ["default"] * 3 + [None, None]


async def test_chat_completions_still_reads_only_authorization(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(gateway.url + "/v1/chat/completions", json=chat, headers=KEY_ONLY) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("path", "model", "speaks"),
    [
        ("/v1/messages", "chat-only", "chat"),
        ("/v1/responses", "chat-only", "chat"),
        ("/v1/responses", "claude-x", "chat, messages"),
    ],
)
async def test_a_dialect_the_provider_does_not_speak_is_a_400_naming_the_ones_it_does(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    path: str,
    model: str,
    speaks: str,
) -> None:
    body = {**RESPONSES, **MESSAGES, "model": model}
    async with http.post(gateway.url + path, json=body, headers=AUTH) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "unsupported_dialect" and error["message"].endswith(f"it speaks: {speaks}.")
    assert fake_upstream.total_hits == 0
    [(_, answer)] = records(gateway)
    assert answer["status"] == 400 and "does not speak" in answer["error"]


async def test_the_anthropic_plugin_sends_its_key_its_version_and_the_clients_beta_header(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**MESSAGES, "model": "claude-x", "enable_thinking": True}
    headers = {**KEY_ONLY, "anthropic-beta": "interleaved-thinking-2025-05-14"}
    async with http.post(gateway.url + "/v1/messages", json=body, headers=headers) as response:
        assert response.status == 200
    [sent] = fake_upstream.requests
    assert sent["headers"]["x-api-key"] == PROVIDER_KEY and "Authorization" not in sent["headers"]
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent["body"]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "enable_thinking" not in sent["body"] and "chat_template_kwargs" not in sent["body"]


async def test_failures_are_retried_then_fall_back_to_a_model_that_speaks_the_dialect(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = dialect_config(fake_upstream.url, fallbacks={"claude-x": ["chat-only", "fake-model"]})
    gateway = await make_gateway(raw)
    fake_upstream.queue(
        *[Reply(status=503, headers={"Retry-After": "0"})] * 3, Reply(content="from the fallback")
    )
    body = {**MESSAGES, "model": "claude-x", "stream": True}
    async with http.post(gateway.url + "/v1/messages", json=body, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    assert b"fallback" in received
    assert [r["path"] for r in fake_upstream.requests] == ["/v1/messages"] * 4  # chat-only was skipped
    assert fake_upstream.requests[-1]["body"]["model"] == "fake-model"
    [(_, answer)] = records(gateway)
    assert (answer["model"], answer["requested_model"], answer["content"]) == (
        "fake-model",
        "claude-x",
        "from the fallback",
    )


async def test_an_upstream_error_answer_keeps_its_shape_and_its_rate_limit_headers(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    limits = {"anthropic-ratelimit-requests-remaining": "0", "Retry-After": "0"}
    fake_upstream.queue(*[Reply(status=429, headers=limits)] * 3)
    async with http.post(gateway.url + "/v1/messages", json=MESSAGES, headers=AUTH) as response:
        assert response.status == 429
        assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        body = await response.json()
    # Anthropic's shape stays readable as Anthropic's (and as OpenAI's: `error.message`, `error.type`).
    assert body["type"] == "error"
    assert (body["error"]["type"], body["error"]["message"]) == ("overloaded_error", "fake failure")


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
async def test_an_error_event_from_the_upstream_reaches_the_client_and_the_record(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession, path: str
) -> None:
    fake_upstream.queue(Reply(content="partial answer", stream_error="Overloaded"))
    async with http.post(gateway.url + path, json={**BODIES[path], "stream": True}, headers=AUTH) as response:
        received = await response.read()
    assert received == b"".join(fake_upstream.requests[0]["sent"])
    assert events_of(received)[-1]["type"] == "error"
    [(_, answer)] = records(gateway)
    assert (
        answer["status"] == 200 and answer["error"] == "Overloaded" and answer["content"] == "partial answer"
    )


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
@pytest.mark.parametrize("failure", ["broken", "oversized", "deadline"])
async def test_a_stream_that_fails_midway_ends_with_one_error_event_in_its_own_dialect(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    path: str,
    failure: str,
) -> None:
    gateway = await make_gateway(dialect_config(fake_upstream.url, max_event_bytes=4096, call_deadline_s=1.5))
    reply = {
        "broken": Reply(content="one two three four five six", abort_after=4),
        "oversized": Reply(raw_events=[b'event: ping\ndata: {"type": "ping"}\n\n', b"data: " + b"x" * 8192]),
        "deadline": Reply(content="one two three four five six", chunk_delay=0.3),
    }[failure]
    fake_upstream.queue(reply)
    async with http.post(gateway.url + path, json={**BODIES[path], "stream": True}, headers=AUTH) as response:
        assert response.status == 200
        received = await response.read()
    last = received.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = orjson.loads(event_data(last) or b"")
    assert error["type"] == "error" and error["error"]["type"] == "upstream_error"
    [(_, answer)] = records(gateway)
    assert answer["status"] == 200 and answer["error"] == error["error"]["message"]


async def test_a_client_that_goes_away_mid_stream_is_recorded_and_the_upstream_let_go(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.queue(Reply(content="one two three four five six seven"))
    for _ in range(3):
        fake_upstream.gate.put_nowait(None)
    body = {**MESSAGES, "stream": True}
    async with http.post(gateway.url + "/v1/messages", json=body, headers=AUTH) as response:
        await response.content.readuntil(b"content_block_start")
    await asyncio.wait_for(fake_upstream.disconnected.wait(), 5)
    for _ in range(20):
        if gateway.recorder.responses():
            break
        await asyncio.sleep(0.05)
    [(_, answer)] = records(gateway)
    assert answer["client_disconnected"] is True and answer["endpoint"] == "messages"


async def test_secrets_in_a_stream_are_scrubbed_before_they_leave(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    leak = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": PROVIDER_KEY}}
    event = b"event: content_block_delta\ndata: " + orjson.dumps(leak) + b"\n\n"
    fake_upstream.queue(Reply(raw_events=[event]))
    async with http.post(gateway.url + "/v1/messages", json={**MESSAGES, "stream": True}, headers=AUTH) as r:
        received = await r.read()
    assert PROVIDER_KEY.encode() not in received and b"[REDACTED]" in received


async def test_an_upstream_redirect_is_refused_on_the_new_routes_too(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(Reply(status=307, redirect="http://elsewhere.invalid/v1/responses"))
    async with http.post(gateway.url + "/v1/responses", json=RESPONSES, headers=AUTH) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_redirect"
    assert fake_upstream.total_hits == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-model", "max_tokens": 5}, "messages"),
        ({**MESSAGES, "messages": ["hi"]}, "messages"),
        ({**MESSAGES, "model": "two words"}, "model"),
        ({**MESSAGES, "stream": "yes"}, "stream"),
    ],
)
async def test_a_malformed_messages_body_is_refused_before_any_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession, body: Any, param: str
) -> None:
    async with http.post(gateway.url + "/v1/messages", json=body, headers=AUTH) as response:
        assert response.status == 400 and (await response.json())["error"]["param"] == param
    assert fake_upstream.total_hits == 0


async def test_a_responses_call_may_leave_out_input_and_an_agent_names_its_session(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "fake-model",
        "previous_response_id": "resp_1",
        "client_metadata": {"session_id": "cx-1"},
    }
    async with http.post(gateway.url + "/v1/responses", data=orjson.dumps(body), headers=AUTH) as response:
        assert response.status == 200
    claude = {**MESSAGES, "metadata": {"user_id": '{"device_id": "d", "session_id": "cc-1"}'}}
    async with http.post(gateway.url + "/v1/messages", json=claude, headers=AUTH) as response:
        assert response.status == 200
    assert [r[0]["session_id"] for r in records(gateway)] == ["cx-1", "cc-1"]
    assert fake_upstream.requests[0]["raw"] == orjson.dumps(body)  # the client's own bytes went upstream


def write_spool(gateway: RunningGateway, root: Path) -> None:
    """The calls' records as the log writer lays them out (full capture), one chunk in one date folder."""
    builder = RecordBuilder(LoggingSettings(capture="full"))
    lines = []
    for call in gateway.recorder.responses():
        lines += [*builder.request(call), builder.response(call, call.wall_end)]
    day = root / lines[0]["timestamp"][:10]
    day.mkdir(parents=True)
    (day / "00-00-00-host-1-test.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))


def analyze(root: Path, *args: str) -> Any:
    out = io.StringIO()
    assert analyze_main([str(root), "--json", "--no-progress", *args], stdout=out) == 0
    return json.loads(out.getvalue())


async def test_the_analyzer_counts_each_api_and_replays_an_agents_session(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    asked = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}],
    }
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}
    turns = [
        ("/v1/chat/completions", chat, Reply()),
        ("/v1/messages", MESSAGES, Reply(content="", tool_calls=[{"name": "weather", "arguments": "{}"}])),
        (
            "/v1/messages",
            {**MESSAGES, "messages": [*MESSAGES["messages"], asked, result]},
            Reply(content="Sunny."),
        ),
        ("/v1/responses", RESPONSES, Reply(content="Hello.")),
    ]
    for path, body, reply in turns:
        fake_upstream.queue(reply)
        headers = {**AUTH, "X-Session-Id": "agent-1" if path == "/v1/messages" else "other"}
        async with http.post(gateway.url + path, json=body, headers=headers) as response:
            assert response.status == 200
    write_spool(gateway, tmp_path / "logs")
    tables = analyze(tmp_path / "logs", "--limit", "0")["sections"]["models"]["tables"]
    assert {r["endpoint"]: r["calls"] for r in tables["endpoints"]} == {
        "chat.completions": 1,
        "messages": 2,
        "responses": 1,
    }
    entries = analyze(tmp_path / "logs", "--session", "agent-1")["entries"]
    said = [(e["kind"], e["name"], e["text"]) for e in entries if e["kind"] != "call"]
    assert said == [
        ("system", None, "Be brief."),
        ("user", None, "Weather in Paris?"),
        ("tool_call", "weather", "{}"),
        ("tool_result", "weather", "sunny"),
        ("assistant", None, "Sunny."),
    ]
