"""The agent runner's pure parts, tested on values: arguments, replies, the loop with fakes, the summary."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp_types import CallToolResult, ImageContent, TextContent, Tool
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.agent.cli import settings_from_args
from gateway.agent.errors import ExitCode, KeyRefused, ModelCallFailed, ModelTimeout, UsageError
from gateway.agent.loop import drive
from gateway.agent.model import status_error
from gateway.agent.prompt import load_system_prompt
from gateway.agent.replies import StreamedTurn, turn_from_completion
from gateway.agent.report import Reporter
from gateway.agent.settings import RunSettings
from gateway.agent.stats import RunResult, format_summary
from gateway.agent.toolbox import Toolbox, openai_function, parse_arguments, result_text, transport_kind
from gateway.agent.turns import FailureKind, ModelTurn, ToolCall, ToolOutcome

ENV = {"AGENT_MODEL": "fake-model", "OPENAI_API_KEY": "sk-test"}


def settings(**changes: Any) -> RunSettings:
    base: dict[str, Any] = {
        "question": "q",
        "model": "m",
        "proxy_url": "http://gw",
        "api_key": "k",
        "session_id": "s1",
        "quiet": True,
    }
    return RunSettings(**{**base, **changes})


# --- command line ---------------------------------------------------------------------------------------


def test_defaults_come_from_the_environment() -> None:
    env = {
        **ENV,
        "AGENT_PROXY_URL": "http://gw:9",
        "AGENT_ORIGIN": "https://app.example",
        "AGENT_TIMEOUT": "7",
    }
    s = settings_from_args(["hello"], env)
    assert (s.model, s.api_key, s.proxy_url, s.origin, s.timeout) == (
        "fake-model",
        "sk-test",
        "http://gw:9",
        "https://app.example",
        7.0,
    )
    assert s.base_url == "http://gw:9/v1"
    assert (s.max_turns, s.stream, s.mcp_transport) == (20, False, "auto")


def test_each_run_gets_a_fresh_session_id_unless_one_is_given() -> None:
    first, second = settings_from_args(["q"], ENV), settings_from_args(["q"], ENV)
    assert first.session_id != second.session_id
    assert len(first.session_id) == 32 and int(first.session_id, 16) >= 0
    assert settings_from_args(["q", "--session-id", "abc"], ENV).session_id == "abc"


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["q"], {"AGENT_MODEL": "m"}, "no API key"),
        (["q"], {"OPENAI_API_KEY": "k"}, "no model"),
        (["q", "--max-turns", "0"], ENV, "at least 1"),
        (["q", "--timeout", "-1"], ENV, "positive"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from_args(argv, env)
    assert exited.value.code == ExitCode.USAGE
    assert needle in capsys.readouterr().err


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--help"], ENV)
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"  {int(code):>3}  " in out


# --- tools ----------------------------------------------------------------------------------------------


def test_mcp_tools_become_openai_functions() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tool = Tool(name="add", description="Add.", input_schema=schema)
    assert openai_function(tool) == {
        "type": "function",
        "function": {"name": "add", "description": "Add.", "parameters": schema},
    }


@pytest.mark.parametrize(
    ("text", "expected"), [("", {}), ("  ", {}), ('{"a": 1}', {"a": 1}), ('{"s": "é"}', {"s": "é"})]
)
def test_arguments_parse_to_objects(text: str, expected: dict[str, Any]) -> None:
    assert parse_arguments(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"), [('{"a": 1', "not valid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_bad_arguments_say_why(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_arguments(text)


def test_tool_results_read_as_text() -> None:
    result = CallToolResult(
        content=[
            TextContent(text="one"),
            ImageContent(data="AAAA", mime_type="image/png"),
            TextContent(text="two"),
        ]
    )
    assert result_text(result) == "one\n[image image/png]\ntwo"
    assert result_text(CallToolResult(content=[], structured_content={"result": 5})) == '{"result": 5}'


@pytest.mark.parametrize(
    ("url", "requested", "kind"),
    [
        ("http://127.0.0.1:8000/mcp", "auto", "http"),
        ("https://tools.example/sse", "auto", "sse"),
        ("https://tools.example/sse/", "auto", "sse"),
        ("stdio:python server.py", "auto", "stdio"),
        ("python server.py", "auto", "stdio"),
        ("http://127.0.0.1:8000/events", "sse", "sse"),
    ],
)
def test_the_transport_follows_the_url_or_the_flag(url: str, requested: Any, kind: str) -> None:
    assert transport_kind(url, requested) == kind


async def test_an_unknown_tool_is_answered_without_the_server() -> None:
    outcome = await Toolbox(None, [], 5).call(ToolCall("c1", "teleport", "{}"))
    assert outcome.failure == "unknown_tool"
    assert outcome.as_message() == {"role": "tool", "tool_call_id": "c1", "content": outcome.content}
    assert "teleport" in outcome.content


# --- replies --------------------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> Any:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    data = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices}
    if usage:
        data["usage"] = usage
    return ChatCompletionChunk.model_validate(data)


def test_stream_chunks_fold_into_one_turn() -> None:
    folded = StreamedTurn()
    printed = [
        folded.add(_chunk({"role": "assistant", "content": ""})),
        folded.add(_chunk({"content": "Let me "})),
        folded.add(_chunk({"content": "check."})),
        folded.add(
            _chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "add", "arguments": ""}}]})
        ),
        folded.add(_chunk({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "lookup"}}]})),
        folded.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 2,'}}]})),
        folded.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "b": 3}'}}]})),
        folded.add(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Lima"}'}}]})),
        folded.add(_chunk({}, "tool_calls")),
        folded.add(_chunk({}, usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})),
    ]
    assert "".join(printed) == "Let me check."
    assert folded.build("rid", 12) == ModelTurn(
        "Let me check.",
        (ToolCall("c0", "add", '{"a": 2, "b": 3}'), ToolCall("c1", "lookup", '{"city": "Lima"}')),
        "tool_calls",
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        "rid",
        12,
    )


def test_a_whole_completion_becomes_a_turn() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c0", "type": "function", "function": {"name": "add", "arguments": "{}"}}
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )
    turn = turn_from_completion(completion, "rid", 5)
    assert turn.tool_calls == (ToolCall("c0", "add", "{}"),)
    assert turn.as_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
    }


@pytest.mark.parametrize(
    ("status", "kind"), [(401, KeyRefused), (403, KeyRefused), (504, ModelTimeout), (502, ModelCallFailed)]
)
def test_gateway_statuses_map_to_exit_codes(status: int, kind: type[Exception]) -> None:
    error = status_error(status, "nope", "rid")
    assert isinstance(error, kind)
    assert error.request_id == "rid"


# --- the loop, with plain fakes -------------------------------------------------------------------------


class ScriptedModel:
    """Answers each turn from a list, recording the conversations it was sent."""

    def __init__(self, turns: list[ModelTurn]) -> None:
        self.turns = turns
        self.seen: list[list[dict[str, Any]]] = []

    async def complete(self, messages: list[dict[str, Any]], on_text: Callable[[str], None]) -> ModelTurn:
        self.seen.append(list(messages))
        turn = self.turns[min(len(self.seen), len(self.turns)) - 1]
        on_text(turn.content)
        return turn


class EchoTools:
    async def call(self, call: ToolCall) -> ToolOutcome:
        failure: FailureKind | None = "tool_error" if call.name == "broken" else None
        return ToolOutcome(call, f"{call.name} says {call.arguments}", failure)


def _calls(*names: str) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(f"c{i}", name, "{}") for i, name in enumerate(names))


async def test_parallel_tool_results_follow_the_calls_in_order() -> None:
    model = ScriptedModel(
        [ModelTurn("", _calls("a", "b", "c"), usage={"total_tokens": 4}), ModelTurn("done")]
    )
    reporter = Reporter(settings(), io.StringIO(), io.StringIO())
    result = await drive(model, EchoTools(), [{"role": "user", "content": "q"}], 5, reporter)
    assert result == RunResult("done", ExitCode.ANSWERED, "answered")
    assert [m["role"] for m in model.seen[1]] == ["user", "assistant", "tool", "tool", "tool"]
    assert [m["tool_call_id"] for m in model.seen[1][2:]] == ["c0", "c1", "c2"]
    assert reporter.stats.turns == 2 and dict(reporter.stats.tool_calls) == {"a": 1, "b": 1, "c": 1}


async def test_a_failed_tool_still_answers_but_colours_the_exit_code() -> None:
    model = ScriptedModel([ModelTurn("", _calls("broken")), ModelTurn("sorry")])
    reporter = Reporter(settings(), io.StringIO(), io.StringIO())
    result = await drive(model, EchoTools(), [], 5, reporter)
    assert (result.answer, result.exit_code) == ("sorry", ExitCode.TOOL_FAILURES)


async def test_max_turns_stops_a_model_that_never_stops_asking() -> None:
    model = ScriptedModel([ModelTurn("", _calls("a"))])
    reporter = Reporter(settings(), io.StringIO(), io.StringIO())
    result = await drive(model, EchoTools(), [], 3, reporter)
    assert (result.answer, result.exit_code) == (None, ExitCode.MAX_TURNS)
    assert len(model.seen) == 3 and sum(reporter.stats.tool_calls.values()) == 2


def test_the_summary_names_everything_needed_to_find_the_run(tmp_path: Path) -> None:
    transcript = tmp_path / "t.jsonl"
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(settings(quiet=False, transcript=transcript), out, err)
    reporter.model_turn(1, ModelTurn("", _calls("add", "add"), usage={"prompt_tokens": 3, "total_tokens": 3}))
    reporter.model_turn(2, ModelTurn("fine", request_id="r2", usage={"prompt_tokens": 5, "total_tokens": 5}))
    reporter.stats.add_request_id("r1")
    for call in _calls("add", "add"):
        reporter.tool_outcome(1, ToolOutcome(call, "x", "bad_arguments" if call.id == "c1" else None))
    reporter.finish(RunResult("fine", ExitCode.TOOL_FAILURES, "answered; 1 tool call(s) failed"))
    assert out.getvalue() == "fine\n"
    summary = err.getvalue()
    for needle in (
        "exit 3",
        "s1",
        "2 (max 20)",
        "add x2",
        "add (bad_arguments)",
        "prompt 8, total 8",
        "r2, r1",
    ):
        assert needle in summary
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [e["event"] for e in events] == ["model", "model", "tool", "tool", "end"]
    assert events[-1]["summary"]["tool_calls"] == {"add": 2}


def test_format_summary_without_tools_or_usage() -> None:
    reporter = Reporter(settings(), io.StringIO(), io.StringIO())
    text = format_summary(reporter.stats, RunResult(None, ExitCode.KEY_REFUSED, "refused"), 20)
    assert "refused (exit 6)" in text and "tool calls   none" in text and "not reported" in text


# --- system prompt --------------------------------------------------------------------------------------


async def test_system_prompt_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prompt.md"
    path.write_text("You are terse.", encoding="utf-8")
    assert await load_system_prompt(str(path)) == "You are terse."
    assert await load_system_prompt(None) is None
    with pytest.raises(UsageError, match="cannot read"):
        await load_system_prompt(str(tmp_path / "missing.md"))


async def test_system_prompt_from_a_url(aiohttp_server: Any) -> None:
    app = web.Application()

    async def prompt(request: web.Request) -> web.Response:
        return web.Response(text="From the web.")

    app.router.add_get("/prompt.md", prompt)
    server = await aiohttp_server(app)
    assert await load_system_prompt(str(server.make_url("/prompt.md"))) == "From the web."
    with pytest.raises(UsageError, match="HTTP 404"):
        await load_system_prompt(str(server.make_url("/missing.md")))
