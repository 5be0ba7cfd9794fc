"""Record building, tested on values: timestamps as `datetime` writes them, and which fields are searched."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from test_logs_units import TOOLS_BODY, make_call

from gateway.config import LoggingSettings
from gateway.logs import records
from gateway.logs.fields import hundredths, iso, rounded
from gateway.logs.records import RecordBuilder
from gateway.repair import ToolCallRepair

# What the gateway itself writes into a record: times, ids, counts, flags, labels and config names. Every
# other field a client or an upstream fills, and must be among the values `RecordBuilder.chosen` hands the
# scrubber; a new field fails the test below until it is placed on one side or the other.
GATEWAY_MADE = {
    "request": {
        *("timestamp", "type", "request_id", "provider", "key_name", "endpoint", "stream", "limited_by"),
        *("message_count", "tools_count", "tool_calls_repaired", "enable_thinking", "record_errors"),
        "system_prompt_sha256",  # full capture: a digest
    },
    "response": {
        *("timestamp", "type", "request_id", "provider", "key_name", "endpoint", "stream", "limited_by"),
        *("status", "latency_ms", "ttft_ms", "has_content", "has_tool_calls", "has_reasoning_content"),
        *("content_preview", "cost", "cost_source", "truncated", "unreadable_chunks", "client_disconnected"),
        "record_errors",
    },
}


def exact(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_iso_writes_what_datetime_writes() -> None:
    rng = random.Random(7)
    edges = [0.0, 1.0, -1.0, 0.5, -0.5, 1e-7, -1e-7, 0.0078125, 86399.9999995, 1_700_000_000.0]
    edges += [1_700_000_000 + f for f in (0.9999995, 0.9999994, 0.0000005, 0.0000015, 0.5, 0.0078125)]
    drawn = [rng.uniform(-1e9, 4.1e9) for _ in range(50_000)]
    drawn += [rng.randrange(4_000_000_000) + rng.randrange(2_000_000) / 2_000_000 for _ in range(50_000)]
    drawn += [round(rng.uniform(0, 4e9), rng.randrange(8)) for _ in range(50_000)]
    drawn += [time.time() + i / 3 for i in range(5_000)]
    for ts in edges + drawn:
        assert iso(ts) == exact(ts), ts


def test_rounded_and_hundredths_write_what_round_writes() -> None:
    """The response record's latency (`hundredths`) and the metrics' (`Call.latency_ms`, round()) agree."""
    rng = random.Random(11)
    values = [0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, 1e15 + 0.5, -(1e15 + 0.5)]
    values += [rng.uniform(-1e6, 1e6) for _ in range(20_000)]
    values += [rng.randrange(-999, 999) / 2 for _ in range(2_000)]
    for value in values:
        assert rounded(value) == round(value), value
    for seconds in [rng.expovariate(10) for _ in range(20_000)] + [0.0, 0.000005, 0.000015, 0.000025]:
        assert hundredths(seconds) == round(seconds * 100_000) / 100, seconds


def test_iso_leaves_out_the_fraction_of_a_whole_second_as_datetime_does() -> None:
    assert iso(1_700_000_000.0) == "2023-11-14T22:13:20+00:00"
    assert iso(1_700_000_000.9999996) == "2023-11-14T22:13:21+00:00"  # rounded into the next second
    assert iso(1_700_000_000.25) == "2023-11-14T22:13:20.250000+00:00"


NUMBERS_ONLY = {"prompt_tokens": 1, "completion_tokens": 2}


def full_call() -> Any:
    """A call with every optional field of both records filled, each value an object of its own."""
    body = {**TOOLS_BODY, "messages": [*TOOLS_BODY["messages"], *TOOL_TURN]}
    call = make_call(body, status=200, session_id="s-1", origin="https://app", client="cli/1", error="e")
    call.model, call.upstream_headers = "kimi-routed", {"x-ratelimit-remaining": "9"}
    call.tool_repair = ToolCallRepair.for_request(body)
    assert call.tool_repair is not None
    call.answer.add_body(
        orjson.dumps(
            {
                "id": "up-1",
                "choices": [
                    {
                        "message": {
                            "content": "Ten",
                            "reasoning_content": "hmm",
                            "tool_calls": [{"function": {"name": "mul", "arguments": "{}"}}],
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": NUMBERS_ONLY,
            }
        )
    )
    return call


TOOL_TURN = [
    {"role": "assistant", "tool_calls": [{"id": "c2", "function": {"name": "add", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c2", "content": "7"},
]


@pytest.mark.parametrize("capture", ["summary", "full"])
@pytest.mark.parametrize("kind", ["request", "response"])
def test_every_field_is_made_by_the_gateway_or_searched_for_secrets(kind: str, capture: str) -> None:
    builder = RecordBuilder(LoggingSettings(capture=capture))
    call = full_call()
    record = builder.request(call)[-1] if kind == "request" else builder.response(call, time.time())
    assert (kind == "request" and capture == "full") == ("messages" in record)
    searched = builder.chosen(record)
    assert searched is not None
    for name, value in record.items():
        if name in GATEWAY_MADE[kind] or (name == "tokens" and value == NUMBERS_ONLY):
            continue  # a usage of numbers alone is not searched (the test below)
        assert value is not None and any(value is v for v in searched), f"{name} is not searched"
    if kind == "response":  # the optional fields are there, so they were tried too
        assert {"requested_model", "upstream_headers", "tool_calls_repaired", "tool_calls"} <= set(record)


def test_a_usage_of_known_numbers_is_not_searched_and_any_other_usage_is() -> None:
    builder = RecordBuilder(LoggingSettings())
    call = full_call()
    plain = [
        {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.5, "is_byok": False},
        {"input_tokens": 1, "cache_creation": {"ephemeral_5m_input_tokens": 0}, "cost_details": None},
        {"prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": None}},
    ]
    other = [
        {"prompt_tokens": 1, "service_tier": "standard"},  # a text
        {"prompt_tokens": 1, "sk-proj-0123456789abcdefghij": 2},  # a name of the upstream's choosing
        {"prompt_tokens_details": {"cached_tokens": {"deeper": 1}}},  # nested past the details
        {"prompt_tokens_details": [1, 2]},
        {"prompt_tokens": "12"},
    ]
    for usage, searched in [*((u, False) for u in plain), *((u, True) for u in other)]:
        call.answer.usage = usage
        record = builder.response(call, time.time())
        assert any(v is record["tokens"] for v in builder.chosen(record) or ()) is searched, usage
    builder.numbers_searched = True  # a known secret is digits only: numbers may spell it
    call.answer.usage = plain[0]
    record = builder.response(call, time.time())
    assert any(v is record["tokens"] for v in builder.chosen(record) or ())


def test_system_prompts_and_failed_records_are_searched_whole() -> None:
    builder = RecordBuilder(LoggingSettings(capture="full"))
    prompt, request = builder.request(full_call())
    assert prompt["type"] == "system_prompt" and builder.chosen(prompt) is None
    assert builder.chosen(request) is not None  # its messages among what it searches (above)
    assert builder.chosen({"type": "response", "request_id": "x", "status": 500, "error": "e"}) is None


def test_tool_results_are_named_by_the_latest_call_that_asked_for_them() -> None:
    messages = [
        {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "old"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "new"}}, {"id": "b"}]},
        "not a message",
        {"role": "tool", "tool_call_id": "a", "content": "2"},
        7,
        {"role": "tool", "tool_call_id": "b", "name": "given", "content": "3"},
    ]
    [record] = RecordBuilder(LoggingSettings()).request(make_call({"messages": messages}))
    assert record["tool_results_this_turn"] == [
        {"tool_call_id": "a", "name": "new", "content": "2"},
        {"tool_call_id": "b", "name": "given", "content": "3"},
    ]
    assert record["message_count"] == 5


# Both records' fields in the order every record is written with: queries read them by name, but a line is
# compared byte for byte by whoever checks that nothing changed.
REQUEST_FIELDS = [
    *("timestamp", "type", "request_id", "session_id", "provider", "model", "origin", "key_name", "endpoint"),
    *("stream", "limited_by", "client", "message_count", "tools_count", "tool_calls_repaired"),
    *("enable_thinking", "user_question", "user_message_this_turn", "tool_results_this_turn"),
]
RESPONSE_FIELDS = [
    *("timestamp", "type", "request_id", "session_id", "provider", "model", "origin", "key_name", "endpoint"),
    *(
        "stream",
        "limited_by",
        "status",
        "latency_ms",
        "ttft_ms",
        "finish_reason",
        "upstream_id",
        "has_content",
    ),
    *("has_tool_calls", "content_preview", "content", "tool_calls", "has_reasoning_content"),
    *("reasoning_content", "tokens", "cost", "cost_source", "truncated", "unreadable_chunks", "error"),
    *("upstream_headers", "client_disconnected", "tool_calls_repaired"),
]


def refused_call() -> Any:
    call = make_call(TOOLS_BODY, status=401, session_id="s" * 300, origin="o" * 600, client="c" * 300)
    call.provider = call.key_name = None
    return call


@pytest.mark.parametrize("capture", ["summary", "full"])
@pytest.mark.parametrize("make", [full_call, refused_call, lambda: make_call({})])
def test_fields_come_in_their_order_and_start_as_head_writes_them(capture: str, make: Any) -> None:
    builder = RecordBuilder(LoggingSettings(capture=capture))
    call = make()
    request, response = builder.request(call)[-1], builder.response(call, 1_700_000_000.25)
    extra = ["messages", "system_prompt_sha256"] if capture == "full" else []
    assert list(request) == [*REQUEST_FIELDS, *extra]
    assert list(response)[: len(RESPONSE_FIELDS)] == RESPONSE_FIELDS
    assert set(response) - set(RESPONSE_FIELDS) <= {"requested_model", "record_errors"}
    for record, kind, ts, model in (
        (request, "request", call.wall_start, call.requested_model),
        (response, "response", 1_700_000_000.25, call.model),
    ):
        first = records.head(call, kind, ts, model)
        assert list(record.items())[: len(first)] == list(first.items())


def test_the_values_chosen_in_many_records_are_those_chosen_in_each() -> None:
    for settings in (LoggingSettings(), LoggingSettings(preview_chars=50, content_max_chars=20)):
        builder = RecordBuilder(settings)
        calls = [full_call(), refused_call(), make_call({}), make_call(TOOLS_BODY, status=200)]
        calls[2].requested_model = "asked-for"  # a fallback answered: its record names what was asked
        requests = [builder.request(call)[-1] for call in calls]
        responses = [builder.response(call, time.time()) for call in calls]
        assert "requested_model" in responses[2]
        texts, structures = builder.chosen_in(requests, responses)
        each = [builder.chosen_in([r], []) for r in requests] + [
            builder.chosen_in([], [r]) for r in responses
        ]
        assert set(texts) == set().union(*(one for one, _ in each))
        assert structures == [structure for _, some in each for structure in some]
