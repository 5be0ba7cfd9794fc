"""The Responses and Messages dialects on values: folds, conversations, sessions, providers, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_dialects import message_object, messages_events, response_object, responses_events
from fake_upstream import Reply

from gateway.auth import KeyRing
from gateway.calls import Answer, Call
from gateway.cli import check_config
from gateway.config import LoggingSettings
from gateway.dialects import MESSAGES, RESPONSES, Dialect, dialect_of
from gateway.errors import AuthenticationFailed
from gateway.logs.records import RecordBuilder
from gateway.prices import SHIPPED_PATH, load_prices
from gateway.sse import EventSplitter, event_data
from providers.anthropic import AnthropicProvider
from providers.base import Endpoint, Provider
from providers.registry import resolve_settings

REPLY = Reply(
    content="It is sunny in Paris.",
    reasoning="The user wants the weather.",
    tool_calls=[{"name": "weather", "arguments": '{"city": "Paris"}'}],
)
BODY = {"model": "m", "input": "weather in Paris?", "messages": [{"role": "user", "content": "weather?"}]}
PROMPT_WORDS, ANSWER_WORDS, REASONING_WORDS = 5, 10, 5  # what the fake counts as tokens for BODY and REPLY


def fold_stream(dialect: Dialect, events: list[bytes]) -> Answer:
    """Fold events as the proxy does: split the bytes, take each event's data."""
    answer = Answer(fold=dialect.fold())
    for event in EventSplitter().feed(b"".join(events)):
        if payload := event_data(event):
            answer.add_chunk(payload)
    return answer


def fold_body(dialect: Dialect, body: dict[str, Any]) -> Answer:
    answer = Answer(fold=dialect.fold())
    answer.add_body(orjson.dumps(body))
    return answer


@pytest.mark.parametrize("how", ["stream", "body"])
def test_a_responses_answer_is_rebuilt_alike_from_its_events_and_from_its_body(how: str) -> None:
    if how == "stream":
        answer = fold_stream(RESPONSES, responses_events(BODY, REPLY, "1", "m"))
    else:
        answer = fold_body(RESPONSES, response_object(BODY, REPLY, "1", "m"))
    assert answer.text == REPLY.content
    assert answer.reasoning_text == REPLY.reasoning
    assert answer.tool_call_list() == [{"name": "weather", "arguments": '{"city": "Paris"}'}]
    assert answer.finish_reason == "completed" and answer.upstream_id == "resp_1"
    assert answer.usage is not None
    assert answer.usage["prompt_tokens"] == answer.usage["input_tokens"] == PROMPT_WORDS
    assert answer.usage["completion_tokens"] == answer.usage["output_tokens"] == ANSWER_WORDS
    assert answer.usage["completion_tokens_details"] == {"reasoning_tokens": REASONING_WORDS}
    assert answer.usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert answer.bad_chunks == 0 and answer.error is None


@pytest.mark.parametrize("how", ["stream", "body"])
def test_a_messages_answer_is_rebuilt_alike_from_its_events_and_from_its_body(how: str) -> None:
    if how == "stream":
        answer = fold_stream(MESSAGES, messages_events(BODY, REPLY, "1", "m"))
    else:
        answer = fold_body(MESSAGES, message_object(BODY, REPLY, "1", "m"))
    assert answer.text == REPLY.content
    assert answer.reasoning_text == REPLY.reasoning
    [call] = answer.tool_call_list()
    assert call["name"] == "weather" and orjson.loads(call["arguments"]) == {"city": "Paris"}
    assert answer.finish_reason == "tool_use" and answer.upstream_id == "msg_1"
    assert answer.usage is not None
    assert (answer.usage["prompt_tokens"], answer.usage["completion_tokens"]) == (PROMPT_WORDS, ANSWER_WORDS)
    assert answer.bad_chunks == 0


def test_messages_usage_counts_cached_prompt_tokens_and_takes_the_last_output_count() -> None:
    answer = Answer(fold=MESSAGES.fold())
    start = {"id": "msg_9", "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}}
    answer.add_chunk(orjson.dumps({"type": "message_start", "message": start}))
    answer.add_chunk(orjson.dumps({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 7}}))
    assert answer.usage == {
        "input_tokens": 10,
        "cache_read_input_tokens": 90,
        "output_tokens": 7,
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 90},
    }


