"""Limits on a real redis-server: the store's guarantees, a store that fails or restarts, several gateway
processes sharing it under twice the allowed load, and the Valkey deploy component."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from conftest import AUTH, CHAT, MakeGateway, gateway_config
from fake_upstream import FakeUpstream
from redis_server import RedisServer

from gateway.calls import Call
from gateway.limits.config import parse_limits
from gateway.limits.limiter import Limiter
from gateway.limits.redis_store import RedisStore
from gateway.limits.resp import Client
from gateway.limits.store import Counter, Kind, StoreError, Verdict
from gateway.limits.windows import bucket
from providers.base import Endpoint

URL = "/v1/chat/completions"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A store on the shared server, under a key prefix of its own: no test sees another's counters."""
    if not redis_server.ping():
        redis_server.restart()
    store = RedisStore.connect(
        redis_server.url, prefix=f"t{time.monotonic_ns()}", timeout_s=0.5, lease_s=3600
    )
    await store.start()
    yield store
    await store.close()


Charge = tuple[Counter, int]  # a counter, and the amount a call asks of it


def sliding(store: RedisStore, limit: int, amount: int, now: float, name: str = "rpm") -> Charge:
    return Counter(f"{store.prefix}:{name}", Kind.SLIDING, bucket(now), limit), amount


def calendar(store: RedisStore, window: str, end: float, limit: int, amount: int) -> Charge:
    return Counter(f"{store.prefix}:tpd:{window}", Kind.CALENDAR, int(end), limit), amount


def counters(charges: list[Charge]) -> list[Counter]:
    return [counter for counter, _ in charges]


async def admit(store: RedisStore, call_id: str, charges: list[Charge], now: float) -> Verdict:
    return await store.admit(
        call_id, store.bind(counters(charges), now), [amount for _, amount in charges], now
    )


# ---------------------------------------------------------------------------------------------- the store
async def test_no_sixty_seconds_ever_hold_more_than_a_sliding_limit(store: RedisStore) -> None:
    admitted, now = [], 2_000_000_000.0
    while now < 2_000_000_150:  # four calls a second against 20 a minute, for two and a half minutes
        if (await admit(store, f"c{now}", [sliding(store, 20, 1, now)], now)).admitted:
            admitted.append(now)
        now += 0.25
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 60) <= 20
    assert len(admitted) >= 2.5 * 20 * 60 / 61 - 1


async def test_a_refusal_says_when_the_oldest_bucket_leaves_and_charges_nothing(store: RedisStore) -> None:
    now = 2_000_000_000.25
    day = calendar(store, "2033-05-18", 2_000_073_600, 100, 40)
    assert (await admit(store, "a", [sliding(store, 2, 1, now), day], now)).admitted
    assert (await admit(store, "b", [sliding(store, 2, 1, now + 10), day], now + 10)).admitted
    verdict = await admit(store, "c", [sliding(store, 2, 1, now + 20), day], now + 20)
    assert (verdict.refused, verdict.used) == (0, (2, 80))
    assert verdict.retry_after == pytest.approx(2_000_000_061 - (now + 20))  # the first call's bucket leaves
    refused = await admit(store, "d", [sliding(store, 5, 1, now + 20), day], now + 20)
    assert (refused.refused, refused.used) == (1, (2, 80))
    assert await store.read(counters([sliding(store, 5, 0, now + 20), day]), now + 20) == (2, 80)


async def test_limits_reset_at_the_end_of_each_window(store: RedisStore) -> None:
    midnight = 2_000_073_600.0  # 2033-05-19 00:00 UTC
    before, after = midnight - 30.5, midnight + 29.5  # the bucket of `before` is counted until midnight + 30
    yesterday = calendar(store, "2033-05-18", midnight, 1, 1)
    today = calendar(store, "2033-05-19", midnight + 86400, 1, 1)
    assert (await admit(store, "a", [sliding(store, 1, 1, before), yesterday], before)).admitted
    assert not (await admit(store, "b", [sliding(store, 5, 1, before + 1), yesterday], before + 1)).admitted
    assert not (await admit(store, "c", [sliding(store, 1, 1, after), today], after)).admitted  # the minute
    assert (await admit(store, "d", [sliding(store, 1, 1, after + 1), today], after + 1)).admitted


