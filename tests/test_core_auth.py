"""Proxy keys: every proxied route needs one; keys of every configured kind work; none leaks either way."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from conftest import AUTH, CHAT, PROVIDER_KEY, PROXY_KEY, MakeGateway, RunningGateway
from fake_upstream import FakeUpstream, Reply

from gateway.auth import KeyRing

PROXIED = ["/v1/chat/completions", "/chat", "/v1/completions", "/v1/embeddings", "/llm"]
BODY = {**CHAT, "prompt": "p", "input": "i"}


@pytest.mark.parametrize("path", PROXIED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-key", f"Basic {PROXY_KEY}", "Bearer ", PROXY_KEY, f"Bearer {PROXY_KEY}x"],
    ids=["missing", "wrong", "basic", "empty", "no-scheme", "longer"],
)
async def test_missing_or_wrong_keys_get_401_in_openai_shape_and_nothing_goes_upstream(
    path: str,
    authorization: str | None,
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with http.post(gateway.url + path, json=BODY, headers=headers) as response:
        assert response.status == 401
        assert response.content_type == "application/json"
        body = await response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "invalid_api_key"
    assert fake_upstream.requests == []
    assert [c.status for c in gateway.recorder.responses()] == [401]  # rejected calls are recorded too


async def test_models_needs_a_key_but_probes_and_health_do_not(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + "/v1/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
    for path in ("/health", "/livez", "/readyz", "/metrics"):
        async with http.get(gateway.url + path) as response:
            assert response.status == 200, path


async def test_default_extra_and_named_keys_all_work_and_are_known_by_name(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    env = {
        "PROXY_KEY": "main-key",
        "PROXY_KEYS_EXTRA": "extra-one, extra-two",
        "PROXY_KEY_ALICE": "alice-key",
        "PROXY_KEY_CI_BOT": "bot-key",
    }
    gateway = await make_gateway(keys=KeyRing.from_env(env))
    keys = ["main-key", "extra-one", "extra-two", "alice-key", "bot-key"]
    for key in keys:
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers) as response:
            assert response.status == 200, key
    names = [c.key_name for c in gateway.recorder.responses()]
    assert names == ["default", "extra-1", "extra-2", "alice", "ci_bot"]
    async with http.post(
        gateway.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer extra-one, extra-two"},
    ) as response:
        assert response.status == 401
    assert len(fake_upstream.requests) == len(keys)


async def test_the_clients_key_never_goes_upstream_the_providers_key_does(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", CHAT),
        ("/v1/embeddings", {"model": "fake-model", "input": "x"}),
    ]
    for path, body in calls:
        for stream in (False, True):
            async with http.post(
                gateway.url + path, json={**body, "stream": stream}, headers=AUTH
            ) as response:
                assert response.status == 200
                await response.read()
    assert len(fake_upstream.requests) == 4
    for seen in fake_upstream.requests:
        assert seen["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
        assert PROXY_KEY not in str(seen["headers"])
        assert PROXY_KEY.encode() not in seen["raw"]


async def test_provider_keys_never_come_back_to_the_client(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.queue(Reply(status=401, echo_key=True), Reply(status=403, echo_key=True))
    seen: list[bytes] = []
    for _ in range(2):
        async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
            seen.append(await response.read() + str(response.headers).encode())
    for path in ("/health", "/v1/models", "/metrics"):
        async with http.get(gateway.url + path, headers=AUTH) as response:
            seen.append(await response.read() + str(response.headers).encode())
    # The fake really did quote the key it was sent: the gateway took it out.
    assert PROVIDER_KEY.encode() in fake_upstream.requests[0]["sent"][0]
    for answer in seen:
        assert PROVIDER_KEY.encode() not in answer
    assert b"[REDACTED]" in seen[0]
