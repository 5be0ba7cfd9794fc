"""Tool calls leaked as text, repaired: every dialect on values, bodies, and streams split at every char."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls import Call
from gateway.config import LoggingSettings
from gateway.logs.records import RecordBuilder
from gateway.proxy import _tool_repair
from gateway.repair import ToolCallRepair, ToolCatalog
from gateway.repair.scanner import MarkupScanner
from gateway.repair.tools import typed_value
from providers.base import Endpoint, Provider, ProviderSettings
from providers.nrp import NRPProvider
from providers.registry import resolve_settings


def tool(name: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


WEATHER = tool("get_weather", city={"type": "string"}, days={"type": "integer"})
TIME = tool("get_time", zone={"type": "string"})
BODY = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER, TIME]}
ENVELOPE = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
PARIS = ("get_weather", {"city": "Paris"})
UTC = ("get_time", {"zone": "UTC"})


def markup(dialect: str, *calls: tuple[str, dict[str, Any]]) -> str:
    """`calls` written as `dialect` writes them (string values written bare in the XML dialects)."""
    if dialect == "hermes":
        return "\n".join(
            f"<tool_call>\n{orjson.dumps({'name': n, 'arguments': a}).decode()}\n</tool_call>"
            for n, a in calls
        )
    if dialect == "qwen3_coder":
        return "\n".join(
            f"<tool_call>\n<function={n}>\n"
            + "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in a.items())
            + "</function>\n</tool_call>"
            for n, a in calls
        )
    if dialect == "glm45":
        return "\n".join(
            f"<tool_call>{n}\n"
            + "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n" for k, v in a.items())
            + "</tool_call>"
            for n, a in calls
        )
    if dialect == "kimi_k2":
        return (
            "<|tool_calls_section_begin|>"
            + "".join(
                f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>"
                f"{orjson.dumps(a).decode()}<|tool_call_end|>"
                for i, (n, a) in enumerate(calls)
            )
            + "<|tool_calls_section_end|>"
        )
    invokes = "".join(
        f'<invoke name="{n}">\n'
        + "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in a.items())
        + "</invoke>\n"
        for n, a in calls
    )
    return f"<minimax:tool_call>\n{invokes}</minimax:tool_call>"


DIALECTS = ["hermes", "qwen3_coder", "glm45", "kimi_k2", "minimax_m2"]


# The issue's examples, verbatim.
EXAMPLES = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "qwen3_coder": (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    ),
    "glm45": "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
    "kimi_k2": (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
    ),
    "minimax_m2": (
        '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
        "</invoke>\n</minimax:tool_call>"
    ),
}


# Bodies -----------------------------------------------------------------------------------------------


def completion(content: str | None, finish: str = "stop") -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {
        **ENVELOPE,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def repair_body(content: str, body: dict[str, Any] = BODY) -> tuple[dict[str, Any], ToolCallRepair]:
    repair = ToolCallRepair.for_request(body)
    assert repair is not None
    return orjson.loads(repair.body(orjson.dumps(completion(content)))), repair


def calls_of(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in message["tool_calls"]]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_body_with_one_leaked_call_gets_a_real_tool_call(dialect: str) -> None:
    found, repair = repair_body(EXAMPLES[dialect])
    [choice] = found["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert calls_of(choice["message"]) == [PARIS]
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > 12
    assert repair.report() == {"count": 1, "dialects": [dialect], "left_as_text": 0}
    assert {k: found[k] for k in ENVELOPE} == {**ENVELOPE, "object": "chat.completion"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_text_before_and_several_calls_in_one_answer(dialect: str) -> None:
    assert markup(dialect, PARIS).replace(" ", "") == EXAMPLES[dialect].replace(" ", "")  # helper checked
    found, repair = repair_body("Let me look both up.\n" + markup(dialect, PARIS, UTC))
    message = found["choices"][0]["message"]
    assert message["content"] == "Let me look both up.\n"
    assert calls_of(message) == [PARIS, UTC]
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2 and repair.report()["count"] == 2


@pytest.mark.parametrize("dialect", ["qwen3_coder", "glm45", "minimax_m2"])
def test_xml_values_are_typed_by_the_tools_schema(dialect: str) -> None:
    plan = tool(
        "plan",
        title={"type": "string"},
        count={"type": "integer"},
        ratio={"type": "number"},
        done={"type": "boolean"},
        meta={"type": "object"},
        tags={"type": "array"},
        maybe={"type": ["integer", "null"]},
        either={"anyOf": [{"type": "number"}, {"type": "string"}]},
        free={},
        wrong={"type": "integer"},
    )
    values = {
        "title": "42",
        "count": "7",
        "ratio": "2.5",
        "done": "False",
        "meta": '{"a": {"b": [1, 2]}}',
        "tags": '["x", 2]',
        "maybe": "null",
        "either": "3",
        "free": "123",
        "wrong": "seven",
    }
    found, _ = repair_body(markup(dialect, ("plan", values)), {**BODY, "tools": [plan]})
    assert calls_of(found["choices"][0]["message"]) == [
        (
            "plan",
            {
                "title": "42",  # a string stays a string, however numeric it looks
                "count": 7,
                "ratio": 2.5,
                "done": False,
                "meta": {"a": {"b": [1, 2]}},
                "tags": ["x", 2],
                "maybe": None,
                "either": 3,
                "free": "123",  # the schema says nothing: text
                "wrong": "seven",  # not an integer: kept as written rather than lost
            },
        )
    ]


@pytest.mark.parametrize(
    ("text", "types", "value"),
    [
        ("5", ("integer",), 5),
        ("5.0", ("integer",), "5.0"),
        ("true", ("integer",), "true"),
        ("-1e3", ("number",), -1000.0),
        ("TRUE", ("boolean",), True),
        ("yes", ("boolean",), "yes"),
        ("[1]", ("object",), "[1]"),
        ("{}", ("array", "object"), {}),
        ("x", (), "x"),
    ],
)
def test_typed_value(text: str, types: tuple[str, ...], value: Any) -> None:
    assert typed_value(text, types) == value


def test_hermes_arguments_written_as_a_json_string_and_kimi_ids_without_namespace() -> None:
    hermes = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>'
    kimi = (
        "<|tool_calls_section_begin|> <|tool_call_begin|> get_time:3 <|tool_call_argument_begin|>"
        ' {"zone": "UTC"} <|tool_call_end|> <|tool_calls_section_end|>'
    )
    found, repair = repair_body(hermes + kimi)
    assert calls_of(found["choices"][0]["message"]) == [PARIS, UTC]
    assert repair.report()["dialects"] == ["hermes", "kimi_k2"]


LOOK_ALIKES = [
    "if a < b and b > c then <b>bold</b>",
    "Wrap it in a <tool_call> tag and it is done.",
    "<tool_call>not a call</tool_call>",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
    "<tool_call_id> <|im_end|> <minimax:other> <|tool_calls_section_begin",
    "<|tool_calls_section_begin|>nothing here<|tool_calls_section_end|>",
    '<minimax:tool_call><invoke name="get_weather"><parameter name="city">Paris</invoke></minimax:tool_call>',
    "<tool_call><function=get_weather><parameter=city>Paris</parameter></tool_call>",
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
]


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_text_that_only_resembles_markup_is_left_alone(text: str) -> None:
    repair = ToolCallRepair.for_request(BODY)
    assert repair is not None
    raw = orjson.dumps(completion(text))
    assert repair.body(raw) is raw and repair.report()["count"] == 0
    assert fold(stream(list(text)))["content"] == text


@pytest.mark.parametrize("dialect", DIALECTS)
def test_markup_naming_a_tool_not_offered_stays_text(dialect: str) -> None:
    text = "Sure. " + markup(dialect, ("delete_everything", {"path": "/"}))
    found, repair = repair_body(text)
    assert found["choices"][0] == completion(text)["choices"][0]
    assert repair.report() == {"count": 0, "dialects": [], "left_as_text": 1}


def test_no_repair_without_tools_or_with_several_choices() -> None:
    assert ToolCallRepair.for_request({"model": "m", "messages": []}) is None
    assert ToolCallRepair.for_request({**BODY, "tools": []}) is None
    assert ToolCallRepair.for_request({**BODY, "tools": [{"type": "function"}]}) is None
    assert ToolCallRepair.for_request({**BODY, "n": 2}) is None
    assert ToolCallRepair.for_request({**BODY, "n": 1}) is not None


# Streams ----------------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {**ENVELOPE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def stream(pieces: list[str], finish: str = "stop") -> list[bytes]:
    usage = {
        **ENVELOPE,
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
    }
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, finish),
        b"data: " + orjson.dumps(usage) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


def through(events: list[bytes], repair: ToolCallRepair | None = None) -> list[bytes]:
    repair = repair or ToolCallRepair.for_request(BODY)
    assert repair is not None
    return [*repair.feed(events), *repair.finish()]


def fold(events: list[bytes]) -> dict[str, Any]:
    """What a client makes of a stream; every chunk must keep the upstream's envelope."""
    content, calls, finish = [], {}, None
    assert events[-1] == b"data: [DONE]\n\n"
    for event in events[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = orjson.loads(event[6:])
        assert {k: data[k] for k in ENVELOPE} == ENVELOPE
        for choice in data["choices"]:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or ():
                assert call["type"] == "function" and call["id"].startswith("call_")
                assert call["index"] not in calls
                calls[call["index"]] = (call["function"]["name"], orjson.loads(call["function"]["arguments"]))
            finish = choice["finish_reason"] or finish
    assert sorted(calls) == list(range(len(calls)))
    return {"content": "".join(content), "calls": [calls[i] for i in sorted(calls)], "finish": finish}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_stream_split_at_every_character_gives_the_same_calls(dialect: str) -> None:
    text = "Sure, both.\n" + markup(dialect, PARIS, UTC)
    expected = {"content": "Sure, both.\n", "calls": [PARIS, UTC], "finish": "tool_calls"}
    assert fold(through(stream(list(text)))) == expected
    for cut in range(len(text) + 1):
        assert fold(through(stream([text[:cut], text[cut:]]))) == expected, cut


@pytest.mark.parametrize("dialect", DIALECTS)
def test_text_flows_at_once_and_only_possible_markup_is_held(dialect: str) -> None:
    text = "Checking the weather now.\n" + markup(dialect, PARIS)
    opens = text.index("<")
    repair = ToolCallRepair.for_request(BODY)
    assert repair is not None
    sent = fold([*repair.feed([chunk({"role": "assistant", "content": ""})]), b"data: [DONE]\n\n"])["content"]
    for i, char in enumerate(text):
        out = repair.feed([chunk({"content": char})])
        sent += fold([*out, b"data: [DONE]\n\n"])["content"]
        assert sent == text[: min(i + 1, opens)]
        if i < opens:
            assert out == [chunk({"content": char})]  # the upstream's own bytes


def test_a_stream_without_markup_passes_as_the_exact_upstream_bytes() -> None:
    events = stream(["Plain ", "text, with a<b ", "and x > y", " and <b>tags</b> ", "and ok."])
    events.insert(2, b": keep-alive\n\n")
    out = through(events)
    assert out == events and all(a is b for a, b in zip(out, events, strict=True))


def test_an_answer_cut_short_releases_what_was_held() -> None:
    text = 'Almost: <tool_call>\n{"name": "get_we'
    result = fold(through(stream(list(text), finish="length")))
    assert result == {"content": text, "calls": [], "finish": "length"}
    cut = [e for e in stream(list(text)) if b'finish_reason":"stop' not in e and b"usage" not in e]
    assert fold(through(cut)) == {"content": text, "calls": [], "finish": None}


def test_upstream_tool_calls_keep_their_indices_and_repaired_ones_follow() -> None:
    own = {
        "index": 0,
        "id": "call_up",
        "type": "function",
        "function": {"name": "get_time", "arguments": "{}"},
    }
    events = stream(["<tool_call>", markup("hermes", PARIS).removeprefix("<tool_call>")])
    events.insert(1, chunk({"tool_calls": [own]}))
    assert fold(through(events))["calls"] == [("get_time", {}), PARIS]


def test_a_block_past_the_cap_is_released_as_text_and_later_markup_still_repaired() -> None:
    catalog = ToolCatalog.from_body(BODY)
    assert catalog is not None
    long = "<tool_call>" + "x" * 200 + "</tool_call>"
    text = "a " + long + " b " + markup("hermes", PARIS)
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    repair = ToolCallRepair(catalog, max_held=100)
    result = fold(through(stream(pieces), repair))
    assert result == {"content": "a " + long + " b ", "calls": [PARIS], "finish": "tool_calls"}
    assert repair.report() == {"count": 1, "dialects": ["hermes"], "left_as_text": 1}


def _seconds(feed: Any, n: int) -> float:
    start = time.perf_counter()
    feed(n)
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "hostile",
    [
        lambda n: ["<tool_call>", *("x" * n), "</tool_call>"],  # one block in many pieces
        lambda n: ["<"] * n,  # openers that never become one
        lambda n: ["<tool_call>" + "<" * n + "</tool_call>"],  # one piece holding every kind of start
        lambda n: ["<tool_call><function=get_weather>" + "<parameter=city>x</parameter>" * (n // 30)],
    ],
)
def test_a_hostile_upstream_costs_linear_time(hostile: Any) -> None:
    catalog = ToolCatalog.from_body(BODY)
    assert catalog is not None

    def feed(n: int) -> None:
        scanner = MarkupScanner(catalog, max_held=10 * n)
        for piece in hostile(n):
            scanner.feed(piece)
        scanner.feed("</function></tool_call>")
        scanner.finish()

    feed(1000)  # warm up
    small, large = min(_seconds(feed, 8_000) for _ in range(3)), min(_seconds(feed, 64_000) for _ in range(3))
    assert large < 8 * 3 * small  # 8 times the input: linear is ~8x, quadratic would be ~64x


PIECES = [
    "<",
    ">",
    "|",
    "/",
    "a",
    " ",
    "\n",
    "tool_call",
    "<tool_call>",
    "</tool_call>",
    "<|tool_calls_section_begin|>",
]
PIECES += [markup(d, PARIS) for d in DIALECTS] + [
    '{"name": "get_weather", "arguments": {}}',
    "<|tool_call_end|>",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12), st.lists(st.integers(0, 400), max_size=6))
def test_any_text_split_anywhere_gives_what_the_whole_body_gives(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    result = fold(through(stream(pieces)))
    found, _ = repair_body(text)
    message = found["choices"][0]["message"]
    calls = calls_of(message) if "tool_calls" in message else []
    assert result["calls"] == calls
    if not calls:  # nothing repaired: not a character lost or changed
        assert result["content"] == text == message["content"] and result["finish"] == "stop"
    else:
        assert message["content"] == (result["content"] if result["content"].strip() else None)


# The plugin seam and the records ------------------------------------------------------------------------


def settings_with(**kw: Any) -> ProviderSettings:
    return ProviderSettings(name="p", plugin="openai", endpoint="https://x.example/v1", **kw)


def test_a_provider_setting_turns_repair_on_for_all_models_or_listed_ones() -> None:
    assert not Provider(settings_with(), {}).repairs_tool_calls("qwen3")
    assert Provider(settings_with(repair_tool_calls=True), {}).repairs_tool_calls("anything")
    listed = Provider(settings_with(repair_tool_calls=("qwen3", "glm-")), {})
    assert [listed.repairs_tool_calls(m) for m in ("qwen3", "qwen3-coder", "glm-4.7", "kimi")] == [
        True,
        True,
        True,
        False,
    ]


def test_nrp_repairs_by_default_and_a_config_line_changes_it() -> None:
    problems: list[str] = []

    def nrp(section: dict[str, Any]) -> Provider:
        return NRPProvider(resolve_settings("nrp", section, NRPProvider, {}, problems), {})

    assert nrp({}).repairs_tool_calls("kimi") and nrp({}).repairs_tool_calls("qwen3")
    assert not nrp({"repair_tool_calls": False}).repairs_tool_calls("kimi")
    only = nrp({"repair_tool_calls": ["kimi"]})
    assert only.repairs_tool_calls("kimi") and not only.repairs_tool_calls("glm-4.7")
    assert problems == []


def test_the_proxy_repairs_only_chat_answers_to_requests_offering_tools() -> None:
    on, off = Provider(settings_with(repair_tool_calls=True), {}), Provider(settings_with(), {})

    def repair_for(body: dict[str, Any], provider: Provider = on, endpoint: Endpoint = Endpoint.CHAT) -> Any:
        return _tool_repair(Call("r", endpoint, body=body, model="m"), provider)

    assert isinstance(repair_for(BODY), ToolCallRepair)
    assert repair_for(BODY, off) is None
    assert repair_for(BODY, endpoint=Endpoint.COMPLETIONS) is None
    assert repair_for({**BODY, "tools": None}) is None


def test_both_records_say_what_was_repaired_and_hold_the_repaired_answer() -> None:
    call = Call("ab" * 16, Endpoint.CHAT, body=BODY, model="m", provider="nrp", status=200, stream=True)
    call.tool_repair = repair = ToolCallRepair.for_request(BODY)
    for event in through(stream(list("On it.\n" + markup("glm45", PARIS))), repair):
        if event != b"data: [DONE]\n\n":
            call.answer.add_chunk(event[6:].strip())
    builder = RecordBuilder(LoggingSettings())
    [request], response = builder.request(call), builder.response(call, time.time())
    assert request["tool_calls_repaired"] is True
    assert response["tool_calls_repaired"] == {"count": 1, "dialects": ["glm45"], "left_as_text": 0}
    assert response["tool_calls"] == [{"name": "get_weather", "arguments": '{"city":"Paris"}'}]
    assert response["content"] == "On it.\n" and response["finish_reason"] == "tool_calls"
    plain = Call("cd" * 16, Endpoint.CHAT, body=BODY, model="m", provider="x", status=200)
    [request], response = builder.request(plain), builder.response(plain, time.time())
    assert request["tool_calls_repaired"] is False and response["tool_calls_repaired"] is None
