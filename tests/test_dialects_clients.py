"""Real clients, unmodified, through the gateway to a fake upstream speaking each dialect as vLLM and
Anthropic do: the `anthropic` SDK, the `openai` SDK's Responses API, and the Claude Code and Codex CLIs
(installed by `scripts/test.sh` from tests/clients; a missing CLI fails its test, it is never skipped).

The CLIs run with the network features their documentation lets one turn off turned off, a fresh home
folder each, and the gateway as their only server.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from conftest import PROVIDER_KEY, PROXY_KEY, MakeGateway, RunningGateway
from fake_upstream import FakeUpstream, Reply
from test_dialects_gateway import dialect_config, records

CLIENTS = Path(__file__).resolve().parent / "clients" / "node_modules" / ".bin"
WEATHER_TOOL = {"name": "weather", "arguments": '{"city": "Paris"}'}
CLI_SECONDS = 120


@pytest.fixture
async def gateway(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    return await make_gateway(dialect_config(fake_upstream.url))


def claude_sdk(gateway: RunningGateway, **auth: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, max_retries=0, **(auth or {"api_key": PROXY_KEY}))


def openai_sdk(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=PROXY_KEY, max_retries=0)


ASK = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}]
FUNCTIONS = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]


@pytest.mark.parametrize("auth", [{"api_key": PROXY_KEY}, {"auth_token": PROXY_KEY}])
async def test_anthropic_sdk_streams_thinking_and_text(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.queue(Reply(content="It is sunny.", reasoning="Check the weather."))
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with claude_sdk(gateway, **auth).messages.stream(
        model="fake-model",
        max_tokens=2000,
        messages=ASK,
        thinking=thinking,
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert text == "It is sunny." and message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["thinking", "text"]
    [(_, answer)] = records(gateway)
    assert fake_upstream.requests[0]["body"]["thinking"] == thinking
    assert (answer["content"], answer["reasoning_content"]) == ("It is sunny.", "Check the weather.")
    assert answer["tokens"]["completion_tokens"] == message.usage.output_tokens


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_sdk_gets_tool_calls_whole(
    gateway: RunningGateway, fake_upstream: FakeUpstream, stream: bool
) -> None:
    fake_upstream.queue(Reply(content="", tool_calls=[WEATHER_TOOL]))
    client = claude_sdk(gateway)
    if stream:
        async with client.messages.stream(
            model="fake-model",
            max_tokens=100,
            messages=ASK,
            tools=TOOLS,
        ) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(
            model="fake-model",
            max_tokens=100,
            messages=ASK,
            tools=TOOLS,
        )
    [block] = message.content
    assert block.type == "tool_use" and block.name == "weather" and block.input == {"city": "Paris"}
    [(request, answer)] = records(gateway)
    assert request["tools_count"] == 1 and answer["finish_reason"] == "tool_use"
    assert [json.loads(c["arguments"]) for c in answer["tool_calls"]] == [{"city": "Paris"}]


async def test_anthropic_sdk_counts_tokens_and_hears_of_errors_mid_stream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    client = claude_sdk(gateway)
    counted = await client.messages.count_tokens(model="fake-model", messages=ASK)
    assert counted.input_tokens == 4
    for reply in (
        Reply(content="one two", stream_error="Overloaded"),
        Reply(content="a b c d e", abort_after=3),
    ):
        fake_upstream.queue(reply)
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model="fake-model", max_tokens=9, messages=ASK) as events:
                await events.get_final_message()
    errors = [answer["error"] for _, answer in records(gateway)]
    assert errors[1] == "Overloaded" and "broke off" in errors[2]


async def test_openai_sdk_streams_a_response_with_a_function_call(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.queue(Reply(content="Checking.", reasoning="Use the tool.", tool_calls=[WEATHER_TOOL]))
    stream = await openai_sdk(gateway).responses.create(
        model="fake-model",
        input="Weather in Paris?",
        tools=FUNCTIONS,
        stream=True,
    )
    kinds = [event.type async for event in stream if event.type != "response.completed" or (done := event)]
    assert kinds[0] == "response.created" and "response.function_call_arguments.delta" in kinds
    response = done.response
    assert response.output_text == "Checking."
    [call] = [item for item in response.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("weather", {"city": "Paris"})
    [(request, answer)] = records(gateway)
    assert request["user_question"] == "Weather in Paris?" and request["tools_count"] == 1
    assert answer["content"] == "Checking." and answer["reasoning_content"] == "Use the tool."
    assert answer["tokens"]["prompt_tokens"] == response.usage.input_tokens


async def test_openai_sdk_gets_a_whole_response_and_a_streamed_one_alike(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    client = openai_sdk(gateway)
    fake_upstream.queue(Reply(content="Sunny.", tool_calls=[WEATHER_TOOL]))
    whole = await client.responses.create(model="fake-model", input="Weather?", tools=FUNCTIONS)
    fake_upstream.queue(Reply(content="Sunny.", tool_calls=[WEATHER_TOOL]))
    async with client.responses.stream(model="fake-model", input="Weather?", tools=FUNCTIONS) as events:
        streamed = await events.get_final_response()
    for response in (whole, streamed):
        assert response.output_text == "Sunny." and response.status == "completed"
        assert [i.type for i in response.output] == ["message", "function_call"]
    first, second = (answer for _, answer in records(gateway))
    for key in ("content", "tool_calls", "finish_reason", "tokens"):
        assert first[key] == second[key]
    assert (first["stream"], second["stream"]) == (False, True)


async def test_openai_sdk_raises_on_the_gateways_own_error_mid_stream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.queue(Reply(content="a b c d e f g", abort_after=4))
    stream = await openai_sdk(gateway).responses.create(model="fake-model", input="hi", stream=True)
    with pytest.raises(openai.APIError, match="broke off"):
        async for _ in stream:
            pass


def cli(name: str) -> Path:
    """An installed agent CLI; its absence fails the test loudly."""
    path = CLIENTS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not installed: run scripts/test.sh (it runs `npm ci` in tests/clients)")
    return path


async def run_cli(command: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """Run a CLI to its end within CLI_SECONDS; its stdout and stderr, after checking it exited 0."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**base, **env},
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{command[0]} did not finish within {CLI_SECONDS} s")
    assert proc.returncode == 0, f"{command[0]} exited {proc.returncode}:\n{err.decode()[-3000:]}"
    return out.decode(), err.decode()


