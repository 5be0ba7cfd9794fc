"""Record building, scrubbing and the spool, tested on values and on a real temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.limits.usage import usage_cost
from gateway.logs.records import RecordBuilder
from gateway.logs.spool import Spool
from gateway.prices import KNOWN_MODELS, Price, PriceTable
from gateway.scrub import REDACTED, Scrubber
from providers.base import Endpoint

TOOLS_BODY = {
    "model": "kimi",
    "user": "session-7",
    "enable_thinking": True,
    "tools": [{"type": "function", "function": {"name": "add"}}],
    "messages": [
        {"role": "system", "content": "You are a careful analyst."},
        {"role": "user", "content": "What is 2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "user", "content": [{"type": "text", "text": "And doubled?"}]},
    ],
}


def make_call(body: dict, **kw: object) -> Call:
    """A call described as the proxy describes one (`gateway.proxy._describe`): its model and session are
    the body's only when they are text."""
    model, user = body.get("model"), body.get("user")
    model = model if isinstance(model, str) else None
    call = Call(
        "ab" * 16,
        Endpoint.CHAT,
        body=body,
        model=model,
        requested_model=model,
        provider="nrp",
        key_name="alice",
        session_id=user if isinstance(user, str) and user else None,
    )
    for k, v in kw.items():
        setattr(call, k, v)
    return call


def test_summary_request_record_keeps_questions_and_this_turns_tool_results() -> None:
    [record] = RecordBuilder(LoggingSettings(capture="summary")).request(make_call(TOOLS_BODY))
    assert record["type"] == "request" and record["request_id"] == "ab" * 16
    assert record["user_question"] == "What is 2+3?"
    assert record["user_message_this_turn"] == "And doubled?"
    assert record["tool_results_this_turn"] == []  # the turn's tool results end at the next assistant message
    assert record["message_count"] == 5 and record["tools_count"] == 1 and record["enable_thinking"] is True
    assert "messages" not in record


def test_tool_results_since_last_assistant_message_are_named() -> None:
    body = {**TOOLS_BODY, "messages": TOOLS_BODY["messages"][:4]}
    [record] = RecordBuilder(LoggingSettings()).request(make_call(body))
    assert record["tool_results_this_turn"] == [{"tool_call_id": "c1", "name": "add", "content": "5"}]


def test_full_capture_stores_each_system_prompt_once_by_hash() -> None:
    builder = RecordBuilder(LoggingSettings(capture="full"))
    first = builder.request(make_call(TOOLS_BODY))
    second = builder.request(make_call(TOOLS_BODY))
    assert [r["type"] for r in first] == ["system_prompt", "request"]
    assert [r["type"] for r in second] == ["request"]
    prompt, request = first
    assert prompt["content"] == "You are a careful analyst."
    assert request["messages"][0] == {"role": "system", "content_sha256": prompt["sha256"]}
    assert request["system_prompt_sha256"] == second[0]["system_prompt_sha256"] == prompt["sha256"]
    assert request["messages"][1:] == TOOLS_BODY["messages"][1:]


def test_response_record_from_stream_chunks() -> None:
    call = make_call(TOOLS_BODY, stream=True, status=200)
    for chunk in (
        {"id": "up-1", "choices": [{"index": 0, "delta": {"reasoning": "hmm "}}]},
        {"id": "up-1", "choices": [{"index": 0, "delta": {"content": "Ten"}}]},
        {
            "id": "up-1",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c2", "function": {"name": "mul", "arguments": '{"a": '}}
                        ]
                    },
                }
            ],
        },
        {
            "id": "up-1",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "5}"}}]},
                    "finish_reason": "tool_calls",
                }
            ],
        },
        {
            "id": "up-1",
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        },
    ):
        call.answer.add_chunk(orjson.dumps(chunk))
    prices = PriceTable({"kimi": Price(prompt=1.0, completion=2.0)})
    record = RecordBuilder(LoggingSettings(), prices).response(call, time.time())
    assert record["content"] == "Ten" and record["has_content"] is True
    assert record["reasoning_content"] == "hmm " and record["has_reasoning_content"] is True
    assert record["tool_calls"] == [{"name": "mul", "arguments": '{"a": 5}'}]
    assert record["finish_reason"] == "tool_calls" and record["upstream_id"] == "up-1"
    assert record["tokens"]["total_tokens"] == 14
    assert record["cost"] == (10 * 1.0 + 4 * 2.0) / 1e6 and record["cost_source"] == "price_table"


