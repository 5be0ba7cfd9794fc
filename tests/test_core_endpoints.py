"""The HTTP surface: every route answers what SPEC.md promises, each response with its request id."""

from __future__ import annotations

import re

import aiohttp
import orjson
from conftest import AUTH, CHAT, PROVIDER_KEY, PROXY_KEY, MakeGateway, RunningGateway, gateway_config
from conftest import provider_section as section
from fake_upstream import FakeUpstream, Reply
from prometheus_client.parser import text_string_to_metric_families

from gateway.native import compiled

REQUEST_ID = re.compile(r"\A[0-9a-f]{32}\Z")
PREFLIGHT = {"Access-Control-Request-Method": "POST"}


async def test_chat_completion_returns_the_upstream_answer_unchanged(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.read()
    assert body == fake_upstream.requests[0]["sent"][0]
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    assert fake_upstream.requests[0]["path"] == "/v1/chat/completions"


async def test_chat_alias_serves_plain_and_streamed_calls(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/chat", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
        assert await response.read() == fake_upstream.requests[0]["sent"][0]
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(gateway.url + "/chat", json=streamed, headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert await response.read() == b"".join(fake_upstream.requests[1]["sent"])
    assert [r["path"] for r in fake_upstream.requests] == ["/v1/chat/completions"] * 2


async def test_completions_and_embeddings_are_routed_by_model(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    completion = {"model": "fake/base", "prompt": "Once upon a time", "max_tokens": 5}
    async with http.post(gateway.url + "/v1/completions", json=completion, headers=AUTH) as response:
        assert response.status == 200
        assert (await response.json())["object"] == "text_completion"
    embedding = {"model": "fake-model", "input": ["one", "two"]}
    async with http.post(gateway.url + "/v1/embeddings", json=embedding, headers=AUTH) as response:
        assert response.status == 200
        data = await response.json()
    assert [item["index"] for item in data["data"]] == [0, 1]
    assert [(r["path"], r["body"]) for r in fake_upstream.requests] == [
        ("/v1/completions", completion),
        ("/v1/embeddings", embedding),
    ]
    assert [c.provider for c in gateway.recorder.responses()] == ["fake", "fake"]


async def test_llm_passes_the_raw_body_to_the_default_provider_byte_for_byte(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw_config = gateway_config(
        fake_upstream.url,
        default_provider="fake",
        providers={
            "other": section("http://127.0.0.1:9/v1", models=["o"]),
            "fake": section(fake_upstream.url),
        },
    )
    gateway = await make_gateway(raw_config)
    # Odd spacing, key order, escapes and a field the gateway would otherwise translate: all kept.
    raw = b'{ "messages":[{"role":"user","content":"caf\\u00e9"}],\n  "model" : "x", "enable_thinking":true}'
    async with http.post(gateway.url + "/llm", data=raw, headers=AUTH) as response:
        assert response.status == 200
        assert await response.read() == fake_upstream.requests[0]["sent"][0]
    seen = fake_upstream.requests[0]
    assert seen["raw"] == raw
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    async with http.post(gateway.url + "/llm", data=raw) as response:
        assert response.status == 401
    assert len(fake_upstream.requests) == 1
    # Streamed: no usage is asked for on the client's behalf, so every upstream byte comes back.
    streamed = b'{"model":"x","stream":true,  "messages":[{"role":"user","content":"hi"}]}'
    async with http.post(gateway.url + "/llm", data=streamed, headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert await response.read() == b"".join(fake_upstream.requests[1]["sent"])
    assert fake_upstream.requests[1]["raw"] == streamed


async def test_llm_takes_no_fallback_model_and_keeps_the_clients_bytes(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw_config = gateway_config(
        fake_upstream.url,
        default_provider="fake",
        upstream={"retries": 0, "retry_backoff_s": 0.01, "fallbacks": {"fake-model": ["fake/other"]}},
    )
    gateway = await make_gateway(raw_config)
    fake_upstream.queue(Reply(status=503))
    raw = b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}'
    async with http.post(gateway.url + "/llm", data=raw, headers=AUTH) as response:
        assert response.status == 503
    assert [r["raw"] for r in fake_upstream.requests] == [raw]


async def test_llm_without_a_default_provider_is_a_clear_400(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/llm", json=CHAT, headers=AUTH) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "no_default_provider"


async def test_health_reports_providers_key_and_logging(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw_config = gateway_config(
        fake_upstream.url,
        providers={
            "fake": section(fake_upstream.url),
            "keyless": section(fake_upstream.url, api_key_env="MISSING_KEY", models=["k"]),
        },
    )
    gateway = await make_gateway(raw_config)
    async with http.get(gateway.url + "/health", headers=AUTH) as response:
        assert response.status == 200
        health = await response.json()
    assert health["status"] == "ok"
    assert health["proxy_key_configured"] is True
    assert health["providers"]["fake"]["configured"] is True
    assert health["providers"]["fake"]["endpoint"] == f"{fake_upstream.url}/v1/chat/completions"
    assert health["providers"]["keyless"]["configured"] is False
    assert health["logging"] == {"enabled": True, "recorder": "list"}
    assert health["compiled"] == compiled()  # the build this worker runs (gateway.native)
    assert PROVIDER_KEY not in orjson.dumps(health).decode()


async def test_probes_answer_and_readiness_fails_while_draining(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + "/livez") as response:
        assert response.status == 200
    async with http.get(gateway.url + "/readyz") as response:
        assert response.status == 200
    gateway.gw.draining = True
    async with http.get(gateway.url + "/readyz") as response:
        assert response.status == 503
    async with http.get(gateway.url + "/livez") as response:
        assert response.status == 200
    async with http.get(gateway.url + "/health") as response:
        assert (await response.json())["status"] == "draining"


async def test_every_response_carries_a_fresh_request_id(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    calls = [
        ("POST", "/v1/chat/completions", AUTH, orjson.dumps(CHAT)),  # 200
        ("POST", "/v1/chat/completions", AUTH, orjson.dumps({**CHAT, "stream": True})),  # stream
        ("POST", "/v1/chat/completions", {}, orjson.dumps(CHAT)),  # 401
        ("POST", "/v1/chat/completions", AUTH, b"{not json"),  # 400
        ("POST", "/v1/chat/completions", AUTH, orjson.dumps({**CHAT, "model": "nope"})),  # 404 model
        ("GET", "/v1/chat/completions", AUTH, b""),  # 405
        ("GET", "/no/such/route", {}, b""),  # 404 route
        ("GET", "/health", {}, b""),
        ("GET", "/livez", {}, b""),
        ("GET", "/metrics", {}, b""),
        ("GET", "/v1/models", AUTH, b""),
        ("OPTIONS", "/v1/chat/completions", {"Origin": "https://a.example", **PREFLIGHT}, b""),
    ]
    seen = set()
    for method, path, headers, body in calls:
        async with http.request(method, gateway.url + path, headers=headers, data=body) as response:
            await response.read()
            request_id = response.headers.get("X-Request-Id", "")
            assert REQUEST_ID.match(request_id), (method, path, response.status, request_id)
            seen.add(request_id)
    assert len(seen) == len(calls)


async def test_models_lists_config_and_discovered_models_and_caches_discovery(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.models = ["fake-model", "discovered-a", "discovered-b"]
    for _ in range(3):
        async with http.get(gateway.url + "/v1/models", headers=AUTH) as response:
            assert response.status == 200
            listing = await response.json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["fake-model", "discovered-a", "discovered-b"]
        assert {m["owned_by"] for m in listing["data"]} == {"fake"}
    assert len(fake_upstream.model_listings) == 1
    # The discovery request carries the provider's key, never the caller's.
    assert fake_upstream.model_listings[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    async with http.get(gateway.url + "/v1/models") as response:
        assert response.status == 401


async def test_model_discovery_can_authenticate_with_x_api_key(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    providers = {"fake": section(fake_upstream.url, models_auth="x-api-key", extra_headers={"X-Org": "o"})}
    gateway = await make_gateway(gateway_config(fake_upstream.url, providers=providers))
    async with http.get(gateway.url + "/v1/models", headers=AUTH) as response:
        assert response.status == 200
    (seen,) = fake_upstream.model_listings
    assert seen["x-api-key"] == PROVIDER_KEY
    assert seen["X-Org"] == "o"
    assert "Authorization" not in seen


async def test_a_provider_with_discovery_off_is_not_asked(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    providers = {"fake": section(fake_upstream.url, discover_models=False)}
    gateway = await make_gateway(gateway_config(fake_upstream.url, providers=providers))
    async with http.get(gateway.url + "/v1/models", headers=AUTH) as response:
        assert [m["id"] for m in (await response.json())["data"]] == ["fake-model"]
    assert fake_upstream.model_listings == []


async def test_models_degrades_gracefully_when_an_upstream_is_down(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.models = ["found-upstream"]
    down = "http://127.0.0.1:9/v1/chat/completions"  # the discard port: nothing listens there
    raw_config = gateway_config(
        fake_upstream.url,
        providers={
            "down": section(fake_upstream.url, endpoint=down, models=["down-model"], model_prefixes=[]),
            "fake": section(fake_upstream.url),
        },
    )
    gateway = await make_gateway(raw_config)
    async with http.get(gateway.url + "/v1/models", headers=AUTH) as response:
        assert response.status == 200
        ids = [m["id"] for m in (await response.json())["data"]]
    assert ids == ["down-model", "fake-model", "found-upstream"]


Sample = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, **labels: str) -> Sample:
    return name, tuple(sorted(labels.items()))


def _samples(text: str) -> dict[Sample, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_requests_latency_ttfb_and_errors_by_provider_and_model(
    gateway: RunningGateway, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as response:
        assert response.status == 200
    fake_upstream.queue(Reply(status=503))
    streamed = {**CHAT, "stream": True}
    async with http.post(gateway.url + "/v1/chat/completions", json=streamed, headers=AUTH) as response:
        assert response.status == 200
        await response.read()
    async with http.get(gateway.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        samples = _samples(await response.text())
    model = {"provider": "fake", "model": "fake-model"}
    assert samples[_key("gateway_requests_total", **model, status="200")] == 2
    assert samples[_key("gateway_request_duration_seconds_count", **model)] == 2
    assert samples[_key("gateway_request_duration_seconds_bucket", **model, le="+Inf")] == 2
    assert samples[_key("gateway_time_to_first_chunk_seconds_count", **model)] == 2
    assert samples[_key("gateway_time_to_first_chunk_seconds_bucket", **model, le="+Inf")] == 2
    assert samples[_key("gateway_upstream_retries_total", provider="fake")] == 1
    assert samples[_key("gateway_upstream_errors_total", provider="fake", reason="http_503")] == 1
    assert samples[_key("gateway_open_streams", **model)] == 0
    assert PROXY_KEY not in str(samples)
