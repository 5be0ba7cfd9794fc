"""Earlier configs route as they did, and one validation says every problem the same way everywhere.

The two seeds' example configs are quoted verbatim: the earlier open-llm-proxy's README "common case", and
the older llm_proxy's, whose OpenRouter `models` were "exact model names or prefixes". They go through
check-config and a served gateway unchanged; only the endpoints a test must route are moved to the fake.
`serve`, `check-config` and `create_app` share one validation, so each reports the same problems.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    AUTH,
    CHAT,
    FAST_UPSTREAM,
    PROVIDER_KEY,
    MakeGateway,
    StartCli,
    gateway_config,
    provider_section,
    run_cli,
    write_config,
)
from fake_upstream import FakeUpstream

import gateway.config as config_module
import gateway.server as server_module
from gateway.app import create_app
from gateway.cli import main
from gateway.config import ConfigError, load, parse_config
from gateway.routing import Router
from providers.nrp import NRPProvider
from providers.registry import resolve_settings

EARLIER_COMMON_CASE = """\
{"providers": {"nrp": {"endpoint": "https://ellm.nrp-nautilus.io/v1/chat/completions",
                       "api_key_env": "NRP_API_KEY", "models": ["kimi", "qwen3", "glm-4.7"]}}}
"""

OLDER_LLM_PROXY = """\
{
  "providers": {
    "nrp": {
      "endpoint": "https://ellm.nrp-nautilus.io/v1/chat/completions",
      "api_key_env": "NRP_API_KEY",
      "models": ["kimi", "qwen3", "glm-4.6"]
    },
    "openrouter": {
      "endpoint": "https://openrouter.ai/api/v1/chat/completions",
      "api_key_env": "OPENROUTER_KEY",
      "models": ["anthropic/", "mistralai/", "amazon/", "openai/", "qwen/"],
      "extra_headers": {
        "HTTP-Referer": "https://wetlands.nrp-nautilus.io",
        "X-Title": "Wetlands Chatbot"
      }
    }
  }
}
"""

KEYS = {"NRP_API_KEY": "nrp-key", "OPENROUTER_KEY": "openrouter-key"}
MODELS = ("qwen3-32b", "kimi", "anthropic/claude-x", "something-new")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- 1. earlier configs route as they did -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "routes"),
    [
        (EARLIER_COMMON_CASE, ["nrp", "nrp", "nrp", "nrp"]),  # no openrouter: everything falls back to nrp
        (OLDER_LLM_PROXY, ["nrp", "nrp", "openrouter", "nrp"]),
    ],
)
def test_the_seeds_example_configs_route_as_they_did(text: str, routes: list[str], tmp_path: Path) -> None:
    validated = load(_write(tmp_path, "config.json", text), KEYS)
    assert validated.config.default_provider == "nrp"  # no `default_provider` key: the earlier fallback
    router = Router(validated.providers, validated.config.default_provider)
    assert [router.resolve(model).id for model in MODELS] == routes
    nrp = validated.providers["nrp"].settings
    assert nrp.prefixes == nrp.models  # `models` double as prefixes, whatever the NRP plugin's defaults say
    thinking = NRPProvider.defaults["thinking_models"]
    assert dict(nrp.thinking_models) == dict(thinking)  # what the section leaves out, the plugin fills
    assert validated.warnings == ()


@pytest.mark.parametrize(
    ("text", "summary", "nrp_models"),
    [
        (EARLIER_COMMON_CASE, "OK, 1 providers, default nrp", "kimi, qwen3, glm-4.7"),
        (OLDER_LLM_PROXY, "OK, 2 providers, default nrp", "kimi, qwen3, glm-4.6"),
    ],
)
def test_check_config_accepts_the_seeds_example_configs(
    text: str, summary: str, nrp_models: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, "config.json", text)
    done = run_cli("check-config", str(path), env=KEYS)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0] == f"{path}: {summary}"
    assert f"models: {nrp_models}; prefixes: {nrp_models}" in done.stdout


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        (EARLIER_COMMON_CASE, ["nrp-key"] * 4),
        (OLDER_LLM_PROXY, ["nrp-key", "nrp-key", "openrouter-key", "nrp-key"]),
    ],
)
async def test_the_seeds_example_configs_served_send_each_model_to_its_provider(
    text: str,
    keys: list[str],
    start_cli: StartCli,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    moved = text.replace("https://ellm.nrp-nautilus.io", fake_upstream.url)
    moved = moved.replace("https://openrouter.ai/api", fake_upstream.url)
    path = _write(tmp_path, "config.json", moved)
    gateway = await start_cli(args=["--config", str(path)], env={**KEYS, "PROXY_KEY": "k"})
    for model in MODELS:
        body = {"model": model, "messages": CHAT["messages"]}
        headers = {"Authorization": "Bearer k"}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
    sent = fake_upstream.requests
    assert [request["headers"]["Authorization"] for request in sent] == [f"Bearer {key}" for key in keys]
    assert [request["body"]["model"] for request in sent] == list(MODELS)
    if "openrouter" in text:
        assert sent[2]["headers"]["X-Title"] == "Wetlands Chatbot"
    assert await gateway.stop() == 0


async def test_the_common_case_served_falls_back_to_nrp_and_an_explicit_null_keeps_the_404(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = json.loads(EARLIER_COMMON_CASE)
    raw["providers"]["nrp"]["endpoint"] = f"{fake_upstream.url}/v1/chat/completions"
    implied = await make_gateway({**raw, "upstream": FAST_UPSTREAM}, env=KEYS)
    explicit = await make_gateway({**raw, "upstream": FAST_UPSTREAM, "default_provider": None}, env=KEYS)
    statuses = {}
    for name, gateway in (("implied", implied), ("explicit", explicit)):
        for model in ("qwen3-32b", "mistral-large"):
            body = {"model": model, "messages": CHAT["messages"]}
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
                statuses[name, model] = response.status
    assert statuses == {
        ("implied", "qwen3-32b"): 200,
        ("implied", "mistral-large"): 200,  # the earlier proxy's fallback
        ("explicit", "qwen3-32b"): 200,  # `qwen3` is a prefix too
        ("explicit", "mistral-large"): 404,
    }
    assert all(r["headers"]["Authorization"] == "Bearer nrp-key" for r in fake_upstream.requests)


@pytest.mark.parametrize(
    ("section", "models", "prefixes"),
    [
        ({}, ("kimi", "qwen3", "glm-4.7"), ()),  # the plugin's defaults, prefixes included
        ({"models": ["big"]}, ("big",), ("big",)),  # models given, prefixes not: the earlier double duty
        ({"models": ["big"], "model_prefixes": []}, ("big",), ()),
        ({"model_prefixes": ["nrp/"]}, ("kimi", "qwen3", "glm-4.7"), ("nrp/",)),
        ({"models": ["big"], "model_prefixes": None}, ("big",), ("big",)),
    ],
)
def test_a_plugins_defaults_fill_only_what_the_section_leaves_out(
    section: dict[str, Any], models: tuple[str, ...], prefixes: tuple[str, ...]
) -> None:
    problems: list[str] = []
    settings = resolve_settings("nrp", section, NRPProvider, {}, problems)
    assert problems == []
    assert (settings.models, settings.prefixes) == (models, prefixes)
    assert settings.endpoint == NRPProvider.defaults["endpoint"]
    assert settings.api_key_env == "NRP_API_KEY"


def test_the_default_provider_is_implied_only_when_nrp_is_configured() -> None:
    providers = {"other": {"endpoint": "https://other.example/v1"}}
    assert parse_config({"providers": providers}).default_provider is None
    assert parse_config({"providers": {**providers, "nrp": {}}}).default_provider == "nrp"
    assert parse_config({"providers": {"nrp": {}}, "default_provider": None}).default_provider is None
    assert parse_config({"providers": {"nrp": {}}, "default_provider": "other"}).default_provider == "other"


# --- 4. one validation, said once -------------------------------------------------------------------------

INLINE_KEY = "sk-inline-secret-5e1d"
BAD: dict[str, Any] = {
    "default_provider": None,
    "providers": {
        "nrp": {"endpont": "https://typo.example/v1/chat/completions"},
        "keyed": {"endpoint": "https://k.example/v1", "api_key": INLINE_KEY, "models": ["k"]},
        "homeless": {"models": ["h"]},
        "typed": {"endpoint": "https://t.example/v1", "models": "m", "discover_models": "yes"},
    },
    "upstream": {"retries": "three"},
    "surprise": 1,
}
BAD_LINES = {
    "providers.nrp.endpont: unknown setting (did you mean 'endpoint'?)",
    "providers.keyed.api_key: keys never go in the config file; put it in an environment variable and name "
    "it: `api_key_env: KEYED_API_KEY`",
    "providers.homeless: no endpoint; give its URL, e.g. `endpoint: https://host/v1/chat/completions`",
    "providers.typed.models: expected a list of strings, got 'm'",
    "providers.typed.discover_models: expected true or false, got 'yes'",
    "upstream.retries: expected a non-negative number, got 'three'",
    "surprise: unknown top-level setting",
}


def test_check_config_and_serve_report_the_same_problems_one_line_each(tmp_path: Path) -> None:
    path = write_config(tmp_path, BAD)
    checked = run_cli("check-config", str(path))
    served = run_cli("serve", "--config", str(path), "--port", "0")
    assert (checked.returncode, served.returncode) == (2, 2)
    check_lines = [line.removeprefix(f"{path}: ") for line in checked.stderr.splitlines()]
    serve_lines = [line.split(f"config {path}: ", 1)[1] for line in served.stderr.splitlines()]
    assert sorted(check_lines) == sorted(serve_lines) == sorted(BAD_LINES)
    for output in (checked.stderr, served.stderr):
        assert INLINE_KEY not in output
        assert "Traceback" not in output


def test_create_app_refuses_what_check_config_refuses() -> None:
    provider_level = {k: v for k, v in BAD.items() if k not in ("upstream", "surprise")}
    with pytest.raises(ConfigError) as refused:
        create_app(parse_config(provider_level), env={})
    assert set(refused.value.problems) == {line for line in BAD_LINES if line.startswith("providers.")}


def test_serve_builds_the_providers_once_however_many_apps_it_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    real_build = config_module.build_providers

    def counted_build(*args: Any) -> Any:
        built.append(args)
        return real_build(*args)

    monkeypatch.setattr(config_module, "build_providers", counted_build)
    apps = []

    def two_workers(factory: Any, host: str, port: int, workers: int) -> int:
        apps.extend([factory(), factory()])
        return 0

    monkeypatch.setattr(server_module, "run", two_workers)
    monkeypatch.setattr(server_module, "check_port", lambda host, port: None)
    monkeypatch.setenv("PROXY_KEY", "k")
    path = write_config(tmp_path, {"providers": {"nrp": {}}})
    assert main(["serve", "--config", str(path)]) == 0
    assert len(built) == 1 and len(apps) == 2


def test_an_endpoint_the_plugin_takes_from_the_environment_is_a_warning_when_unset(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"providers": {"nimbus": {"api_key_env": None, "models": ["vllm-model"]}}})
    done = run_cli("check-config", str(path))
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"{path}: warning: providers.nimbus: no endpoint: NIMBUS_ENDPOINT is not set; "
        "calls routed here answer 503"
    ]
    done = run_cli("check-config", str(path), env={"NIMBUS_ENDPOINT": "https://nimbus.example/v1"})
    assert (done.returncode, done.stderr) == (0, "")
    assert "nimbus [nimbus] https://nimbus.example/v1  key: none needed" in done.stdout


# --- 5. a missing key is said at start; `api_key_env: null` needs none -----------------------------------


def test_check_config_warns_about_each_unset_key_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "older.json", OLDER_LLM_PROXY)
    done = run_cli("check-config", str(path), env={"NRP_API_KEY": "set"})
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"{path}: warning: providers.openrouter: OPENROUTER_KEY is not set; calls routed here answer 503 "
        "(`api_key_env: null` if it needs no key)"
    ]


async def test_serve_logs_the_unset_key_at_start_and_a_keyless_provider_needs_none(
    start_cli: StartCli, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    endpoint = f"{fake_upstream.url}/v1/chat/completions"
    raw = gateway_config(
        fake_upstream.url,
        providers={
            "nrp": {"endpoint": endpoint, "api_key_env": None, "models": ["open-model"]},
            "fake": provider_section(fake_upstream.url),
        },
    )
    gateway = await start_cli(raw, env={"PROXY_KEY": "k"})  # FAKE_KEY unset
    assert re.search(r"WARNING config \S+: providers\.fake: FAKE_KEY is not set", gateway.stderr)
    assert "providers.nrp" not in gateway.stderr
    for model, status in (("open-model", 200), ("fake-model", 503)):
        body = {"model": model, "messages": CHAT["messages"]}
        headers = {"Authorization": "Bearer k"}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == status, await response.text()
    assert len(fake_upstream.requests) == 1
    assert "Authorization" not in fake_upstream.requests[0]["headers"]
    assert PROVIDER_KEY not in gateway.stderr
    assert await gateway.stop() == 0


# --- 6. a port already in use -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_line_and_exit_2(workers: int, tmp_path: Path) -> None:
    keyless = {"providers": {"open": {"endpoint": "https://open.example/v1", "api_key_env": None}}}
    path = write_config(tmp_path, keyless)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
        done = run_cli(*args, "--workers", str(workers), env={"PROXY_KEY": "k"})
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"ERROR cannot listen on 127.0.0.1 port {port}: Address already in use")
