"""The command line, run as real subprocesses: check-config, providers, and serve (keys, workers, signals)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    CHAT,
    FAST_UPSTREAM,
    PROVIDER_KEY,
    ROOT,
    CliGateway,
    StartCli,
    exit_code,
    provider_section,
    run_cli,
    spawn,
    subprocess_env,
    until,
    wait_ready,
    write_config,
)
from fake_upstream import FakeUpstream
from gateway_process import free_port


def _config(fake_url: str, **sections: Any) -> dict[str, Any]:
    return {
        "default_provider": "fake",
        "providers": {"fake": provider_section(fake_url)},
        "upstream": FAST_UPSTREAM,
        **sections,
    }


def test_providers_lists_the_built_in_plugins_with_their_distribution() -> None:
    done = run_cli("providers")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    for name, where in [
        ("nrp", "providers.nrp:NRPProvider"),
        ("openrouter", "providers.openrouter:OpenRouterProvider"),
        ("nimbus", "providers.nimbus:NimbusProvider"),
        ("openai", "providers.generic:OpenAICompatibleProvider"),
    ]:
        assert re.search(r"\bopen-llm-proxy \d+\.\d+", rows[name]), rows[name]
        assert rows[name].rstrip().endswith(where)


@pytest.mark.parametrize(
    ("path", "summary", "providers"),
    [
        ("config/default.yaml", "OK, 3 providers, default nrp", ["nrp", "openrouter", "nimbus"]),
        (
            "config/config.json",
            "OK, 5 providers, default nrp",
            ["nrp", "openrouter", "anthropic", "nimbus", "vllm-cirrus"],
        ),
    ],
)
def test_check_config_accepts_the_shipped_configs_with_a_summary(
    path: str, summary: str, providers: list[str]
) -> None:
    done = run_cli("check-config", path)
    assert done.returncode == 0, done.stderr
    # Keys are unset here: each is a warning naming its variable, and the config still passes.
    warnings = done.stderr.splitlines()
    assert all(line.startswith(f"{path}: warning: providers.") for line in warnings), done.stderr
    assert any("NRP_API_KEY is not set" in line for line in warnings)
    lines = done.stdout.splitlines()
    assert lines[0] == f"{path}: {summary}"
    listed = [line.split()[0] for line in lines[1:] if not line.startswith("    ")]
    assert listed == providers
    assert "NRP_API_KEY NOT set" in done.stdout


def test_check_config_names_every_provider_problem_on_its_own_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "default_provider": "nowhere",
            "providers": {
                "custom": {"plugin": "no-such-plugin", "endpoint": "https://x.example/v1"},
                "ftp": {"endpoint": "ftp://files.example/v1", "models": ["m-ftp"]},
                "one": {"endpoint": "https://one.example/v1", "models": ["shared-model"]},
                "two": {"endpoint": "https://two.example/v1", "models": ["shared-model"]},
                "typed": {"endpoint": "https://t.example/v1", "models": "not-a-list", "extra_headers": ["x"]},
            },
        },
    )
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    expected = [
        r"providers\.custom: unknown plugin 'no-such-plugin' \(installed: .*nrp.*\)",
        r"providers\.ftp: endpoint 'ftp://files\.example/v1' is not an http\(s\) URL",
        r"providers\.two: model 'shared-model' is already served by 'one'",
        r"providers\.typed\.models: expected a list of strings, got 'not-a-list'",
        r"providers\.typed\.extra_headers: expected a mapping of names to strings, got \['x'\]",
        r"default_provider: 'nowhere' is not a configured provider",
    ]
    assert len(lines) == len(expected), done.stderr
    for pattern in expected:
        assert sum(bool(re.fullmatch(f"{re.escape(str(path))}: {pattern}", line)) for line in lines) == 1, (
            pattern
        )


def test_check_config_names_every_wrongly_typed_setting(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "default_provider": 5,
            "providers": {"nrp": {}},
            "upstream": {"retries": "three", "retry_backoff_s": -1, "fallbacks": ["x"]},
            "cors": {"allow_origins": "https://one.example"},
            "server": "big",
            "surprise": True,
        },
    )
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    lines = [line.removeprefix(f"{path}: ") for line in done.stderr.splitlines()]
    assert sorted(lines) == sorted(
        [
            "default_provider: must be a provider name or null, not 5",
            "upstream.retries: expected a non-negative number, got 'three'",
            "upstream.retry_backoff_s: expected a non-negative number, got -1",
            "upstream.fallbacks: expected a mapping, got ['x']",
            "cors.allow_origins: expected a list of strings, got 'https://one.example'",
            "server: must be a mapping, not 'big'",
            "surprise: unknown top-level setting",
        ]
    )


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("broken.yaml", "providers: [unclosed", "not valid YAML: expected ',' or ']'"),
        ("broken.json", '{"providers": }', "not valid JSON: Expecting value (line 1, column 15)"),
        ("list.yaml", "- just\n- a list\n", "the top level must be a mapping"),
        ("missing.yaml", None, "No such file or directory"),
    ],
)
def test_check_config_reports_an_unreadable_file_in_one_line(
    name: str, text: str | None, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"{path}: {problem}")
    assert done.stderr.count(str(path)) == 1
    assert "Traceback" not in done.stderr


async def _chat(session: aiohttp.ClientSession, url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as response:
        await response.read()
        return response.status


async def test_python_m_gateway_serve_proxies_and_stops_cleanly_on_sigterm(
    start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url), env={"PROXY_KEY": "cli-key", "FAKE_KEY": PROVIDER_KEY}
    )
    assert await _chat(http, gateway.url, "cli-key") == 200
    assert await _chat(http, gateway.url, "wrong") == 401
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(
        gateway.url + "/chat", json=streamed, headers={"Authorization": "Bearer cli-key"}
    ) as response:
        assert await response.read() == b"".join(fake_upstream.requests[-1]["sent"])
    assert fake_upstream.requests[0]["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert await gateway.stop() == 0
    assert "cli-key" not in gateway.stderr and PROVIDER_KEY not in gateway.stderr


async def test_serve_without_a_key_prints_a_one_time_key_and_accepts_only_it(
    start_cli: StartCli, http: aiohttp.ClientSession
) -> None:
    gateway = await start_cli()  # no config file: the built-in defaults
    found = re.findall(r"^\s+(olp-\S+)$", gateway.stderr, re.MULTILINE)
    assert len(found) == 1, gateway.stderr
    key = found[0]
    async with http.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 200
        served = {m["id"] for m in (await response.json())["data"]}
    assert {"kimi", "qwen3", "glm-4.7"} <= served
    for other in (None, "olp-guessed", "test-proxy-key"):
        headers = {"Authorization": f"Bearer {other}"} if other else {}
        async with http.get(gateway.url + "/v1/models", headers=headers) as response:
            assert response.status == 401
    async with http.get(gateway.url + "/health") as response:
        health = await response.json()
    assert health["proxy_key_configured"] is True
    assert set(health["providers"]) == {"nrp", "openrouter", "nimbus"}
    assert "default_provider" not in health  # a detail for callers with a key
    async with http.get(gateway.url + "/health", headers={"Authorization": f"Bearer {key}"}) as response:
        assert (await response.json())["default_provider"] == "nrp"
    assert await gateway.stop() == 0


async def test_serve_allow_open_accepts_anyone_and_says_so(
    start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url), args=["--allow-open"], env={"FAKE_KEY": PROVIDER_KEY}
    )
    assert "RUNNING OPEN" in gateway.stderr
    assert "olp-" not in gateway.stderr
    assert await _chat(http, gateway.url, None) == 200
    assert await _chat(http, gateway.url, "anything") == 200
    async with http.get(gateway.url + "/health") as response:
        assert (await response.json())["proxy_key_configured"] is False


async def test_allow_open_is_ignored_when_a_key_is_configured(
    start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url), args=["--allow-open"], env={"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY}
    )
    assert await _chat(http, gateway.url, None) == 401
    assert await _chat(http, gateway.url, "k") == 200


async def _worker_pids(
    session: aiohttp.ClientSession, url: str, ignore: set[int] | None = None, within: float = 20
) -> list[int]:
    """The pids of two different workers answering /health; fails if two do not answer in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pids: set[int] = set()
    while len(pids) < 2:
        assert loop.time() < deadline, f"only workers {pids} answered"
        try:
            async with session.get(url + "/health", headers={"Authorization": "Bearer k"}) as response:
                pids.add((await response.json())["pid"])
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)  # a worker being replaced: try again
        pids -= ignore or set()
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_two_workers_both_serve_and_sigterm_stops_them_all(
    start_cli: StartCli, fake_upstream: FakeUpstream
) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url), args=["--workers", "2"], env={"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY}
    )
    # A fresh connection each time: the kernel spreads connections over the workers sharing the port.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        pids = await _worker_pids(session, gateway.url)
        assert gateway.proc.pid not in pids  # the parent only supervises
        for _ in range(4):
            assert await _chat(session, gateway.url, "k") == 200
    assert all(_alive(pid) for pid in pids)
    assert await gateway.stop() == 0
    assert not any(_alive(pid) for pid in pids)