def test_errors_inside_a_stream_are_noted_for_the_record() -> None:
    failed = Reply(content="partial", stream_error="Overloaded")
    for dialect, events in (
        (MESSAGES, messages_events(BODY, failed, "1", "m")),
        (RESPONSES, responses_events(BODY, failed, "1", "m")),
    ):
        answer = fold_stream(dialect, events)
        assert answer.text == "partial" and answer.error == "Overloaded"
    answer = fold_body(RESPONSES, {"status": "failed", "error": {"message": "boom"}, "output": []})
    assert answer.finish_reason == "failed" and answer.error == "boom"


def test_an_incomplete_response_says_why_in_its_finish_reason() -> None:
    reply = Reply(content="cut", finish_reason="max_output_tokens")
    answer = fold_stream(RESPONSES, responses_events(BODY, reply, "1", "m"))
    assert answer.finish_reason == "max_output_tokens"


@pytest.mark.parametrize("dialect", [RESPONSES, MESSAGES])
@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_text.delta", "delta": 5},
        {"type": "response.function_call_arguments.delta", "delta": "x"},
        {"type": "response.completed", "response": {"usage": "lots"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ["a"]}},
        {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": "{"}},
        {"type": "content_block_start", "index": "0", "content_block": {}},
        {"type": "message_start", "message": {"usage": 3}},
        {"type": "content_block_delta", "index": 0, "delta": "text"},
    ],
)
def test_odd_event_shapes_are_counted_never_raised(dialect: Dialect, event: dict[str, Any]) -> None:
    answer = Answer(fold=dialect.fold())
    assert answer.add_chunk(orjson.dumps(event)) is not None
    answer.add_chunk(b"not json")
    answer.add_chunk(b"[1, 2]")
    assert answer.bad_chunks >= 2


def test_pings_and_unknown_events_fold_to_nothing() -> None:
    answer = Answer(fold=MESSAGES.fold())
    for event in ({"type": "ping"}, {"type": "message_stop"}, {"type": "content_block_stop", "index": 0}):
        answer.add_chunk(orjson.dumps(event))
    assert (answer.text, answer.tool_calls, answer.bad_chunks) == ("", {}, 0)


def test_a_fold_keeps_no_more_text_than_the_answer_may_keep() -> None:
    answer = Answer(fold=RESPONSES.fold(), keep=10)
    for _ in range(5):
        answer.add_chunk(orjson.dumps({"type": "response.output_text.delta", "delta": "abcdef"}))
    assert answer.text == "abcdefabcd" and answer.truncated


def test_a_responses_conversation_reads_as_chat_messages() -> None:
    body = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "noon"},
            "junk",
        ],
    }
    messages = RESPONSES.conversation(body)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["function"]["name"] for c in messages[2]["tool_calls"]] == ["weather", "time"]
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert RESPONSES.conversation({"input": "hi"}) == [{"role": "user", "content": "hi"}]
    assert body["input"][2] == {
        "type": "function_call",
        "call_id": "c1",
        "name": "weather",
        "arguments": "{}",
    }


def test_a_messages_conversation_splits_content_blocks_into_chat_messages() -> None:
    body = {
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ],
    }
    messages = MESSAGES.conversation(body)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "tool"]
    assert messages[2]["content"] == [{"type": "text", "text": "Checking."}]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert messages[4] == {"role": "tool", "tool_call_id": "t1", "content": "sunny"}


@pytest.mark.parametrize(
    ("body", "session"),
    [
        ({"metadata": {"user_id": '{"device_id": "d", "session_id": "s-1"}'}}, "s-1"),
        ({"metadata": {"user_id": "user_abc_account__session_s-2"}}, "s-2"),
        ({"metadata": {"user_id": "just-a-user"}}, None),
        ({"metadata": {"user_id": "{not json"}}, None),
        ({"metadata": "x"}, None),
    ],
)
def test_claude_codes_session_is_read_from_its_metadata(body: dict[str, Any], session: str | None) -> None:
    assert MESSAGES.session(body) == session


def test_codexs_session_is_read_from_its_client_metadata() -> None:
    assert RESPONSES.session({"client_metadata": {"session_id": "s-3"}}) == "s-3"
    assert RESPONSES.session({"prompt_cache_key": "k"}) is None


def test_the_gateways_own_errors_are_said_in_each_streams_dialect() -> None:
    body = {"error": {"message": "gone quiet", "type": "upstream_error", "param": None, "code": "timeout"}}
    assert MESSAGES.error_event(body) == (
        b'event: error\ndata: {"type":"error","error":' + orjson.dumps(body["error"]) + b"}\n\n"
    )
    event = RESPONSES.error_event(body)
    assert event.startswith(b"event: error\ndata: ")
    data = orjson.loads(event_data(event) or b"")
    assert (data["type"], data["message"], data["code"], data["error"]) == (
        "error",
        "gone quiet",
        "timeout",
        body["error"],
    )


