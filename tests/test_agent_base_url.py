"""The agent runner takes the gateway's URL as OpenAI clients do: with or without `/v1`, a trailing slash, or
a path prefix an ingress mounts the gateway under.

The normalisation is tested on values; then the runner's whole command line (`main()`, in a worker thread
so that this test's event loop keeps serving) runs against the real gateway with each spelling, directly
and through an ingress stand-in that strips a path prefix as ingress-nginx's rewrite-target does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import PROVIDER_KEY, PROXY_KEY, CliGateway, StartCli, gateway_config, serving
from fake_upstream import FakeUpstream

from gateway.agent.cli import main, settings_from_args
from gateway.agent.errors import ExitCode
from gateway.agent.settings import openai_base_url

ENV = {"AGENT_MODEL": "fake-model", "OPENAI_API_KEY": "sk-test"}
ANSWER = "Hello from the fake upstream."
PREFIX = "/llm-proxy"


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://gw:8080", "http://gw:8080/v1"),
        ("http://gw:8080/", "http://gw:8080/v1"),
        ("http://gw:8080/v1", "http://gw:8080/v1"),
        ("http://gw:8080/v1/", "http://gw:8080/v1"),
        ("  https://gw.example.org/v1  ", "https://gw.example.org/v1"),
        ("https://gw.example.org/v1/chat/completions", "https://gw.example.org/v1"),
        ("https://example.org/llm-proxy", "https://example.org/llm-proxy/v1"),
        ("https://example.org/llm-proxy/", "https://example.org/llm-proxy/v1"),
        ("https://example.org/llm-proxy/v1", "https://example.org/llm-proxy/v1"),
        ("https://example.org/llm-proxy/v1//", "https://example.org/llm-proxy/v1"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
    ],
)
def test_every_spelling_names_the_same_base_url(given: str, base: str) -> None:
    assert openai_base_url(given) == base
    settings = settings_from_args(["q", "--proxy-url", given], ENV)
    assert settings.base_url == base


def test_the_environment_takes_the_same_spellings() -> None:
    settings = settings_from_args(["q"], {**ENV, "AGENT_PROXY_URL": "https://gw.example.org/v1/"})
    assert settings.base_url == "https://gw.example.org/v1"
    assert settings_from_args(["q"], ENV).base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("localhost:8080", "not an http(s) URL: 'localhost:8080'"),
        ("gw.example.org/v1", "not an http(s) URL"),
        ("ftp://gw.example.org", "not an http(s) URL"),
        ("http://", "not an http(s) URL"),
        ("http://gw:port/v1", "bad port in 'http://gw:port/v1'"),
        ("http://gw:8080/v1?key=1", "takes no query or fragment"),
    ],
)
def test_an_unusable_url_is_a_usage_error(
    given: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from_args(["q", "--proxy-url", given], ENV)
    assert exited.value.code == ExitCode.USAGE
    assert f"argument --proxy-url: {needle}" in capsys.readouterr().err


def test_help_shows_the_accepted_forms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--help"], ENV)
    help_text = " ".join(capsys.readouterr().out.split())
    assert "as an OpenAI SDK's base_url or without /v1" in help_text
    assert "https://host/v1, https://host, https://host/llm-proxy/v1" in help_text


# --- against the real gateway --------------------------------------------------------------------------


def ingress(gateway_url: str, seen: list[str]) -> web.Application:
    """Forwards `PREFIX/...` to the gateway with the prefix stripped; anything else is the ingress's 404."""

    async def forward(request: web.Request) -> web.Response:
        seen.append(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                gateway_url + request.path.removeprefix(PREFIX),
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "x-request-id")}
            return web.Response(status=answer.status, body=await answer.read(), headers=kept)

    app = web.Application()
    app.router.add_route("*", PREFIX + "/{tail:.*}", forward)
    return app


@pytest.fixture
async def gateway(fake_upstream: FakeUpstream, start_cli: StartCli) -> CliGateway:
    """The real gateway, as a subprocess, serving `fake-model` from the fake upstream."""
    return await start_cli(
        config=gateway_config(fake_upstream.url), env={"PROXY_KEY": PROXY_KEY, "FAKE_KEY": PROVIDER_KEY}
    )


@pytest.fixture
async def ingress_url(gateway: CliGateway) -> AsyncIterator[tuple[str, list[str]]]:
    """The ingress stand-in's URL, and the paths it was asked for."""
    seen: list[str] = []
    async with serving(ingress(gateway.url, seen)) as url:
        yield url, seen


def records(gateway: CliGateway, session_id: str) -> list[dict[str, Any]]:
    """The gateway's records (on its stdout, written at once) of one session."""
    lines = gateway.stdout_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("session_id") == session_id]


async def run_runner(proxy_url: str, session_id: str, transcript: Path) -> int:
    """The runner's command line, in a worker thread: `main()` runs its own event loop."""
    argv = ["Say hello", "--model", "fake-model", "--api-key", PROXY_KEY, "--proxy-url", proxy_url,
            "--session-id", session_id, "--transcript", str(transcript), "-q"]  # fmt: skip
    return await asyncio.to_thread(main, argv)


async def test_the_runner_reaches_the_gateway_with_every_spelling(
    gateway: CliGateway,
    ingress_url: tuple[str, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ingress_base, seen = ingress_url
    direct = [gateway.url + tail for tail in ("", "/", "/v1", "/v1/", "/v1/chat/completions")]
    mounted = [ingress_base + PREFIX + tail for tail in ("", "/", "/v1", "/v1/")]
    for number, proxy_url in enumerate(direct + mounted):
        session_id = f"base-url-{number}"
        transcript = tmp_path / f"{session_id}.jsonl"
        code = await run_runner(proxy_url, session_id, transcript)
        out, err = capsys.readouterr()
        assert (code, out, err) == (ExitCode.ANSWERED, ANSWER + "\n", ""), proxy_url
        start = json.loads(transcript.read_text().splitlines()[0])
        assert start["proxy_url"] == proxy_url and start["base_url"].endswith("/v1")
        found = records(gateway, session_id)
        assert [(r["type"], r.get("status")) for r in found] == [("request", None), ("response", 200)]
        assert {r["endpoint"] for r in found} == {"chat.completions"}
    assert seen == [PREFIX + "/v1/chat/completions"] * len(mounted)