def answered_tool(body: dict[str, Any]) -> bool:
    """Whether the conversation's last turn carries a tool's result (Messages or Responses shape)."""
    turns = body.get("messages") or body.get("input") or []
    last = turns[-1] if isinstance(turns, list) and turns else {}
    content = last.get("content") if isinstance(last, dict) else None
    blocks = content if isinstance(content, list) else []
    return last.get("type") == "function_call_output" or any(b.get("type") == "tool_result" for b in blocks)


def tool_then_text(tool: dict[str, str], text: str) -> Any:
    """A responder for an agent's loop: ask for `tool`, then answer `text` once its result came back."""

    def respond(body: dict[str, Any]) -> Reply:
        if answered_tool(body):
            return Reply(content=text, reasoning="The tool answered.")
        return Reply(content="", reasoning="I will use the tool.", tool_calls=[tool])

    return respond


@pytest.mark.parametrize("key_variable", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
async def test_claude_code_reads_a_file_through_the_gateway(
    gateway: RunningGateway, fake_upstream: FakeUpstream, tmp_path: Path, key_variable: str
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("the secret word is pelican\n")
    read = {"name": "Read", "arguments": json.dumps({"file_path": str(note)})}
    fake_upstream.responder = tool_then_text(read, "The word is pelican.")
    env = {
        "ANTHROPIC_BASE_URL": gateway.url,
        key_variable: PROXY_KEY,
        # Documented switches: no autoupdater, telemetry, error reports or other non-essential traffic.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    question = "What is the secret word in note.txt?"
    command = [str(cli("claude")), "-p", question, "--model", "fake-model", "--output-format", "json"]
    out, _ = await run_cli(command, env, tmp_path)
    result = json.loads(out)
    assert result["result"] == "The word is pelican." and result["num_turns"] == 2
    assert [r["path"] for r in fake_upstream.requests] == ["/v1/messages"] * 2
    (first_request, first), (second_request, second) = records(gateway)
    assert first_request["user_message_this_turn"].endswith(question) and first_request["tools_count"] > 0
    [asked] = first["tool_calls"]
    assert asked["name"] == "Read" and json.loads(asked["arguments"]) == {"file_path": str(note)}
    assert (first["finish_reason"], first["reasoning_content"]) == ("tool_use", "I will use the tool.")
    [result_record] = second_request["tool_results_this_turn"]
    assert result_record["name"] == "Read" and "pelican" in result_record["content"]
    assert second["content"] == "The word is pelican." and second["stream"] is True
    assert first_request["session_id"] == second_request["session_id"] == result["session_id"]
    assert {first["key_name"], second["key_name"]} == {"default"}
    assert all(r["tokens"]["prompt_tokens"] > 0 for r in (first, second))
    _never_forwarded(fake_upstream)


async def test_codex_runs_a_command_through_the_gateway(
    gateway: RunningGateway, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "codex-home"
    home.mkdir()
    # A custom provider on the Responses API. Off, as its config documents: update checks, analytics, and
    # the features that fetch plugins and apps at start (GitHub, chatgpt.com): the gateway is its only server.
    (home / "config.toml").write_text(
        'model = "fake-model"\nmodel_provider = "gateway"\ncheck_for_update_on_startup = false\n\n'
        "[analytics]\nenabled = false\n\n"
        "[features]\nplugins = false\nremote_plugin = false\napps = false\n\n"
        f'[model_providers.gateway]\nname = "gateway"\nbase_url = "{gateway.url}/v1"\n'
        'env_key = "GATEWAY_KEY"\nwire_api = "responses"\n'
    )
    shell = {"name": "exec_command", "arguments": json.dumps({"cmd": "echo pelican"})}
    fake_upstream.responder = tool_then_text(shell, "The command printed pelican.")
    env = {"CODEX_HOME": str(home), "GATEWAY_KEY": PROXY_KEY}
    command = [str(cli("codex")), "exec", "--skip-git-repo-check", "Run echo pelican and tell me its output"]
    out, _ = await run_cli(command, env, tmp_path)
    assert out.strip().endswith("The command printed pelican.")
    assert [r["path"] for r in fake_upstream.requests] == ["/v1/responses"] * 2
    (first_request, first), (second_request, second) = records(gateway)
    assert first_request["user_message_this_turn"] == "Run echo pelican and tell me its output"
    assert first["tool_calls"] == [shell] and first["finish_reason"] == "completed"
    [result_record] = second_request["tool_results_this_turn"]
    assert result_record["name"] == "exec_command" and "pelican" in result_record["content"]
    assert second["content"] == "The command printed pelican."
    assert first_request["session_id"] and first_request["session_id"] == second_request["session_id"]
    assert all(r["tokens"]["completion_tokens"] > 0 for r in (first, second))
    _never_forwarded(fake_upstream)


def _never_forwarded(fake: FakeUpstream) -> None:
    """The proxy key stayed at the gateway: the upstream saw only the provider's key."""
    for sent in fake.requests:
        assert PROXY_KEY not in json.dumps(sent["headers"])
        assert sent["headers"].get("Authorization") == f"Bearer {PROVIDER_KEY}"