def test_only_the_listed_client_headers_travel_and_only_when_they_are_plain() -> None:
    headers = {"anthropic-beta": "a,b", "anthropic-version": "2023-06-01", "x-api-key": "secret"}
    assert MESSAGES.forwarded(headers) == {"anthropic-beta": "a,b", "anthropic-version": "2023-06-01"}
    assert MESSAGES.forwarded({"anthropic-beta": "é"}) is None
    assert MESSAGES.forwarded({"anthropic-beta": "x" * 2000}) is None
    assert RESPONSES.forwarded(headers) is None


def test_routes_belong_to_dialects() -> None:
    assert [e.dialect for e in Endpoint] == [
        "chat",
        "chat",
        "chat",
        "responses",
        "messages",
        "messages",
        None,
    ]
    assert Endpoint.COUNT_TOKENS.label == "messages.count_tokens"
    assert dialect_of(Endpoint.CHAT) is None and dialect_of(Endpoint.COUNT_TOKENS) is MESSAGES


def provider(cls: type[Provider], section: dict[str, Any], env: dict[str, str] | None = None) -> Provider:
    problems: list[str] = []
    settings = resolve_settings("p", section, cls, env or {}, problems)
    assert problems == []
    return cls(settings, env or {})


def test_an_openai_compatible_provider_speaks_every_dialect_beside_its_chat_endpoint() -> None:
    p = provider(
        Provider, {"endpoint": "http://vllm:8000/v1/chat/completions", "api_key_env": "K"}, {"K": "k"}
    )
    assert p.url(Endpoint.RESPONSES) == "http://vllm:8000/v1/responses"
    assert p.url(Endpoint.MESSAGES) == "http://vllm:8000/v1/messages"
    assert p.url(Endpoint.COUNT_TOKENS) == "http://vllm:8000/v1/messages/count_tokens"
    assert all(p.speaks(e) for e in Endpoint)
    request = p.build_request(Endpoint.MESSAGES, b"{}", stream=True)
    assert request.headers["Authorization"] == "Bearer k" and "x-api-key" not in request.headers
    narrowed = provider(Provider, {"endpoint": "http://x/v1/chat/completions", "dialects": ["chat"]})
    assert not narrowed.speaks(Endpoint.MESSAGES) and narrowed.speaks(Endpoint.EMBEDDINGS)
    assert narrowed.speaks(Endpoint.RAW)


def test_the_anthropic_plugin_sends_its_key_as_each_dialect_wants_it() -> None:
    p = provider(AnthropicProvider, {}, {"ANTHROPIC_API_KEY": "sk-ant-1"})
    assert p.settings.dialects == ("chat", "messages")
    assert p.url(Endpoint.MESSAGES) == "https://api.anthropic.com/v1/messages"
    assert p.url(Endpoint.COUNT_TOKENS) == "https://api.anthropic.com/v1/messages/count_tokens"
    assert p.url(Endpoint.CHAT) == "https://api.anthropic.com/v1/chat/completions"
    assert not p.speaks(Endpoint.RESPONSES)
    headers = p.build_request(Endpoint.MESSAGES, b"{}", stream=False).headers
    assert headers["x-api-key"] == "sk-ant-1" and headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers
    chat = p.build_request(Endpoint.CHAT, b"{}", stream=False).headers
    assert chat["Authorization"] == "Bearer sk-ant-1" and "x-api-key" not in chat
    assert p.models_request() == ("https://api.anthropic.com/v1/models", dict(p.messages_headers))
    earlier = provider(AnthropicProvider, {"endpoint": "https://api.anthropic.com/v1/chat/completions"})
    assert earlier.url(Endpoint.MESSAGES) == "https://api.anthropic.com/v1/messages"


