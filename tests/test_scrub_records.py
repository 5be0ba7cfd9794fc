"""No secret reaches a record, whichever field a client or an upstream fills with it.

The recorder searches for secrets only in the values clients and upstreams chose (`RecordBuilder.chosen`),
not in the whole line. Each such field is filled here with a known secret in several spellings and with
every shape of key-like string, and the lines the real recorder writes are checked: no spelling of the
secret, no key, and nothing that the whole-line scrubber would still change.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_logs_units import TOOLS_BODY
from test_scrub import SPELLINGS

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.keylike import (
    _CREDENTIAL_NAMES,
    _KEY_LIKE_BYTES,
    _PASSES,
    _REACH,
    _TRIGGERS,
    keep_label,
    keys_replaced,
    may_hold_key,
)
from gateway.logs.recorder import LogRecorder
from gateway.logs.records import RecordBuilder
from gateway.logs.spool import Spool
from gateway.metrics import Metrics
from gateway.scrub import REDACTED, Scrubber
from providers.base import Endpoint

SECRET = 'pa"ss/w0rd+Quote1=Key'  # characters that JSON and URL encoding rewrite
KEY_LIKE = (
    "Bearer abcdefghijklmnop1234",
    "sk-" + "q" * 24,
    "AKIAABCDEFGHIJKLMNOP",
    '{"api_key": "hunter2hunter2"}',
    "KEY_ID 'keyid-value', SECRET 'secret-value'",
)
HIDDEN = (
    b"abcdefghijklmnop1234",
    b"q" * 24,
    b"AKIAABCDEFGHIJKLMNOP",
    b"hunter2hunter2",
    b"keyid-value",
    b"secret-value",
)
ALL_SPELLINGS = tuple({spell(SECRET).encode() for spell in SPELLINGS.values()})


def chat_body() -> dict[str, Any]:
    return json.loads(json.dumps(TOOLS_BODY))  # a copy the case may change


def answer_with(call: Call, **message: Any) -> None:
    body = {"id": "up-1", "choices": [{"message": {"content": "fine", **message}, "finish_reason": "stop"}]}
    call.answer.add_body(orjson.dumps(body))


def tool_turn(call: Call, text: str, *, named: bool) -> None:
    """The conversation ends with a tool's result: the text is the result, or its call's id and name."""
    asked = {"id": text if named else "c9", "type": "function", "function": {"name": text, "arguments": "{}"}}
    result = {"role": "tool", "tool_call_id": text if named else "c9", "content": "ok" if named else text}
    assert call.body is not None
    call.body["messages"] += [{"role": "assistant", "tool_calls": [asked]}, result]


def completion(call: Call, text: str) -> None:
    call.endpoint, call.body = Endpoint.COMPLETIONS, {"model": "kimi", "prompt": text}


def bad_answer(call: Call, text: str) -> None:
    call.answer.add_body(
        orjson.dumps({"error": {"message": text}, "choices": [{"message": {"content": "x"}}]})
    )
    call.answer.error = text


def usage(call: Call, text: str) -> None:
    call.answer.add_body(
        orjson.dumps(
            {"choices": [], "usage": {"prompt_tokens": 1, "note": text, "api_key": "hunter2hunter2"}}
        )
    )


FIELDS: dict[str, Callable[[Call, str], None]] = {
    "first user message": lambda c, t: c.body["messages"].insert(0, {"role": "user", "content": t}),  # type: ignore[index]
    "last user message": lambda c, t: c.body["messages"].append({"role": "user", "content": t}),  # type: ignore[index]
    "user message parts": lambda c, t: c.body["messages"].append(  # type: ignore[index]
        {"role": "user", "content": [{"type": "text", "text": t}]}
    ),
    "tool result": lambda c, t: tool_turn(c, t, named=False),
    "tool result name and id": lambda c, t: tool_turn(c, t, named=True),
    "completion prompt": completion,
    "model": lambda c, t: setattr(c, "requested_model", t) or setattr(c, "model", t),
    "routed model": lambda c, t: setattr(c, "model", t),
    "session id": lambda c, t: setattr(c, "session_id", t),
    "origin": lambda c, t: setattr(c, "origin", t),
    "client": lambda c, t: setattr(c, "client", t),
    "content": lambda c, t: answer_with(c, content=t),
    "reasoning": lambda c, t: answer_with(c, reasoning_content=t),
    "tool arguments": lambda c, t: answer_with(c, tool_calls=[{"function": {"name": "f", "arguments": t}}]),
    "tool name": lambda c, t: answer_with(c, tool_calls=[{"function": {"name": t, "arguments": "{}"}}]),
    "finish reason": lambda c, t: c.answer.add_body(orjson.dumps({"choices": [{"finish_reason": t}]})),
    "upstream id": lambda c, t: c.answer.add_body(orjson.dumps({"id": t, "choices": []})),
    "usage": usage,
    "error": lambda c, t: setattr(c, "error", t),
    "error inside an answer": bad_answer,
    "upstream header value": lambda c, t: setattr(c, "upstream_headers", {"x-note": t}),
    "upstream header name": lambda c, t: setattr(c, "upstream_headers", {t: "v"}),
}


def the_call() -> Call:
    body = chat_body()
    return Call(
        uuid.uuid4().hex,
        Endpoint.CHAT,
        body=body,
        model="kimi",
        requested_model="kimi",
        provider="nrp",
        key_name="alice",
        status=200,
    )


class Written:
    """A recorder whose batches are kept in memory (the disk is tested elsewhere)."""

    def __init__(self, root: Path, capture: str, secret: str = SECRET, **settings: Any) -> None:
        spool = Spool(root, max_age_s=300.0, chunk_max_bytes=1 << 20, max_bytes=1 << 30, host="h")
        builder = RecordBuilder(LoggingSettings(capture=capture, **settings))
        self.recorder = LogRecorder(builder, spool, Scrubber([secret]), Metrics(), stdout=False)
        self.batches: list[bytes] = []
        spool.write = self.kept  # type: ignore[method-assign]

    def kept(self, batch: bytes, ts: float, count: int = 1) -> bool:
        self.batches.append(batch)
        return True

    def record(self, call: Call) -> list[bytes]:
        self.recorder.request(call)
        self.recorder.response(call)
        self.recorder.flush()
        lines = b"".join(self.batches).splitlines()
        self.batches.clear()
        return lines


def assert_clean(lines: list[bytes]) -> None:
    """No spelling of the secret, no key; every line JSON; nothing the whole-line scrubber would change."""
    whole = Scrubber([SECRET])
    for line in lines:
        orjson.loads(line)
        assert not [s for s in ALL_SPELLINGS if s in line], line
        assert not [h for h in HIDDEN if h in line], line
        assert whole.line(line) == line, line


@pytest.mark.parametrize("capture", ["summary", "full"])
@pytest.mark.parametrize("spelling", ["raw", "json", "double_json", "url", "unicode_upper"])
@pytest.mark.parametrize("field", FIELDS)
def test_a_secret_in_any_chosen_field_is_scrubbed(
    tmp_path: Path, field: str, spelling: str, capture: str
) -> None:
    text = f"key {SPELLINGS[spelling](SECRET)}; " + "; ".join(KEY_LIKE)
    assert len(text) < 256  # under every cap: the whole text reaches the record
    call = the_call()
    FIELDS[field](call, text)
    lines = Written(tmp_path, capture).record(call)
    kinds = [orjson.loads(line)["type"] for line in lines]
    assert kinds[-2:] == ["request", "response"]
    assert REDACTED.encode() in b"".join(lines)  # the text did reach a record
    assert_clean(lines)


# Kept by full capture alone, in the request's `messages`: the rest of the conversation.
HISTORY: dict[str, Callable[[Call, str], None]] = {
    "an earlier answer": lambda c, t: c.body["messages"].insert(1, {"role": "assistant", "content": t}),  # type: ignore[index]
    "an earlier question": lambda c, t: c.body["messages"].insert(0, {"role": "user", "content": t}),  # type: ignore[index]
    "a message's other field": lambda c, t: c.body["messages"].insert(
        1, {"role": "user", "content": "", "name": t}
    ),  # type: ignore[index]
    "earlier tool arguments": lambda c, t: c.body["messages"].insert(  # type: ignore[index]
        1, {"role": "assistant", "tool_calls": [{"id": "c0", "function": {"name": "f", "arguments": t}}]}
    ),
}


@pytest.mark.parametrize("spelling", ["raw", "json", "double_json", "url", "unicode_upper"])
@pytest.mark.parametrize("field", HISTORY)
def test_a_secret_anywhere_in_a_full_capture_conversation_is_scrubbed(
    tmp_path: Path, field: str, spelling: str
) -> None:
    text = f"key {SPELLINGS[spelling](SECRET)}; " + "; ".join(KEY_LIKE)
    call = the_call()
    call.body["messages"].append({"role": "user", "content": "And now?"})  # type: ignore[index]
    HISTORY[field](call, text)
    lines = Written(tmp_path, "full").record(call)
    request = orjson.loads(lines[-2])
    assert request["type"] == "request" and REDACTED in orjson.dumps(request["messages"]).decode()
    assert_clean(lines)


def test_a_preview_longer_than_the_content_kept_is_searched_too(tmp_path: Path) -> None:
    call = the_call()
    answer_with(call, content="x" * 40 + "; ".join(KEY_LIKE))
    lines = Written(tmp_path, "summary", content_max_chars=30, preview_chars=400).record(call)
    response = orjson.loads(lines[-1])
    assert response["content"].startswith("x" * 30 + "… [") and REDACTED in response["content_preview"]
    assert_clean(lines)


def test_the_request_and_response_of_a_clean_call_are_searched_and_left_alone(tmp_path: Path) -> None:
    call = the_call()
    answer_with(call, content="Hello! How can I help?")
    lines = Written(tmp_path, "summary").record(call)
    assert REDACTED.encode() not in b"".join(lines)
    assert [orjson.loads(line)["user_question"] for line in lines[:1]] == ["What is 2+3?"]


def test_a_usage_of_numbers_is_searched_when_a_secret_is_a_number(tmp_path: Path) -> None:
    """A usage of known names and numbers is not searched, unless a known secret is digits only."""
    call = the_call()
    call.answer.add_body(
        orjson.dumps({"choices": [], "usage": {"prompt_tokens": 73194628, "total_tokens": 9}})
    )
    written = b"".join(Written(tmp_path, "summary", secret="73194628").record(call))
    assert b"73194628" not in written and REDACTED.encode() in written
    assert b"73194628" in b"".join(Written(tmp_path, "summary", secret="7319-xyz").record(call))


def test_a_record_with_keys_that_are_not_text_is_written_and_searched_as_any_other(tmp_path: Path) -> None:
    call = the_call()
    call.key_name = "or-" + "x" * 20  # a name the config gave: not searched, however key-like it looks
    answer_with(call, content="fine")
    call.answer.usage = {1: "one", "nested": {2.5: True}}  # no JSON body makes these
    lines = Written(tmp_path, "summary").record(call)
    assert b'"tokens":{"1":"one","nested":{"2.5":true}}' in lines[-1]
    record = orjson.loads(lines[-1])
    assert record["key_name"] == call.key_name and "record_errors" not in record  # not mended, not searched


FRAGMENTS = st.sampled_from(
    [
        *("Bearer ", "bearer\t", "BEARER  ", "sk-", "SK-", "pk-", "rk-", "or-", "olp-", "AKIA", "akia"),
        *(
            "api_key",
            "APIKEY",
            "s3_key",
            "secret",
            "Secret",
            "passwd",
            "password",
            "token",
            "key_id",
            "KEY_ID ",
        ),
        *('"', '\\"', '": "', "\\", ":", " ", "'", "\n", "\t", "\u2028", "é", "…"),
        *("abcdefghijklmnopqrstuvwxyz", "0123456789ABCDEF", "x" * 4, SECRET, SECRET[:9], "w0rd+Quote1"),
    ]
)
TEXTS = st.lists(FRAGMENTS, max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(list(FIELDS)), text=TEXTS, capture=st.sampled_from(["summary", "full"]))
def test_property_what_is_written_holds_nothing_the_whole_line_scrubber_would_change(
    tmp_path: Path, field: str, text: str, capture: str
) -> None:
    call = the_call()
    FIELDS[field](call, text)
    assert_clean(Written(tmp_path, capture).record(call))


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from([*(t.decode() for t in _TRIGGERS), *'bearskp-olaki_3yecwdnt"\\ xKEYS'])).map(
        "".join
    )
)
def test_the_trigger_search_finds_exactly_what_the_trigger_list_names(text: str) -> None:
    data = text.encode()
    assert may_hold_key(data) == any(t in data.lower() for t in _TRIGGERS)


def test_key_like_strings_are_replaced_line_by_line(tmp_path: Path) -> None:
    # An unclosed DuckDB literal reaches to the next quote: it may not reach into the next record.
    first = orjson.dumps({"content": "CREATE SECRET s (TYPE S3, SECRET 'abcdefgh"}) + b"\n"
    second = orjson.dumps({"content": "Bearer abcdefghijklmnop1234", "quote": "'"}) + b"\n"
    out = Scrubber([]).lines(first + second, first + second)
    kept_first, kept_second = out.splitlines()
    assert b"abcdefgh" not in kept_first and re.search(rb"Bearer \[REDACTED\]", kept_second)
    assert orjson.loads(kept_first)["content"].endswith(f"SECRET '{REDACTED}")  # still JSON: cut at its end
    assert orjson.loads(kept_second)["quote"] == "'"


KEY_LIKE_FRAGMENTS = st.sampled_from(
    [
        *(t.decode() for t in _TRIGGERS),
        *("Bearer ", "BEARER\t", "AKIA", "KEY_ID '", "SECRET  '", "'", '"', "\\", '\\"', "\\\\", ":", " : "),
        *('"access_token"', '\\"refresh_token\\"', '"aws_secret_access_key"', '"client_secret"'),
        *('"s3_secret"', '"secret_access_key"', '"passwd"', '"apikey"', "error-prone", "tokens"),
        *("abcdefghijklmnop", "ABCDEFGHIJKLMNOP", "0123456789", "-", "_", ".", "/", "+", "=", "~", "x", "\n"),
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(KEY_LIKE_FRAGMENTS, max_size=30).map("".join))
def test_key_like_strings_are_replaced_as_the_regex_replaces_them_along_the_whole_line(text: str) -> None:
    line = text.encode()
    assert keys_replaced(line) == _KEY_LIKE_BYTES.sub(keep_label(bytes), line)


@settings(max_examples=3000, deadline=None)
@given(st.lists(KEY_LIKE_FRAGMENTS, max_size=30).map("".join))
def test_every_key_like_string_starts_within_reach_of_a_trigger_the_passes_find(text: str) -> None:
    # What lets `keys_replaced` try the regex only just before the triggers: no match starts farther off.
    line = text.encode()
    hits = [found.start() for search in _PASSES for found in search.finditer(line.lower())]
    for match in _KEY_LIKE_BYTES.finditer(line):
        assert any(match.start() <= hit <= match.start() + _REACH for hit in hits), match


@pytest.mark.parametrize(
    ("chosen", "clean"),
    [
        (b'["Say hello.","mock-gpt",null]', True),
        (b'["ask the task-runner"]', True),  # `sk-`, though no key follows
        (b'["my token"]', True),  # `token"`, though no credential follows
        (b'["w0rd+Quote1"]', True),  # the anchor of the known secret, though not the secret
        (b'["ask sk-abcdefghijklmnop1234"]', False),  # a key-like string
        (b'["Bearer abcdefghijklmnop1234"]', False),
        (orjson.dumps([SECRET]), False),  # the secret itself
    ],
)
def test_a_batch_says_whether_its_chosen_values_held_any_trace_of_a_secret(
    chosen: bytes, clean: bool
) -> None:
    # Only values found clean are remembered by the recorder as needing no search.
    scrub = Scrubber([SECRET])
    line = orjson.dumps({"content": "Bearer abcdefghijklmnop1234", "model": "mock-gpt"}) + b"\n"
    data, found_clean = scrub.batch(line, chosen)
    assert found_clean is clean and data == scrub.lines(line, chosen)


@pytest.mark.parametrize("name", [*_CREDENTIAL_NAMES, *(n.upper() for n in _CREDENTIAL_NAMES)])
@pytest.mark.parametrize(
    "form", ['"{}": "abcd1234"', '\\"{}\\": \\"abcd1234', '"{}\\":\\"abcd', 'x\\"{}" :"q1w2']
)
def test_a_value_under_each_credential_name_is_replaced_as_the_regex_replaces_it(
    name: str, form: str
) -> None:
    line = ("say " + form.format(name) + ", then or-" + "x" * 20).encode()
    assert keys_replaced(line) == _KEY_LIKE_BYTES.sub(keep_label(bytes), line) != line