def test_provider_reported_cost_wins_over_price_table() -> None:
    call = make_call(TOOLS_BODY, status=200)
    call.answer.add_body(
        orjson.dumps(
            {
                "id": "x",
                "choices": [{"message": {"content": "hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": 0.25},
            }
        )
    )
    table = PriceTable({"kimi": Price(prompt=9.0, completion=9.0)})
    record = RecordBuilder(LoggingSettings(), table).response(call, time.time())
    assert (record["cost"], record["cost_source"]) == (0.25, "provider")


def test_a_model_priced_by_prefix_costs_the_same_however_many_models_came_before() -> None:
    table = PriceTable({"kimi": Price(prompt=1.0, completion=2.0)}, {"anthropic/claude-": Price(3.0, 15.0)})
    builder = RecordBuilder(LoggingSettings(), table)
    usage = {"prompt_tokens": 10, "completion_tokens": 4}
    for n in range(3 * KNOWN_MODELS):  # more names than the builder remembers the price of
        model = f"anthropic/claude-{n}" if n % 3 else ("kimi" if n % 2 else f"unpriced-{n}")
        call = make_call(TOOLS_BODY, status=200, model=model)
        call.answer.usage = usage
        record = builder.response(call, time.time())
        fresh = PriceTable(table.models, table.prefixes)  # remembers nothing yet: prices by looking
        assert (record["cost"], record["cost_source"]) == usage_cost(fresh, model, usage), model
    assert len(table.seen) <= KNOWN_MODELS  # the names are the clients': what they take is bounded


def test_scrubber_hides_known_secrets_and_key_like_strings() -> None:
    scrub = Scrubber(["provider-secret-value"])
    line = orjson.dumps(
        {"a": "key provider-secret-value", "b": "Bearer abcdefghijklmnop1234", "c": "sk-" + "x" * 30}
    )
    cleaned = scrub.line(line)
    assert b"provider-secret-value" not in cleaned and b"abcdefghijklmnop1234" not in cleaned
    assert b"xxxxxxxxxxxxxxxx" not in cleaned
    assert cleaned.count(REDACTED.encode()) == 3
    assert orjson.loads(cleaned)["b"] == f"Bearer {REDACTED}"


def spool_at(tmp_path: Path, **kw: object) -> Spool:
    settings: dict = {"max_age_s": 300.0, "chunk_max_bytes": 1 << 20, "max_bytes": 1 << 30, "host": "h-1"}
    settings.update(kw)
    return Spool(tmp_path, **settings)  # type: ignore[arg-type]


def test_spool_layout_rotation_by_age_size_and_date(tmp_path: Path) -> None:
    spool = spool_at(tmp_path, max_age_s=10.0, chunk_max_bytes=20)
    day = 1_795_219_200.0  # 2026-11-21T00:00:00Z
    spool.write(b'{"n":1}\n', day + 100)
    spool.write(b'{"n":2}\n', day + 101)
    spool.write(b'{"n":3}\n', day + 102)  # still under 20 bytes before this write: same chunk
    spool.write(b'{"n":4}\n', day + 103)  # the chunk passed 20 bytes: a new one
    spool.write(b'{"n":5}\n', day + 200)  # older than 10 s: a new one
    spool.write(b'{"n":6}\n', day + 86400 + 1)  # the next UTC date: a new one, in the next folder
    spool.close_current()
    chunks = spool.closed_chunks()
    assert [c.parent.name for c in chunks] == ["2026-11-21"] * 3 + ["2026-11-22"]
    assert [len(c.read_bytes().splitlines()) for c in chunks] == [3, 1, 1, 1]
    assert [c.name[:9] for c in chunks] == ["00-01-40-", "00-01-43-", "00-03-20-", "00-00-01-"]
    assert all(c.name.split("-")[3] == "h_1" and c.name.endswith(".jsonl") for c in chunks)
    assert spool.pending_bytes == 6 * 8


def test_spool_full_refuses_and_says_so(tmp_path: Path) -> None:
    spool = spool_at(tmp_path, max_bytes=16)
    assert spool.write(b"0123456789\n", time.time())
    assert not spool.write(b"0123456789\n", time.time())
    assert spool.full and spool.not_spooled == 1


def test_recover_closes_a_dead_writers_chunk_but_not_a_live_one(tmp_path: Path) -> None:
    script = (
        "import sys, time; from gateway.logs.spool import Spool\n"
        f"s = Spool({str(tmp_path)!r}, max_age_s=300, chunk_max_bytes=1<<20, max_bytes=1<<30, host='w')\n"
        "s.write(b'{\"live\": 1}\\n', time.time()); print('ok', flush=True); sys.stdin.read()\n"
    )
    live = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert live.stdout is not None and live.stdout.readline() == b"ok\n"
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            script.replace("sys.stdin.read()", "os._exit(9)").replace("import sys", "import os, sys"),
        ],
        stdout=subprocess.PIPE,
        check=False,
    )
    assert dead.returncode == 9
    try:
        assert len(list(tmp_path.glob("*/*.jsonl.open"))) == 2
        assert spool_at(tmp_path).recover() == 1  # the dead one only: the live writer still holds its lock
        assert len(list(tmp_path.glob("*/*.jsonl.open"))) == 1
        [closed] = list(tmp_path.glob("*/*.jsonl"))
        assert closed.read_bytes() == b'{"live": 1}\n'
    finally:
        live.stdin.close()  # type: ignore[union-attr]
        live.wait(10)
    assert os.listdir(tmp_path)


def test_scrubber_hides_credentials_inside_tool_arguments_and_duckdb_secrets() -> None:
    arguments = orjson.dumps(
        {"s3_key": "AKIAEXAMPLE1", "s3_secret": "hunter2hunter2", "sql": "SELECT 1"}
    ).decode()
    line = orjson.dumps(
        {
            "tool_calls": [{"name": "query", "arguments": arguments}],
            "content": "CREATE SECRET s (TYPE S3, KEY_ID 'keyid-value', SECRET 'secret-value')",
        }
    )
    cleaned = Scrubber([]).line(line)
    for secret in (b"AKIAEXAMPLE1", b"hunter2hunter2", b"keyid-value", b"secret-value"):
        assert secret not in cleaned
    record = orjson.loads(cleaned)
    assert orjson.loads(record["tool_calls"][0]["arguments"]) == {
        "s3_key": REDACTED,
        "s3_secret": REDACTED,
        "sql": "SELECT 1",
    }