async def test_a_worker_that_dies_is_replaced(start_cli: StartCli, fake_upstream: FakeUpstream) -> None:
    gateway = await start_cli(
        _config(fake_upstream.url), args=["--workers", "2"], env={"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY}
    )
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        victim, survivor = await _worker_pids(session, gateway.url)
        os.kill(victim, signal.SIGKILL)
        pids = await _worker_pids(session, gateway.url, ignore={victim})
        assert survivor in pids
        assert await _chat(session, gateway.url, "k") == 200
    assert await gateway.stop() == 0


async def test_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"providers": {"x": {"plugin": "nope"}}})
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "unknown plugin 'nope'" in stderr.decode()


async def test_sigterm_lets_an_open_stream_finish(
    start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await start_cli(_config(fake_upstream.url), env={"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY})
    fake_upstream.gate = asyncio.Queue()
    fake_upstream.gate.put_nowait(None)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        gateway.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the gateway is draining now
        assert gateway.proc.poll() is None
        for _ in range(20):
            fake_upstream.gate.put_nowait(None)
        rest = await asyncio.wait_for(response.read(), 10)
    assert first + rest == b"".join(fake_upstream.requests[0]["sent"])
    assert await exit_code(gateway.proc, 20) == 0


def test_a_bad_port_variable_is_a_usage_error_of_serve_alone() -> None:
    assert run_cli("providers", env={"PORT": "not-a-port"}).returncode == 0
    done = run_cli("serve", env={"PORT": "not-a-port"})
    assert done.returncode == 2
    assert "argument --port: invalid int value: 'not-a-port'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_serve_on_port_0_names_one_free_port_that_every_worker_serves(
    start_cli: StartCli, fake_upstream: FakeUpstream
) -> None:
    gateway = await start_cli(  # started with --port 0, its URL read from the log
        _config(fake_upstream.url), args=["--workers", "2"], env={"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY}
    )

    def served() -> list[str]:
        return re.findall(r"serving on (http://\S+) ", gateway.stderr)

    await until(lambda: len(served()) == 2, within=30)  # one line a worker
    assert set(served()) == {gateway.url}
    assert not gateway.url.endswith(":0")
    # A fresh connection each: the kernel hands them out among the listening sockets only, never to the one
    # that holds the port for the run.
    for _ in range(40):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as fresh,
            fresh.get(gateway.url + "/livez") as response,
        ):
            assert response.status == 200
    assert await gateway.stop() == 0


async def test_serve_on_an_ipv6_address_names_a_url_that_answers(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    command = [sys.executable, "-m", "gateway", "serve", "--host", "::1", "--port", "0"]
    err = tmp_path / "err"
    proc = spawn(command, tmp_path, subprocess_env(tmp_path, PROXY_KEY="k"), tmp_path / "out", err)
    gateway = CliGateway(proc, "", err, tmp_path / "out")
    if not _ipv6_loopback():  # then it must say so and stop, not serve somewhere else
        assert await exit_code(proc, 30) == 2 and "cannot listen on ::1" in gateway.stderr
        return
    try:
        await until(lambda: "serving on" in gateway.stderr or proc.poll() is not None, within=30)
        found = re.search(r"serving on (http://\S+) ", gateway.stderr)
        assert found and re.fullmatch(r"http://\[::1\]:[1-9][0-9]*", found[1]), gateway.stderr
        async with http.get(found[1] + "/livez") as response:
            assert response.status == 200
    finally:
        assert await gateway.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_serve_takes_port_and_config_from_the_environment(
    tmp_path: Path, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    config = write_config(tmp_path, _config(fake_upstream.url))
    env = subprocess_env(
        tmp_path, PORT=str(port), HOST="127.0.0.1", PROXY_CONFIG=str(config), PROXY_KEY="k", FAKE_KEY="f"
    )
    proc = spawn(
        [sys.executable, "-m", "gateway", "serve"], tmp_path, env, tmp_path / "out", tmp_path / "err"
    )
    gateway = CliGateway(proc, f"http://127.0.0.1:{port}", tmp_path / "err", tmp_path / "out")
    try:
        await wait_ready(gateway, 30)
        assert await _chat(http, gateway.url, "k") == 200
        assert fake_upstream.requests[0]["headers"]["Authorization"] == "Bearer f"
    finally:
        assert await gateway.stop() == 0


def test_check_config_names_fallbacks_that_no_provider_serves(tmp_path: Path) -> None:
    raw = {
        "default_provider": None,  # absent, it would be nrp: the earlier proxy's fallback
        "providers": {"nrp": {}},
        "upstream": {"fallbacks": {"kimi": ["qwen3", "nowhere"], "glm-4.7": [5]}},
    }
    done = run_cli("check-config", str(write_config(tmp_path, raw)))
    assert done.returncode == 2
    wrong_type = "upstream.fallbacks.glm-4.7: expected model names, got 5"
    assert sorted(line.split(": ", 1)[1] for line in done.stderr.splitlines()) == [
        wrong_type,
        "upstream.fallbacks.kimi: 'nowhere' is not a model this config serves",
    ]
    # With a default provider, every model is served by someone.
    path = write_config(tmp_path, {**raw, "default_provider": "nrp"}, "with-default.yaml")
    done = run_cli("check-config", str(path))
    assert done.stderr.splitlines() == [f"{path}: {wrong_type}"]


def test_check_config_reports_provider_problems_beside_top_level_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "default_provider: 3\n"
        "providers:\n"
        "  a: {endpoint: 'ftp://x', models: [m]}\n"
        "  b: {endpoint: 'https://y/v1/chat/completions', models: [m]}\n"
    )
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, lines  # all three said in one run, one line each
    assert "default_provider" in lines[0]
    assert "not an http(s) URL" in lines[1] and "already served" in lines[2]


def test_analyze_and_agent_are_reachable_from_the_command(tmp_path: Path) -> None:
    assert "--max-turns" in run_cli("agent", "--help").stdout
    done = run_cli("analyze", str(tmp_path))  # an empty folder: said plainly, not a crash
    assert done.returncode == 0, done.stderr
    assert "no log files found" in done.stdout.lower()
