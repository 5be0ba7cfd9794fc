"""The agent runner end to end: a real MCP server, the real gateway as a subprocess, and the fake upstream
scripted to ask for tools and then answer. Asserted: what the runner prints and exits with, its transcript,
and the gateway's JSONL records (origin, session id, every tool call and tool result).

The upstream runs in a thread with its own event loop, so the gateway subprocess and the runner (run as a
real subprocess, or through `main()` in this process) can all be plain blocking calls.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fake_upstream import FakeUpstream, Reply
from gateway_process import PROXY_KEY, GatewayProcess, fake_config, free_port
from mcp_server import CITIES, serve_in_subprocess

from gateway.agent.cli import main
from gateway.agent.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "https://chat.example.org"
SUM_QUESTION = "What is 2 + 3, and what do you know about Paris?"
SUM_ANSWER = f"2 + 3 = 5. {CITIES['paris']}."
BROKEN_QUESTION = "Please try the broken tools."
FOREVER_QUESTION = "Keep adding forever."
SLEEPY_QUESTION = "Take your time."
PROMPT_QUESTION = "What did the system prompt say?"
FIRST_CALLS = {
    SUM_QUESTION: [("add", '{"a": 2, "b": 3}'), ("lookup", '{"city": "Paris"}')],
    BROKEN_QUESTION: [("teleport", "{}"), ("add", '{"a": 2,'), ("lookup", '{"city": "Atlantis"}')],
}


def script(body: dict[str, Any]) -> Reply:
    """The model: the question picks a script; tool results, once present, are folded into the answer."""
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if question == FOREVER_QUESTION:
        return Reply(content="", tool_calls=[{"name": "add", "arguments": '{"a": 1, "b": 1}'}])
    if question == SLEEPY_QUESTION:
        return Reply(content="too late", delay=8)
    if question == PROMPT_QUESTION:
        return Reply(content=f"It said: {messages[0]['content']}")
    if not results:
        return Reply(content="", tool_calls=[{"name": n, "arguments": a} for n, a in FIRST_CALLS[question]])
    if question == SUM_QUESTION:
        return Reply(content=f"2 + 3 = {results[0]}. {results[1]}.")
    return Reply(content="Some tools failed: " + " | ".join(results))


@dataclass
class Stack:
    """The three servers a run talks to, and where the gateway spools its records."""

    gateway_url: str
    mcp_url: str
    spool: Path
    upstream: FakeUpstream

    def args(self, question: str, *extra: str) -> list[str]:
        """The runner's command line against this stack."""
        return [question, "--model", "fake-model", "--proxy-url", self.gateway_url, "--api-key", PROXY_KEY,
                "--mcp-url", self.mcp_url, "--origin", ORIGIN, *extra]  # fmt: skip

    def records(self, session_id: str, count: int, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """The gateway's records of one session, once `count` of them are on disk (written at once)."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [r for r in self._all_records() if r.get("session_id") == session_id]
            if len(found) >= count or time.monotonic() > deadline:
                return sorted(found, key=lambda r: (r["timestamp"], r["type"] == "response"))
            time.sleep(0.1)

    def _all_records(self) -> list[dict[str, Any]]:
        lines = [line for path in self.spool.rglob("*.jsonl*") for line in path.read_text().splitlines()]
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[tuple[str, FakeUpstream]]:
    """The fake upstream, served from its own thread and event loop for the whole module."""
    upstream = FakeUpstream(responder=script)
    loop = asyncio.new_event_loop()
    # handler_cancellation: a reply still sleeping when the gateway hangs up must end, not outlive the loop.
    runner = web.AppRunner(upstream.app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", upstream
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def stack(
    upstream_url: tuple[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A real MCP server and the real gateway (full capture, spooling to a temporary folder)."""
    tmp = tmp_path_factory.mktemp("agent-stack")
    spool = tmp / "spool"
    url, upstream = upstream_url
    config = fake_config(url, logging={"capture": "full", "spool_dir": str(spool)})
    with (
        serve_in_subprocess() as mcp_url,
        GatewayProcess(tmp, config, env={"LOG_SPOOL_DIR": str(spool)}) as gw,
    ):
        yield Stack(gw.url, mcp_url, spool, upstream)


def run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`main()` in this process: the whole command line but the three-line script wrapper."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_replayed_session_is_in_the_gateway_logs_as_production_traffic(
    stack: Stack, tmp_path: Path
) -> None:
    transcript = tmp_path / "run.jsonl"
    session = "replay-0001"
    argv = [*stack.args(SUM_QUESTION, "--session-id", session, "--transcript", str(transcript))]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "agent_runner.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == ExitCode.ANSWERED, done.stderr
    assert done.stdout == SUM_ANSWER + "\n"

    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "model", "tool", "tool", "model", "end"]
    assert events[0]["session_id"] == session and events[0]["tools"] == ["add", "lookup", "slow"]
    assert [(c["name"], c["arguments"]) for c in events[1]["tool_calls"]] == FIRST_CALLS[SUM_QUESTION]
    assert [(e["name"], e["content"], e["failure"]) for e in events[2:4]] == [
        ("add", "5", None),
        ("lookup", CITIES["paris"], None),
    ]
    assert events[4]["content"] == SUM_ANSWER and events[4]["tool_calls"] == []
    assert events[5]["exit_code"] == 0 and events[5]["summary"]["tool_calls"] == {"add": 1, "lookup": 1}
    request_ids = [events[1]["request_id"], events[4]["request_id"]]
    assert all(request_ids) and events[5]["summary"]["request_ids"] == request_ids
    for request_id in request_ids:
        assert request_id in done.stderr  # the summary names them

    records = stack.records(session, 4)
    requests = [r for r in records if r["type"] == "request"]
    responses = {r["request_id"]: r for r in records if r["type"] == "response"}
    assert [r["request_id"] for r in requests] == request_ids
    assert {r["origin"] for r in records} == {ORIGIN}
    assert {r["session_id"] for r in records} == {session}
    assert all(r["tools_count"] == 3 and r["user_question"] == SUM_QUESTION for r in requests)
    assert requests[0]["client"] == "agent-runner"
    first, second = (responses[request_id] for request_id in request_ids)
    assert first["tool_calls"] == [{"name": n, "arguments": a} for n, a in FIRST_CALLS[SUM_QUESTION]]
    assert requests[1]["tool_results_this_turn"] == [
        {"tool_call_id": "call_0", "name": "add", "content": "5"},
        {"tool_call_id": "call_1", "name": "lookup", "content": CITIES["paris"]},
    ]
    assert [m["role"] for m in requests[1]["messages"]] == ["user", "assistant", "tool", "tool"]
    assert second["content"] == SUM_ANSWER and second["status"] == 200
    assert {r["body"]["user"] for r in stack.upstream.requests if r["body"].get("user") == session} == {
        session
    }


