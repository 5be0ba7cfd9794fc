"""Fixtures shared by the core tests: the fake upstream, gateways built in this process, and the CLI run as a
real subprocess. Everything talks real HTTP over loopback; the fake upstream is the only fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from fake_upstream import FakeUpstream
from gateway_process import UpstreamThread, serving_port
from redis_server import RedisServer

from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.calls import Call
from gateway.config import parse_config
from gateway.server import make_runner
from gateway.state import GATEWAY, Gateway

if TYPE_CHECKING:
    from moto_s3 import S3

ROOT = Path(__file__).resolve().parents[1]
PROXY_KEY = "test-proxy-key"
PROVIDER_KEY = "fake-provider-secret-4f1c9a"
AUTH = {"Authorization": f"Bearer {PROXY_KEY}"}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello"}]}
# Small limits so that retries, timeouts and failures cost milliseconds, not the production seconds.
FAST_UPSTREAM = {
    "retries": 2,
    "retry_backoff_s": 0.01,
    "retry_max_wait_s": 2,
    "connect_timeout_s": 2,
    "first_byte_timeout_s": 10,
    "idle_timeout_s": 5,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip what the gateway reads from the environment.

    A developer's shell or a CI runner may hold real proxy keys, provider keys, AWS credentials or a log
    bucket: a test must neither depend on them nor send anything to a real bucket or provider. Tests that
    need such a variable set it themselves.
    """
    owned = ("AWS_", "PROXY_KEY", "PROXY_CONFIG", "LOG_", "OPEN_LLM_PROXY_")
    provider_vars = {"NRP_API_KEY", "OPENROUTER_KEY", "NIMBUS_API_KEY", "NIMBUS_ENDPOINT", "CACHE_SALT"}
    for var in list(os.environ):
        if var.startswith(owned) or var in provider_vars or var in ("HOST", "PORT"):
            monkeypatch.delenv(var)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port with the runner `serve_app` uses; yield its base URL."""
    runner = make_runner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """The fake OpenAI-compatible provider, served on loopback; its base URL is `fake_upstream.url`."""
    fake = FakeUpstream()
    async with serving(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture
def upstream() -> Iterator[UpstreamThread]:
    """The fake upstream on a thread of its own, for tests that drive a gateway subprocess synchronously."""
    server = UpstreamThread()
    yield server
    server.close()


@pytest.fixture
def s3() -> Iterator[S3]:
    """A real S3 API (moto's server mode) on loopback, with a fresh bucket."""
    from moto_s3 import S3  # moto is heavy: only the tests that need S3 import it

    server = S3().start()
    yield server
    server.stop()


class ListRecorder:
    """Keeps each call's records as `(kind, call)` pairs, so core tests do not involve the log writer."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Call]] = []

    def request(self, call: Call) -> None:
        self.records.append(("request", call))

    def response(self, call: Call) -> None:
        self.records.append(("response", call))

    def written(self, now: bool = False) -> None:
        return None  # kept at once

    def health(self) -> dict[str, object]:
        return {"enabled": True, "recorder": "list"}

    def responses(self) -> list[Call]:
        return [call for kind, call in self.records if kind == "response"]


def provider_section(fake_url: str, **overrides: Any) -> dict[str, Any]:
    """A config section for a provider served by the fake upstream."""
    section: dict[str, Any] = {
        "endpoint": f"{fake_url}/v1/chat/completions",
        "api_key_env": "FAKE_KEY",
        "models": ["fake-model"],
        "model_prefixes": ["fake/"],
    }
    return {**section, **overrides}


def gateway_config(fake_url: str, **sections: Any) -> dict[str, Any]:
    """A raw config: one provider `fake` on the fake upstream, fast upstream settings; `sections` replace."""
    raw: dict[str, Any] = {
        "default_provider": None,
        "providers": {"fake": provider_section(fake_url)},
        "upstream": dict(FAST_UPSTREAM),
    }
    raw.update(sections)
    return raw


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    recorder: ListRecorder

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]


MakeGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def make_gateway(fake_upstream: FakeUpstream) -> AsyncIterator[MakeGateway]:
    """Build and serve gateways: `await make_gateway(raw_config=None, env=None, keys=None)`.

    The default config routes `fake-model` (and `fake/*`) to the fake upstream with the key PROVIDER_KEY;
    the proxy key is PROXY_KEY.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            raw_config: Mapping[str, Any] | None = None,
            *,
            env: Mapping[str, str] | None = None,
            keys: KeyRing | None = None,
        ) -> RunningGateway:
            config = parse_config(raw_config or gateway_config(fake_upstream.url))
            recorder = ListRecorder()
            app = create_app(
                config,
                keys=keys or KeyRing.from_env({"PROXY_KEY": PROXY_KEY}),
                env={"FAKE_KEY": PROVIDER_KEY} if env is None else env,
                recorder=recorder,
            )
            url = await stack.enter_async_context(serving(app))
            return RunningGateway(url, app, recorder)

        yield make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> RunningGateway:
    """A gateway with the default test config."""
    return await make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client; bounded so that a gateway that hangs fails the test instead."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse) -> list[bytes]:
    """Every SSE event of a response, bytes exactly as received."""
    body = await response.read()
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