async def test_a_settlement_applies_once_however_often_it_is_sent(store: RedisStore) -> None:
    now = 2_000_000_000.0
    tokens, slot = (
        sliding(store, 1000, 600, now, "tpm"),
        (Counter(f"{store.prefix}:c", Kind.CONCURRENT, 2**31, 1), 1),
    )
    assert (await admit(store, "a", [tokens, slot], now)).admitted
    bound = store.bind(counters([tokens, slot]), now)
    for _ in range(3):  # a retried batch whose first reply was lost
        store.settle("a", bound, [-590, -1], now + 1)
    store.settle("never-admitted", bound, [5000, -1], now + 1)
    assert await store.flush(5)
    assert await store.read(counters([tokens, slot]), now + 1) == (10, 0)
    assert store.health()["settled"] == 4 and store.health()["degraded"] is False


async def test_a_minute_kept_without_its_total_is_counted_from_its_buckets(store: RedisStore) -> None:
    """A sliding minute's hash keeps its total and its oldest bucket; one without them (as the version before
    wrote it: buckets only) is counted from its buckets, the ones that have left deleted."""
    now, key = 2_000_000_000.0, f"{store.prefix}:rpm"
    buckets = {bucket(now) - 61: 7, bucket(now) - 30: 2, bucket(now): 3}
    await store.client.execute("HSET", key, *(str(x) for pair in buckets.items() for x in pair))
    assert (await admit(store, "a", [sliding(store, 100, 1, now)], now)).used == (5,)
    assert await store.read(counters([sliding(store, 100, 0, now)]), now) == (6,)
    assert await store.read(counters([sliding(store, 100, 0, now + 31)]), now + 31) == (4,)
    assert await store.client.execute("HEXISTS", key, str(bucket(now) - 61)) == 0


async def test_a_command_its_caller_stopped_waiting_for_keeps_the_replies_in_order(store: RedisStore) -> None:
    abandoned = asyncio.create_task(store.client.execute("ECHO", "first"))
    await asyncio.sleep(0)  # sent, its reply on its way
    abandoned.cancel()
    assert await store.client.execute("ECHO", "second") == b"second"
    assert await store.client.execute("ECHO", "third") == b"third"


async def test_the_commands_of_one_turn_of_the_loop_leave_in_one_write(store: RedisStore) -> None:
    assert await store.client.execute("PING") == "PONG"  # connected
    protocol = store.client._protocol
    assert protocol is not None and protocol.transport is not None
    transport, writes = protocol.transport, []

    class Counting:  # the real connection, its writes counted
        def write(self, data: bytes) -> None:
            writes.append(data)
            transport.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(transport, name)

    protocol.transport = Counting()  # type: ignore[assignment]
    echoes = [store.client.execute("ECHO", f"call {i}") for i in range(20)]
    assert await asyncio.gather(*echoes) == [f"call {i}".encode() for i in range(20)]
    assert len(writes) == 1 and writes[0].count(b"ECHO") == 20
    assert await store.client.execute("ECHO", "alone") == b"alone"  # a later turn: a write of its own
    assert len(writes) == 2


async def test_a_settlement_is_sent_once_its_calls_task_has_ended(store: RedisStore) -> None:
    """The gateway settles a call in its request's task before the answer is written (a non-stream answer
    after its records, a loop turn later): the settlement is written after the answer, not before."""
    limiter = Limiter(parse_limits({"default": {"concurrent": 1}, "key_prefix": store.prefix}, []), store)

    async def request() -> tuple[object, int]:
        call = Call("s1", Endpoint.CHAT, key_name="default", model="m", body={})
        await limiter.admit(call, 10)
        limiter.settle(call)
        await asyncio.sleep(0.05)  # the answer being written
        return store.health()["pending_settlements"], store.settled

    assert await asyncio.create_task(request()) == (0, 0)
    await asyncio.sleep(0)  # the task's end hands the settlement over
    assert await store.flush(5) and store.settled == 1
    usage: Any = await limiter.usage("default")
    assert [row["used"] for row in usage["limits"]] == [0]  # the slot is free again