def test_enable_thinking_becomes_each_providers_switch_on_the_new_routes() -> None:
    anthropic = provider(AnthropicProvider, {}, {"ANTHROPIC_API_KEY": "k"})
    body = {"model": "claude-x", "messages": [], "enable_thinking": True}
    sent = orjson.loads(anthropic.prepare(Endpoint.MESSAGES, dict(body), b"", "claude-x"))
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and "enable_thinking" not in sent
    given = {**body, "thinking": {"type": "enabled", "budget_tokens": 5000}}
    sent = orjson.loads(anthropic.prepare(Endpoint.MESSAGES, given, b"", "claude-x"))
    assert sent["thinking"]["budget_tokens"] == 5000
    sent = orjson.loads(anthropic.prepare(Endpoint.MESSAGES, {**body, "enable_thinking": False}, b"", "m"))
    assert sent["thinking"] == {"type": "disabled"}
    sent = orjson.loads(anthropic.prepare(Endpoint.MESSAGES, {**body, "max_tokens": 1500}, b"", "m"))
    assert sent["thinking"]["budget_tokens"] == 1499  # below max_tokens, as Anthropic requires
    sent = orjson.loads(anthropic.prepare(Endpoint.CHAT, dict(body), b"", "claude-x"))
    assert "thinking" not in sent and "enable_thinking" not in sent  # chat, as the earlier proxy sent it
    vllm = provider(Provider, {"endpoint": "http://x/v1/chat/completions", "thinking_models": {"q": "think"}})
    for endpoint in (Endpoint.RESPONSES, Endpoint.MESSAGES):
        sent = orjson.loads(vllm.prepare(endpoint, {**body, "model": "q"}, b"", "q"))
        assert sent["chat_template_kwargs"] == {"think": True}


@pytest.mark.parametrize("dialects", [[], ["chat", "grpc"]])
def test_a_config_naming_unknown_dialects_is_a_problem(dialects: list[str]) -> None:
    problems: list[str] = []
    resolve_settings(
        "p", {"endpoint": "http://x/v1/chat/completions", "dialects": dialects}, Provider, {}, problems
    )
    assert problems and "providers.p.dialects: expected some of chat, responses, messages" in problems[0]


def test_the_proxy_key_is_taken_from_either_header() -> None:
    ring = KeyRing.from_env({"PROXY_KEY": "good"})
    assert ring.authenticate_either(None, "good") == "default"
    assert ring.authenticate_either("Bearer good", None) == "default"
    assert ring.authenticate_either("Bearer good", "wrong") == "default"
    assert ring.authenticate_either("Bearer wrong", "good") == "default"
    for authorization, api_key, said in (
        (None, None, "Missing API key: send `x-api-key"),
        (None, "wrong", "Incorrect API key"),
        ("Bearer wrong", "wrong", "Incorrect API key"),
        ("Basic good", None, "Malformed Authorization"),
    ):
        with pytest.raises(AuthenticationFailed, match=said):
            ring.authenticate_either(authorization, api_key)
    with pytest.raises(AuthenticationFailed):
        ring.authenticate(None)  # the OpenAI routes read only `Authorization`


def test_check_config_lists_each_providers_dialects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = tmp_path / "config.yaml"
    config.write_text(
        "default_provider: null\nproviders:\n"
        "  claude: {plugin: anthropic}\n"
        "  local: {endpoint: 'http://vllm:8000/v1/chat/completions', models: [q],\n"
        "          dialects: [chat, responses]}\n"
    )
    assert check_config(str(config)) == 0
    out = capsys.readouterr().out
    assert "  claude [anthropic] https://api.anthropic.com/v1/messages" in out
    assert "    dialects: chat, messages\n" in out and "    dialects: chat, responses\n" in out


def test_a_responses_stream_without_deltas_is_read_from_its_final_response() -> None:
    whole = response_object(BODY, REPLY, "1", "m")
    answer = Answer(fold=RESPONSES.fold())
    answer.add_chunk(orjson.dumps({"type": "response.completed", "response": whole}))
    assert answer.text == REPLY.content and answer.reasoning_text == REPLY.reasoning
    assert [c["name"] for c in answer.tool_call_list()] == ["weather"]


def test_a_messages_calls_cost_prices_its_cached_prompt_tokens_apart() -> None:
    call = Call("r1", Endpoint.MESSAGES, model="kimi", stream=True, status=200)
    call.answer.fold = MESSAGES.fold()
    usage = {"input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 1}
    call.answer.add_chunk(orjson.dumps({"type": "message_start", "message": {"id": "m", "usage": usage}}))
    call.answer.add_chunk(
        orjson.dumps({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 50}})
    )
    record = RecordBuilder(LoggingSettings(), load_prices(SHIPPED_PATH)).response(call, call.wall_start)
    assert record["endpoint"] == "messages" and record["cost_source"] == "price_table"
    assert record["cost"] == pytest.approx((100 * 0.60 + 900 * 0.15 + 50 * 2.50) / 1e6)
