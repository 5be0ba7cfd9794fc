"""The built-in provider plugins: found by entry point, their defaults, config over defaults, and each one's
translation of `enable_thinking`, checked on what the upstream really receives."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from conftest import AUTH, FAST_UPSTREAM, MakeGateway, RunningGateway
from fake_upstream import FakeUpstream

from gateway.config import load_config
from providers.registry import build_providers, discover

MESSAGES = [{"role": "user", "content": "Think about it."}]
KEYS = {"NRP_API_KEY": "nrp-secret", "OPENROUTER_KEY": "or-secret", "NIMBUS_API_KEY": "nimbus-secret"}


def test_the_built_in_plugins_are_registered_by_entry_point() -> None:
    plugins = discover()
    for name in ("nrp", "openrouter", "nimbus", "openai"):
        assert plugins[name].cls is not None, plugins[name].error
        assert plugins[name].distribution.startswith("open-llm-proxy ")
        assert plugins[name].cls.name == name


def test_each_plugins_defaults_fill_an_empty_section() -> None:
    env = {**KEYS, "NIMBUS_ENDPOINT": "https://nimbus.internal/v1/chat/completions"}
    providers, problems = build_providers({"nrp": {}, "openrouter": {}, "nimbus": {}}, discover(), env)
    assert problems == []
    nrp, openrouter, nimbus = (providers[n].settings for n in ("nrp", "openrouter", "nimbus"))
    assert nrp.endpoint == "https://ellm.nrp-nautilus.io/v1/chat/completions"
    assert nrp.api_key_env == "NRP_API_KEY"
    assert nrp.models == ("kimi", "qwen3", "glm-4.7")
    assert nrp.prefixes == ()
    assert dict(nrp.thinking_models) == {
        "kimi": "thinking",
        "qwen3": "enable_thinking",
        "glm-4.7": "enable_thinking",
    }
    assert openrouter.endpoint == "https://openrouter.ai/api/v1/chat/completions"
    assert openrouter.api_key_env == "OPENROUTER_KEY"
    assert openrouter.prefixes == ("anthropic/", "mistralai/", "openai/", "qwen/", "nvidia/", "amazon/")
    assert set(openrouter.extra_headers) == {"HTTP-Referer", "X-Title"}
    assert nimbus.endpoint == "https://nimbus.internal/v1/chat/completions"
    assert nimbus.api_key_env == "NIMBUS_API_KEY"
    assert all(providers[n].configured for n in providers)
    # Without NIMBUS_ENDPOINT, Nimbus is known but not configured.
    providers, _ = build_providers({"nimbus": {}}, discover(), KEYS)
    assert providers["nimbus"].settings.endpoint is None
    assert not providers["nimbus"].configured


def test_the_built_in_defaults_config_serves_the_three_providers() -> None:
    config = load_config()
    assert config.default_provider == "nrp"
    assert list(config.providers) == ["nrp", "openrouter", "nimbus"]


@pytest.fixture
async def built_ins(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    """The three built-in providers, every endpoint pointed at the fake, everything else their defaults."""
    endpoint = f"{fake_upstream.url}/v1/chat/completions"
    raw_config = {
        "default_provider": "nrp",
        "providers": {"nrp": {"endpoint": endpoint}, "openrouter": {"endpoint": endpoint}, "nimbus": {}},
        "upstream": FAST_UPSTREAM,
    }
    env = {**KEYS, "NIMBUS_ENDPOINT": endpoint, "CACHE_SALT": "salt-of-this-deployment"}
    return await make_gateway(raw_config, env=env)


async def _send(gateway: RunningGateway, http: aiohttp.ClientSession, **body: Any) -> None:
    async with http.post(
        gateway.url + "/v1/chat/completions", json={"messages": MESSAGES, **body}, headers=AUTH
    ) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("model", "provider", "key"),
    [
        ("kimi", "nrp", "nrp-secret"),
        ("glm-4.7", "nrp", "nrp-secret"),
        ("anthropic/claude-sonnet-4", "openrouter", "or-secret"),
        ("qwen/qwen3-235b", "openrouter", "or-secret"),
        ("something-else", "nrp", "nrp-secret"),  # the default provider
    ],
)
async def test_defaults_route_and_authenticate_each_provider(
    model: str,
    provider: str,
    key: str,
    built_ins: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    await _send(built_ins, http, model=model)
    seen = fake_upstream.requests[0]
    assert seen["headers"]["Authorization"] == f"Bearer {key}"
    assert built_ins.recorder.responses()[0].provider == provider
    if provider == "openrouter":
        assert seen["headers"]["HTTP-Referer"] == "https://github.com/boettiger-lab/open-llm-proxy"
        assert seen["headers"]["X-Title"] == "open-llm-proxy"
        assert "cache_salt" not in seen["body"]
    else:
        assert "X-Title" not in seen["headers"]
        assert seen["body"]["cache_salt"] == "salt-of-this-deployment"


async def test_nrp_puts_the_deployments_cache_salt_over_the_clients(
    built_ins: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # A client choosing the salt could read the prefix cache another deployment filled.
    await _send(built_ins, http, model="kimi", cache_salt="mine")
    assert fake_upstream.requests[0]["body"]["cache_salt"] == "salt-of-this-deployment"


async def test_nrp_salts_only_generation_not_embeddings(
    built_ins: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        built_ins.url + "/v1/embeddings", json={"model": "kimi", "input": "x"}, headers=AUTH
    ) as r:
        assert r.status == 200, await r.text()
    async with http.post(
        built_ins.url + "/v1/completions", json={"model": "kimi", "prompt": "x"}, headers=AUTH
    ) as r:
        assert r.status == 200, await r.text()
    embeddings, completions = (request["body"] for request in fake_upstream.requests)
    assert "cache_salt" not in embeddings
    assert completions["cache_salt"] == "salt-of-this-deployment"


THINKING = [
    ("kimi", {"chat_template_kwargs": {"thinking": True}}),
    ("qwen3", {"chat_template_kwargs": {"enable_thinking": True}}),
    ("glm-4.7", {"chat_template_kwargs": {"enable_thinking": True}}),
    ("openai/gpt-oss-120b", {"reasoning": {"enabled": True}}),
    ("anthropic/claude-sonnet-4", {"reasoning": {"enabled": True}}),
]


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize(("model", "expected"), THINKING)
async def test_enable_thinking_is_translated_per_provider_and_model_and_never_forwarded(
    model: str,
    expected: dict[str, Any],
    enabled: bool,
    built_ins: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    await _send(built_ins, http, model=model, enable_thinking=enabled, stream=False)
    body = fake_upstream.requests[0]["body"]
    assert "enable_thinking" not in body
    ((field, value),) = expected.items()
    assert body[field] == {k: enabled for k in value}


async def test_nimbus_thinking_goes_into_chat_template_kwargs_for_any_model(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    endpoint = f"{fake_upstream.url}/v1/chat/completions"
    raw_config = {"providers": {"nimbus": {"models": ["any-vllm-model"]}}, "upstream": FAST_UPSTREAM}
    gateway = await make_gateway(raw_config, env={**KEYS, "NIMBUS_ENDPOINT": endpoint})
    await _send(gateway, http, model="any-vllm-model", enable_thinking=False, chat_template_kwargs={"x": 1})
    body = fake_upstream.requests[0]["body"]
    assert body["chat_template_kwargs"] == {"x": 1, "enable_thinking": False}
    assert "enable_thinking" not in body
    assert fake_upstream.requests[0]["headers"]["Authorization"] == "Bearer nimbus-secret"


async def test_thinking_merges_with_what_the_client_already_sent(
    built_ins: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _send(built_ins, http, model="kimi", enable_thinking=True, chat_template_kwargs={"other": "kept"})
    await _send(built_ins, http, model="openai/o3", enable_thinking=True, reasoning={"effort": "high"})
    assert fake_upstream.requests[0]["body"]["chat_template_kwargs"] == {"other": "kept", "thinking": True}
    assert fake_upstream.requests[1]["body"]["reasoning"] == {"effort": "high", "enabled": True}


async def test_a_model_without_a_thinking_switch_just_loses_the_flag(
    built_ins: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await _send(built_ins, http, model="gemma-unlisted", enable_thinking=True)
    body = fake_upstream.requests[0]["body"]
    assert "enable_thinking" not in body
    assert "chat_template_kwargs" not in body


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("kimi", "chat_template_kwargs", "on"),
        ("kimi", "chat_template_kwargs", [1]),
        ("openai/o3", "reasoning", "high"),
    ],
)
async def test_a_thinking_field_of_the_wrong_type_is_a_400_not_a_500(
    model: str,
    field: str,
    value: Any,
    built_ins: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    body = {"model": model, "messages": MESSAGES, "enable_thinking": True, field: value}
    async with http.post(built_ins.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == field
    assert fake_upstream.requests == []


async def test_config_overrides_each_plugin_default(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    endpoint = f"{fake_upstream.url}/v1/chat/completions"
    raw_config = {
        "default_provider": None,  # the 404 below: without the key, unknown models would go to nrp
        "providers": {
            "nrp": {
                "endpoint": endpoint,
                "api_key_env": "MY_NRP_KEY",
                "models": ["kimi", "big-model"],
                "thinking_models": {"kimi": "enable_thinking", "big-model": "thinking"},
                "no_sampling_params": ["big-model"],
                "extra_headers": {"X-Team": "ocean"},
            },
            "openrouter": {
                "endpoint": endpoint,
                "model_prefixes": ["google/"],
                "extra_headers": {"X-Title": "our app"},
            },
        },
        "upstream": FAST_UPSTREAM,
    }
    gateway = await make_gateway(raw_config, env={**KEYS, "MY_NRP_KEY": "overridden-key"})
    await _send(gateway, http, model="kimi", enable_thinking=True, temperature=0.5)
    await _send(gateway, http, model="big-model", enable_thinking=True, temperature=0.5, top_p=0.5)
    await _send(gateway, http, model="google/gemini", enable_thinking=True)
    kimi, big, gemini = fake_upstream.requests
    assert kimi["headers"]["Authorization"] == "Bearer overridden-key"
    assert kimi["headers"]["X-Team"] == "ocean"
    assert kimi["body"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert kimi["body"]["temperature"] == 0.5
    assert big["body"]["chat_template_kwargs"] == {"thinking": True}
    assert "temperature" not in big["body"] and "top_p" not in big["body"]
    assert gemini["headers"]["X-Title"] == "our app"
    assert gemini["body"]["reasoning"] == {"enabled": True}
    # The old prefixes are replaced, not extended.
    body = {"model": "anthropic/claude", "messages": MESSAGES}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 404