def test_streamed_run_prints_the_answer_and_logs_the_stream(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_in_process(stack.args(SUM_QUESTION, "--stream"), capsys)
    assert (code, out) == (ExitCode.ANSWERED, SUM_ANSWER + "\n")
    session = err.split("session ", 1)[1].split(";", 1)[0]
    assert len(session) == 32  # a fresh id, the same on every call of the run
    records = stack.records(session, 4)
    assert len(records) == 4 and all(r["stream"] for r in records)
    assert all(r["tokens"]["total_tokens"] > 0 for r in records if r["type"] == "response")
    assert "tokens       prompt" in err


def test_tool_failures_go_back_to_the_model_and_into_the_logs(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    transcript = tmp_path / "run.jsonl"
    argv = stack.args(BROKEN_QUESTION, "--session-id", "replay-broken", "--transcript", str(transcript))
    code, out, err = run_in_process(argv, capsys)
    assert code == ExitCode.TOOL_FAILURES, err
    assert out.startswith("Some tools failed: Error: unknown tool 'teleport'")
    tools = [json.loads(line) for line in transcript.read_text().splitlines()]
    failures = [(e["name"], e["failure"]) for e in tools if e["event"] == "tool"]
    assert failures == [("teleport", "unknown_tool"), ("add", "bad_arguments"), ("lookup", "tool_error")]
    assert "failed: teleport (unknown_tool), add (bad_arguments), lookup (tool_error)" in err

    records = stack.records("replay-broken", 4)
    second_request = [r for r in records if r["type"] == "request"][1]
    results = second_request["tool_results_this_turn"]
    assert [r["name"] for r in results] == ["teleport", "add", "lookup"]
    assert all(r["content"].startswith("Error") for r in results)
    assert "no city named 'Atlantis'" in results[2]["content"]


def test_max_turns_ends_a_model_that_never_stops(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    argv = stack.args(FOREVER_QUESTION, "--max-turns", "2", "--session-id", "replay-forever")
    code, out, err = run_in_process(argv, capsys)
    assert (code, out) == (ExitCode.MAX_TURNS, "")
    assert "--max-turns 2 reached; the model still wanted: add" in err
    assert len([r for r in stack.records("replay-forever", 4) if r["type"] == "request"]) == 2


def test_a_refused_key_exits_6_and_names_the_request(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*stack.args(SUM_QUESTION, "--session-id", "replay-refused"), "--api-key", "not-the-key"]
    code, out, err = run_in_process(argv, capsys)
    assert (code, out) == (ExitCode.KEY_REFUSED, "")
    assert "error: the gateway refused the API key (401)" in err
    response = next(r for r in stack.records("replay-refused", 2) if r["type"] == "response")
    assert response["status"] == 401 and response["request_id"] in err


def test_a_slow_model_times_out_with_exit_7(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    # No MCP server here: the short timeout is for the model alone.
    argv = [
        SLEEPY_QUESTION,
        "--model",
        "fake-model",
        "--proxy-url",
        stack.gateway_url,
        "--api-key",
        PROXY_KEY,
    ]
    code, out, err = run_in_process([*argv, "--timeout", "1"], capsys)
    assert (code, out) == (ExitCode.MODEL_TIMEOUT, "")
    assert "no answer from the model within 1 s" in err


def test_an_unreachable_mcp_server_exits_5_before_any_model_call(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    argv = [*stack.args(SUM_QUESTION, "--session-id", "replay-no-mcp"), "--mcp-url", dead]
    code, out, err = run_in_process(argv, capsys)
    assert (code, out) == (ExitCode.MCP_UNAVAILABLE, "")
    assert f"cannot use the MCP server at {dead}" in err
    assert stack.records("replay-no-mcp", 1, wait_s=0.5) == []


def test_the_system_prompt_is_sent_first(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Answer in one line.", encoding="utf-8")
    argv = stack.args(PROMPT_QUESTION, "--system-prompt", str(prompt), "--session-id", "replay-prompt", "-q")
    code, out, err = run_in_process(argv, capsys)
    assert (code, out, err) == (ExitCode.ANSWERED, "It said: Answer in one line.\n", "")
    request = next(r for r in stack.records("replay-prompt", 2) if r["type"] == "request")
    assert request["messages"][0]["role"] == "system"
