"""Routing: exact id, then the longest matching prefix, then `default_provider`; old configs still work."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pytest
from conftest import AUTH, ROOT, ListRecorder, MakeGateway, RunningGateway, gateway_config, serving
from conftest import provider_section as section
from fake_upstream import FakeUpstream

from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.config import load_config
from gateway.routing import Router
from providers.registry import build_providers, discover

MESSAGES = [{"role": "user", "content": "hi"}]


def _providers(fake_url: str) -> dict[str, Any]:
    """Four providers on the one fake, told apart by the key each sends."""
    return {
        "exact": section(
            fake_url, api_key_env="K_EXACT", models=["vendor/special", "plain"], model_prefixes=[]
        ),
        "short": section(fake_url, api_key_env="K_SHORT", models=[], model_prefixes=["vendor/"]),
        "long": section(fake_url, api_key_env="K_LONG", models=[], model_prefixes=["vendor/big-"]),
        "fallback": section(fake_url, api_key_env="K_FALLBACK", models=["other"], model_prefixes=[]),
    }


ENV = {"K_EXACT": "exact", "K_SHORT": "short", "K_LONG": "long", "K_FALLBACK": "fallback"}


@pytest.fixture
async def routed(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> RunningGateway:
    config = gateway_config(
        fake_upstream.url, providers=_providers(fake_upstream.url), default_provider="fallback"
    )
    return await make_gateway(config, env=ENV)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("vendor/special", "exact"),  # an exact id beats every prefix
        ("plain", "exact"),
        ("vendor/big-model", "long"),  # the longest prefix wins, whatever the config order
        ("vendor/big-", "long"),
        ("vendor/small", "short"),
        ("vendor/bi", "short"),
        ("Vendor/small", "fallback"),  # matching is case-sensitive
        ("unknown", "fallback"),  # nothing matches: the default provider
        ("plain-but-longer", "fallback"),  # an exact id is not a prefix when model_prefixes is given
    ],
)
async def test_exact_id_then_longest_prefix_then_default(
    model: str,
    provider: str,
    routed: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    body = {"model": model, "messages": MESSAGES}
    async with http.post(routed.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
    seen = fake_upstream.requests[0]
    assert seen["headers"]["Authorization"] == f"Bearer {ENV['K_' + provider.upper()]}"
    assert seen["body"]["model"] == model  # the model name goes upstream as the client wrote it
    assert routed.recorder.responses()[0].provider == provider


def test_routing_is_deterministic_for_equal_prefixes() -> None:
    sections = {
        "first": {"endpoint": "http://a.example/v1", "model_prefixes": ["same/"]},
        "second": {"endpoint": "http://b.example/v1", "model_prefixes": ["same/"]},
    }
    providers, problems = build_providers(sections, discover(), {})
    assert problems == []
    for _ in range(3):
        assert Router(providers, None).resolve("same/x").id == "first"


async def test_without_a_default_an_unknown_model_is_a_404_naming_what_is_served(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(
        gateway_config(fake_upstream.url, providers=_providers(fake_upstream.url)), env=ENV
    )
    body = {"model": "unknown", "messages": MESSAGES}
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 404
        message = (await response.json())["error"]["message"]
    for served in ("vendor/special", "plain", "other", "vendor/*", "vendor/big-*"):
        assert served in message
    assert fake_upstream.requests == []


def _legacy_config(fake_url: str) -> Any:
    """config/config.json exactly as the earlier open-llm-proxy read it, its endpoints moved to the fake."""
    config = load_config(ROOT / "config" / "config.json")
    sections = {
        name: {**raw, "endpoint": f"{fake_url}/v1/chat/completions"} for name, raw in config.providers.items()
    }
    return dataclasses.replace(
        config, providers=sections, upstream=dataclasses.replace(config.upstream, retries=0)
    )


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("kimi", "nrp"),
        ("gemma", "nrp"),
        ("qwen3", "nrp"),
        ("qwen", "nimbus"),
        ("qwen3-8", "vllm-cirrus"),
        ("qwen3-8-instruct", "vllm-cirrus"),  # `models` double as prefixes when model_prefixes is absent
        ("claude-sonnet-4", "anthropic"),
        ("anthropic/claude-sonnet-4", "openrouter"),
        ("~anthropic/claude", "openrouter"),
        ("z-ai/glm-4.6", "openrouter"),
        ("something-new", "nrp"),  # the default provider
    ],
)
async def test_an_earlier_config_json_routes_as_it_always_did(
    model: str, provider: str, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    recorder = ListRecorder()
    env = {"NRP_API_KEY": "k1", "OPENROUTER_KEY": "k2", "ANTHROPIC_API_KEY": "k3", "NIMBUS_API_KEY": "k4"}
    app = create_app(
        _legacy_config(fake_upstream.url),
        keys=KeyRing.from_env({"PROXY_KEY": "p"}),
        env=env,
        recorder=recorder,
    )
    async with serving(app) as url:
        body = {"model": model, "messages": MESSAGES, "enable_thinking": True}
        headers = {"Authorization": "Bearer p"}
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
    assert recorder.responses()[0].provider == provider
    sent = fake_upstream.requests[0]["body"]
    assert "enable_thinking" not in sent
    if model == "qwen3-8":
        assert sent["chat_template_kwargs"] == {"enable_thinking": True}


def test_an_earlier_config_json_parses_with_the_plugins_it_names() -> None:
    config = load_config(ROOT / "config" / "config.json")
    providers, problems = build_providers(config.providers, discover(), {})
    assert problems == []
    plugins = {name: p.settings.plugin for name, p in providers.items()}
    assert plugins == {
        "nrp": "nrp",
        "openrouter": "openrouter",
        "anthropic": "anthropic",  # the built-in anthropic plugin, named by the section
        "nimbus": "nimbus",
        "vllm-cirrus": "openai",
    }
    assert providers["anthropic"].settings.models_auth == "x-api-key"
    assert providers["anthropic"].settings.no_sampling_params == ("claude-opus-4-7",)
    assert providers["vllm-cirrus"].settings.prefixes == ("qwen3-8",)
    assert providers["nrp"].settings.prefixes == ()