async def until(predicate: Callable[[], object], within: float = 5, what: str = "the condition") -> None:
    """Poll `predicate` until it holds; fail the test after `within` seconds instead of hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            pytest.fail(f"{what} did not hold within {within} s")
        await asyncio.sleep(0.01)


def event_json(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    return orjson.loads(event[len(b"data: ") :])


@dataclass
class CliGateway:
    """A gateway run as `python -m gateway serve` in a subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    stdout_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def stop(self, within: float = 20) -> int:
        """SIGTERM, then the exit code; the event loop keeps running (the fake upstream lives there)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await exit_code(self.proc, within)


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """`proc`'s exit code, waited for without blocking the event loop; None if it is still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while proc.poll() is None:
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.05)
    return proc.returncode


async def exit_code(proc: subprocess.Popen[bytes], within: float) -> int:
    code = await wait_exit(proc, within)
    if code is None:
        pytest.fail(f"process {proc.pid} did not exit within {within} s")
    return code


StartCli = Callable[..., Awaitable[CliGateway]]


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a gateway subprocess: this one (already cleaned), logs kept under tmp_path."""
    env = {**os.environ, "LOG_SPOOL_DIR": str(tmp_path / "spool"), "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def write_config(tmp_path: Path, raw: Mapping[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(raw)))
    return path


@pytest.fixture
async def start_cli(tmp_path: Path) -> AsyncIterator[StartCli]:
    """Start `python -m gateway serve --port 0` (the port it binds, read from its log) and wait until
    `/readyz` answers.

    `await start_cli(config=raw_or_None, args=[...], env={...})`; every process started is stopped at
    teardown (SIGTERM, then SIGKILL if it does not go).
    """
    started: list[CliGateway] = []

    async def start(
        config: Mapping[str, Any] | None = None,
        *,
        args: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30,
    ) -> CliGateway:
        n = len(started)
        command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0"]
        if config is not None:
            command += ["--config", str(write_config(tmp_path, config, f"config-{n}.yaml"))]
        command += args or []
        out, err = tmp_path / f"stdout-{n}.txt", tmp_path / f"stderr-{n}.txt"
        proc = spawn(command, tmp_path, subprocess_env(tmp_path, **(env or {})), out, err)
        running = CliGateway(proc, "", err, out)
        started.append(running)
        await wait_ready(running, ready_timeout)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGTERM)
            if await wait_exit(running.proc, 20) is None:
                running.proc.kill()
                running.proc.wait(5)


def spawn(
    command: list[str], cwd: Path, env: Mapping[str, str], stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)


async def wait_ready(running: CliGateway, within: float) -> None:
    """Poll `/readyz` until it answers 200; fail (with the gateway's stderr) if it exits or never does.
    A gateway started on port 0 is given its `url` once its log names the port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            if running.proc.poll() is not None:
                pytest.fail(f"the gateway exited with {running.proc.returncode}:\n{running.stderr}")
            if not running.url:
                if port := serving_port(running.stderr_path):
                    running.url = f"http://127.0.0.1:{port}"
                else:
                    await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(running.url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    pytest.fail(f"the gateway did not become ready in {within} s:\n{running.stderr}")


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `open-llm-proxy ARGS` (as `python -m gateway`) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on loopback for the module's tests (each keeps to a key prefix of its own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