async def test_a_store_restart_loses_no_acknowledged_settlement(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """Calls admit and settle without pause while the server is killed (SIGKILL) and started again."""
    day = "2033-05-18"
    acknowledged, unsure = [], []  # what each call really used, by whether its admission was acknowledged
    stop = asyncio.Event()

    async def caller(n: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            call, now, used = f"w{n}-{i}", time.time(), 1 + (i % 7)
            charge = calendar(store, day, 2_000_073_600, 10**9, 10)
            try:
                await admit(store, call, [charge], now)
            except StoreError:
                unsure.append(used)  # the reply was lost: the store may or may not have admitted it
                store.settle(
                    call, store.bind(counters([charge]), now), [used - 10], now
                )  # applies exactly when the admission did
                await asyncio.sleep(0.01)
                continue
            store.settle(call, store.bind(counters([charge]), now), [used - 10], now)
            acknowledged.append(used)

    tasks = [asyncio.create_task(caller(n)) for n in range(8)]
    await asyncio.sleep(0.4)
    await asyncio.to_thread(redis_server.restart, hard=True, down_s=0.3)
    await asyncio.sleep(0.6)
    stop.set()
    await asyncio.gather(*tasks)
    assert await store.flush(15), store.health()
    [total] = await store.read(counters([calendar(store, day, 2_000_073_600, 10**9, 0)]), time.time())
    assert acknowledged and unsure, "the restart happened while calls were running"
    assert sum(acknowledged) <= total <= sum(acknowledged) + sum(unsure)
    assert store.health()["degraded"] is False


async def test_a_store_with_a_password_and_a_database(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth", "--requirepass", "s3cret/pw").start()
    try:
        now = 2_000_000_000.0
        for url, ok in ((f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/3", True),
                        (f"redis://127.0.0.1:{server.port}/0", False)):  # fmt: skip
            store = RedisStore.connect(url, prefix="auth", timeout_s=1, lease_s=60)
            try:
                if ok:
                    assert (await admit(store, "a", [sliding(store, 5, 1, now)], now)).admitted
                else:
                    with pytest.raises(StoreError):
                        await admit(store, "b", [sliding(store, 5, 1, now)], now)
            finally:
                await store.close()
        client = Client(f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/3")
        assert await client.execute("HGET", "auth:rpm", str(bucket(now))) == b"1"  # in database 3
        await client.close()
    finally:
        server.stop()


async def test_an_unreachable_or_hung_store_fails_fast(store: RedisStore, redis_server: RedisServer) -> None:
    now = time.time()
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            await admit(store, "a", [sliding(store, 5, 1, now)], now)
        assert time.monotonic() - started < 1.0  # the store's timeout is 0.5 s
        with pytest.raises(StoreError):  # and for a moment the store is not even asked
            await admit(store, "b", [sliding(store, 5, 1, now)], now)
        assert store.health()["degraded"] is True
    finally:
        redis_server.resume()


# ---------------------------------------------------------------------------------------------- one gateway
def redis_limits(server: RedisServer, **settings: Any) -> dict[str, Any]:
    return {
        "store": "redis",
        "redis_url": server.url,
        "key_prefix": f"g{time.monotonic_ns()}",
        "store_timeout_s": 0.2,
        "default": {"requests_per_minute": 1000},
        **settings,
    }


async def test_the_gateway_counts_in_redis_and_shows_it(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    limits = redis_limits(redis_server, default={"requests_per_minute": 2, "tokens_per_day": 10_000})
    gateway = await make_gateway(gateway_config(fake_upstream.url, limits=limits))
    for expected in (200, 200, 429):
        async with http.post(gateway.url + URL, json=CHAT, headers=AUTH) as response:
            assert response.status == expected
    async with http.get(gateway.url + "/v1/usage", headers=AUTH) as response:
        usage = await response.json()
    assert usage["store"] == "redis"
    assert {row["name"]: row["used"] for row in usage["limits"]} == {
        "default.requests_per_minute": 2,
        "default.tokens_per_day": 14,
    }
    async with http.get(gateway.url + "/health", headers=AUTH) as response:
        health = await response.json()
    assert health["status"] == "ok" and health["limits"]["store"] == "redis"


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_a_hung_store_never_hangs_a_call_and_the_policy_decides(
    policy: str,
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    limits = redis_limits(redis_server, on_store_error=policy)
    gateway = await make_gateway(gateway_config(fake_upstream.url, limits=limits))
    redis_server.pause()
    try:
        started = time.monotonic()
        statuses = []
        for _ in range(3):
            async with http.post(gateway.url + URL, json=CHAT, headers=AUTH) as response:
                statuses.append(response.status)
                body = await response.json()
        # one timeout (0.2 s), then the store is not asked again for a second
        assert time.monotonic() - started < 1.5
        async with http.get(gateway.url + "/health", headers=AUTH) as response:
            health = await response.json()
    finally:
        redis_server.resume()
    if policy == "allow":
        assert statuses == [200, 200, 200]
    else:
        assert statuses == [503, 503, 503] and body["error"]["code"] == "limits_unavailable"
        assert gateway.recorder.responses()[-1].limited_by == "limits.on_store_error"
    assert health["status"] == "degraded" and health["limits"]["degraded"] is True
    assert health["limits"]["store_errors"] == 3
    metric = gateway.gw.metrics.registry.get_sample_value(
        "gateway_limit_store_errors_total", {"operation": "admit"}
    )
    assert metric == 3
    await asyncio.sleep(1.1)  # the pause after a failure is over: the store is asked again, and answers
    async with http.post(gateway.url + URL, json=CHAT, headers=AUTH) as response:
        assert response.status == 200
    async with http.get(gateway.url + "/health", headers=AUTH) as response:
        assert (await response.json())["status"] == "ok"


# ---------------------------------------------------------------------------------------------- processes
CONCURRENCY = 24  # calls in flight at once, at most, spread over every gateway process
# Calls admitted and not yet settled, at most. A call's settlement reaches the store after its answer has
# left, so its client's next call, sent to another process, may be admitted first: two per client, while
# a settlement takes less than a call (a process stalled longer could leave more behind).
UNSETTLED = 2 * CONCURRENCY
WORDS = " ".join(["word"] * 12)  # the fake's answer: 12 completion tokens; "Say hello" is 2 prompt tokens
USED = 14


async def drive(urls: list[str], key: str, body: dict[str, Any], calls: int) -> list[tuple[int, Any]]:
    """`calls` calls from CONCURRENCY workers, round-robin over `urls`: (status, usage) of each."""
    results: list[tuple[int, Any]] = []
    todo = iter(range(calls))
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            for i in todo:
                async with session.post(urls[i % len(urls)] + URL, json=body, headers=headers) as response:
                    data = await response.json()
                results.append((response.status, data.get("usage")))

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 120)
    return results


async def stored(url: str, key: str) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/v1/usage", headers=headers) as response,
    ):
        return {row["name"]: row["used"] for row in (await response.json())["limits"]}


@pytest.fixture
def processes(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[str]]:
    """Three gateway processes (one of them with two workers) sharing the Redis store."""
    from gateway_process import GatewayProcess, UpstreamThread, fake_config

    upstream = UpstreamThread()
    limits = {
        "store": "redis",
        "redis_url": redis_server.url,
        "key_prefix": f"p{time.monotonic_ns()}",
        "store_timeout_s": 1.0,  # other test runs share these two cores: a slow reply is not a failed store
        "prompt_bytes_per_token": 64,
        "keys": {
            "req": {"requests_per_minute": 150},
            "tok": {"tokens_per_day": 3000},
            "over": {"tokens_per_day": 3000},
        },
    }
    config = fake_config(upstream.url, limits=limits, logging={"enabled": False})
    env = {f"PROXY_KEY_{name.upper()}": f"{name}-key-0123456789" for name in ("req", "tok", "over")}
    gateways = [GatewayProcess(tmp_path, config, env, args=args) for args in ((), (), ("--workers", "2"))]
    try:
        for gateway in gateways:
            gateway.start()
        yield [g.url for g in gateways]
    finally:
        for gateway in gateways:
            if gateway.proc is not None and gateway.proc.poll() is None:
                gateway.stop()
        upstream.close()


def row(what: str, limit: int, admitted: int, excess: int) -> str:
    """A line of the accuracy table: the limit, what was admitted, the most calls in flight could add."""
    error, bound = 100 * (admitted - limit) / limit, f"{UNSETTLED} x {excess} = {UNSETTLED * excess}"
    return f"| {what} | {limit} | {admitted} | {bound} | {error:+.2f} % |"


async def test_several_processes_under_twice_the_load_admit_the_limit_plus_what_was_in_flight(
    processes: list[str],
) -> None:
    table = ["| limit | set | admitted | unsettled x excess | error |", "|---|---|---|---|---|"]
    answer = {"fake": {"content": WORDS}}

    # requests: exact, whatever was in flight
    results = await drive(processes, "req-key-0123456789", {**CHAT, **answer}, 300)
    admitted = sum(1 for status, _ in results if status == 200)
    assert {status for status, _ in results} == {200, 429}
    assert admitted == 150
    table.append(row("requests_per_minute", 150, admitted, 0))

    # tokens, each call reserving at least what it uses (max_tokens 20, 14 used): never past the limit
    results = await drive(processes, "tok-key-0123456789", {**CHAT, **answer, "max_tokens": 20}, 430)
    tokens = sum(usage["total_tokens"] for status, usage in results if status == 200)
    assert 0.98 * 3000 <= tokens <= 3000
    assert (await stored(processes[0], "tok-key-0123456789"))["keys.tok.tokens_per_day"] == tokens
    table.append(row("tokens_per_day, reserved >= used", 3000, tokens, 0))

    # tokens, each call using 10 more than it reserved (max_tokens 1, a provider that ignores it): past the
    # limit by at most what the calls not yet settled used beyond their reservations
    results = await drive(processes, "over-key-0123456789", {**CHAT, **answer, "max_tokens": 1}, 430)
    tokens = sum(usage["total_tokens"] for status, usage in results if status == 200)
    excess = USED - (1 + 3)  # 1 completion token and the prompt's 3 (its ~150 bytes over 64) reserved
    assert 0.98 * 3000 <= tokens <= 3000 + UNSETTLED * excess
    assert (await stored(processes[1], "over-key-0123456789"))["keys.over.tokens_per_day"] == tokens
    table.append(row(f"tokens_per_day, used = reserved + {excess}", 3000, tokens, excess))
    print("\n" + "\n".join(table))


# ---------------------------------------------------------------------------------------------- deploy
LIMITS_SECTION = """
limits:
  store: redis
  default: {requests_per_minute: 60, tokens_per_minute: 200000, concurrent: 8}
  models:
    "anthropic/": {cost_per_day_usd: 10}
"""


@pytest.fixture(scope="module")
def with_valkey(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The example overlay with the Valkey component and a config whose limits use it, rendered."""
    from test_deploy import OVERLAY, ROOT, render

    folder = tmp_path_factory.mktemp("with-valkey")
    (folder / "config.yaml").write_text((OVERLAY / "config.yaml").read_text() + LIMITS_SECTION)
    deploy = os.path.relpath(ROOT / "deploy", folder)  # kustomize takes no absolute paths
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "biodiversity-lab",
                "resources": [f"{deploy}/overlays/example"],
                "components": [f"{deploy}/components/valkey"],
                "configMapGenerator": [
                    {"name": "open-llm-proxy-config", "behavior": "replace", "files": ["config.yaml"]}
                ],
            }
        )
    )
    return render(folder)


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_valkey_component_is_valid_for_each_promised_kubernetes_version(
    with_valkey: list[dict[str, Any]],
) -> None:
    from test_deploy import K8S_VERSIONS

    assert {o["metadata"]["namespace"] for o in with_valkey} == {"biodiversity-lab"}
    for version in K8S_VERSIONS:
        for obj in with_valkey:
            assert kubernetes_validate.validate(obj, version, strict=True) == version


def test_only_the_gateways_pods_reach_valkey_and_valkey_reaches_nothing(
    with_valkey: list[dict[str, Any]],
) -> None:
    gateway_pods = named(with_valkey, "Deployment", "open-llm-proxy")["spec"]["template"]["metadata"][
        "labels"
    ]
    valkey = named(with_valkey, "StatefulSet", "open-llm-proxy-valkey")["spec"]["template"]
    valkey_pods = valkey["metadata"]["labels"]
    policy = named(with_valkey, "NetworkPolicy", "open-llm-proxy-valkey")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= valkey_pods.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert source.keys() == {"podSelector"}
    assert source["podSelector"]["matchLabels"].items() <= gateway_pods.items()
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    # the gateway's own policy never matches Valkey's pods, and lets the gateway out to Valkey only
    own = named(with_valkey, "NetworkPolicy", "open-llm-proxy")["spec"]
    assert not own["podSelector"]["matchLabels"].items() <= valkey_pods.items()
    [to_valkey] = [e for e in own["egress"] if any("podSelector" in t for t in e.get("to", []))]
    assert to_valkey["to"][0]["podSelector"]["matchLabels"].items() <= valkey_pods.items()
    assert to_valkey["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_the_gateway_finds_a_durable_unprivileged_valkey(
    with_valkey: list[dict[str, Any]], tmp_path: Path
) -> None:
    from test_deploy import container, rendered_config

    env = {e["name"]: e for e in container(with_valkey)["env"]}
    service = named(with_valkey, "Service", "open-llm-proxy-valkey")
    assert env["LIMITS_REDIS_URL"]["value"] == f"redis://{service['metadata']['name']}:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379
    spec = named(with_valkey, "StatefulSet", "open-llm-proxy-valkey")["spec"]
    [valkey] = spec["template"]["spec"]["containers"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    command = " ".join(valkey["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command  # as the tests run it
    assert valkey["volumeMounts"] == [{"name": "data", "mountPath": "/data"}] and "--dir /data" in command
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    name, _, tag = valkey["image"].rpartition(":")
    assert name.endswith("valkey/valkey") and tag and tag != "latest"
    ctx = valkey["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False
    path, config = rendered_config(with_valkey, tmp_path)
    assert config.limits.store == "redis" and config.limits.enabled
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
