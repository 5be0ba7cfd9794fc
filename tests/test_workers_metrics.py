"""`serve --workers 2` as one gateway: /metrics adds up the group, restarts included; /health describes it; a
system prompt is recorded once across the workers. Real subprocesses over loopback; calls are spread over the
workers by fresh connections (the kernel shares a SO_REUSEPORT port out by connection). A gateway serving
alone keeps its values without locks, and counts the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import FAST_UPSTREAM, PROVIDER_KEY, CliGateway, StartCli, provider_section, until
from fake_upstream import FakeUpstream
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

from gateway.logs.prompts import PromptLedger
from gateway.metrics import LoopValue, Metrics, keep_values_in_the_loop

KEY = {"Authorization": "Bearer k"}
SYSTEM = {"role": "system", "content": "You are the group's one prompt."}
OK = {"provider": "fake", "model": "fake-model", "status": "200"}
SLOW_STREAM = {"stream": True, "fake": {"chunks": 24, "chunk_delay": 0.25}}  # six seconds of answer
DAY = 86400.0


async def start_group(start_cli: StartCli, fake_url: str, tmp_path: Path, **sections: Any) -> CliGateway:
    """Two workers in full capture; the run folder the supervisor makes goes under tmp_path/run."""
    (tmp_path / "run").mkdir()
    config = {
        "default_provider": "fake",
        "providers": {"fake": provider_section(fake_url)},
        "upstream": FAST_UPSTREAM,
        "logging": {"capture": "full"},
        **sections,
    }
    env = {"PROXY_KEY": "k", "FAKE_KEY": PROVIDER_KEY, "TMPDIR": str(tmp_path / "run")}
    return await start_cli(config, args=["--workers", "2"], env=env)


async def both_answer(session: aiohttp.ClientSession, url: str) -> None:
    """Wait until each worker has answered once: ready means one worker listens, not both."""
    answered: set[int] = set()
    for _ in range(400):
        answered.add((await health(session, url))["pid"])
        if len(answered) == 2:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"only {answered} answered")


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client opening a new connection for every request, so that both workers get some."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def get(session: aiohttp.ClientSession, url: str) -> bytes:
    """GET with the key, tried again while a worker is being replaced (its connections are reset)."""
    for _ in range(50):
        try:
            async with session.get(url, headers=KEY) as response:
                assert response.status == 200
                return await response.read()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    pytest.fail(f"{url} did not answer")


async def health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    return orjson.loads(await get(session, url + "/health"))  # type: ignore[no-any-return]


async def samples(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, frozenset[Any]], float]:
    """One scrape of /metrics: `(sample name, labels) -> value`."""
    text = (await get(session, url + "/metrics")).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def chat(session: aiohttp.ClientSession, url: str, **extra: Any) -> str:
    """One call with the shared system prompt; its request id."""
    body = {"model": "fake-model", "messages": [SYSTEM, {"role": "user", "content": "Hi"}], **extra}
    async with session.post(url + "/v1/chat/completions", json=body, headers=KEY) as response:
        assert response.status == 200
        await response.read()
        return response.headers["X-Request-Id"]


def spooled(spool: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every record in the spool with the pid of the worker that wrote it (chunks are named by pid)."""
    found = []
    for path in spool.glob("*/*.jsonl*"):
        pid = int(path.name.split("-")[-2])
        found += [(pid, orjson.loads(line)) for line in path.read_bytes().splitlines()]
    return found


def responders(spool: Path) -> Counter[int]:
    return Counter(pid for pid, record in spooled(spool) if record["type"] == "response")


async def test_metrics_add_up_the_group_across_a_restart_and_a_prompt_is_recorded_once(
    start_cli: StartCli, fake_upstream: FakeUpstream, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = await start_group(start_cli, fake_upstream.url, tmp_path)
    await both_answer(fresh, gateway.url)
    spool = tmp_path / "spool"
    for _ in range(20):
        await chat(fresh, gateway.url)
    await until(lambda: responders(spool).total() == 20, what="20 response records")
    served = responders(spool)
    assert len(served) == 2, f"one worker served every call: {served}"  # 2**-19 odds: the kernel is not fair
    prompts = [r for _, r in spooled(spool) if r["type"] == "system_prompt"]
    assert len(prompts) == 1 and prompts[0]["content"] == SYSTEM["content"]  # both workers saw it

    for _ in range(6):  # whichever worker answers
        scrape = await samples(fresh, gateway.url)
        assert value(scrape, "gateway_requests_total", **OK) == 20
        assert (
            value(scrape, "gateway_request_duration_seconds_count", provider="fake", model="fake-model") == 20
        )
        assert value(scrape, "gateway_log_records_total") == 41  # 20 calls' two records, and one prompt

    answer = await health(fresh, gateway.url)
    group = answer["workers"]
    assert group["supervisor_pid"] == gateway.proc.pid and group["configured"] == group["alive"] == 2
    assert answer["pid"] in group["pids"] and group["slot"] in (0, 1)  # which worker answered
    assert sorted(group["pids"]) == sorted(served)
    victim, survivor = group["pids"]
    os.kill(victim, signal.SIGKILL)
    # Until a replacement is up (a second at least) the survivor answers alone, counting the dead one's calls.
    group = await group_until(fresh, gateway.url, lambda g: victim not in g["pids"])
    assert group["pids"] == [survivor] and group["alive"] == 1 and group["configured"] == 2
    assert value(await samples(fresh, gateway.url), "gateway_requests_total", **OK) == 20

    group = await group_until(fresh, gateway.url, lambda g: g["alive"] == 2)
    assert survivor in group["pids"] and victim not in group["pids"]
    for _ in range(10):
        await chat(fresh, gateway.url)
    for _ in range(6):
        assert value(await samples(fresh, gateway.url), "gateway_requests_total", **OK) == 30
    assert [r["type"] for _, r in spooled(spool)].count("system_prompt") == 1  # the restart wrote it no more
    [run] = (tmp_path / "run").iterdir()
    assert {"worker-0.pid", "worker-1.pid", f"counter_{victim}.db"} <= {p.name for p in run.iterdir()}
    assert await gateway.stop() == 0
    assert not run.exists()  # the supervisor removes the run folder as it exits


async def test_the_keys_tokens_add_up_over_the_group_in_any_workers_scrape(
    start_cli: StartCli,
    fake_upstream: FakeUpstream,
    fresh: aiohttp.ClientSession,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """Each worker adds its calls' tokens into the group's files every second (and before a scrape of its
    own): a scrape by either worker sees every call's within about a second."""
    limits = {
        "store": "redis",  # limits with workers count in a shared store
        "redis_url": redis_server.url,
        "key_prefix": f"w{time.monotonic_ns()}",
        "store_timeout_s": 1.0,
        "default": {"requests_per_minute": 10_000, "tokens_per_minute": 10_000_000},
    }
    gateway = await start_group(start_cli, fake_upstream.url, tmp_path, limits=limits)
    await both_answer(fresh, gateway.url)
    used = 0
    for _ in range(12):
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
        async with fresh.post(gateway.url + "/v1/chat/completions", json=body, headers=KEY) as response:
            assert response.status == 200
            used += (await response.json())["usage"]["total_tokens"]
    assert used > 0 and len(responders(tmp_path / "spool")) == 2, "both workers served calls"
    counted = 0.0
    for _ in range(100):  # a sibling's share reaches the files within a second
        counted = value(await samples(fresh, gateway.url), "gateway_key_tokens_total", key="default")
        if counted == used:
            break
        await asyncio.sleep(0.05)
    assert counted == used
    for _ in range(6):  # whichever worker answers, and no step counted twice
        assert value(await samples(fresh, gateway.url), "gateway_key_tokens_total", key="default") == used
    assert await gateway.stop() == 0


async def group_until(
    session: aiohttp.ClientSession, url: str, holds: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The group as /health describes it, once `holds` it (a killed worker takes a moment to be reaped)."""
    group: dict[str, Any] = {}
    for _ in range(200):
        group = (await health(session, url))["workers"]
        if holds(group):
            return group
        await asyncio.sleep(0.02)
    pytest.fail(f"the group stayed {group}")


async def test_live_gauges_sum_over_the_workers_and_drop_with_a_dead_one(
    start_cli: StartCli, fake_upstream: FakeUpstream, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = await start_group(start_cli, fake_upstream.url, tmp_path)
    await both_answer(fresh, gateway.url)
    streams = [asyncio.create_task(chat(fresh, gateway.url, **SLOW_STREAM)) for _ in range(6)]
    spool = tmp_path / "spool"
    await until(lambda: len(fake_upstream.requests) == 6, within=10, what="six streams upstream")
    await until(lambda: sum(r["type"] == "request" for _, r in spooled(spool)) == 6, what="their records")
    holders = Counter(pid for pid, r in spooled(spool) if r["type"] == "request")
    scrape = await scrape_until(fresh, gateway.url, "gateway_in_flight_requests", 6)
    assert value(scrape, "gateway_open_streams", provider="fake", model="fake-model") == 6
    # Published with the calls in flight: the streams' six connections, and this scrape's own (or two).
    assert 6 <= value(scrape, "gateway_client_connections") <= 8

    victim, _ = holders.most_common(1)[0]  # a worker holding streams
    os.kill(victim, signal.SIGKILL)
    left = 6 - holders[victim]
    scrape = await scrape_until(fresh, gateway.url, "gateway_in_flight_requests", left)
    assert value(scrape, "gateway_open_streams", provider="fake", model="fake-model") == left
    results = await asyncio.gather(*streams, return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == left  # the survivor's streams ended whole
    assert await gateway.stop() == 0


async def scrape_until(
    session: aiohttp.ClientSession, url: str, gauge: str, expected: float
) -> dict[tuple[str, frozenset[Any]], float]:
    """A scrape where `gauge` reads `expected` (workers publish calls in flight every second)."""
    scrape: dict[tuple[str, frozenset[Any]], float] = {}
    for _ in range(100):
        scrape = await samples(session, url)
        if value(scrape, gauge) == expected:
            return scrape
        await asyncio.sleep(0.05)
    pytest.fail(f"{gauge} stayed at {value(scrape, gauge)}, not {expected}")


def test_one_ledger_of_two_sharing_a_folder_claims_each_prompt_once_a_day(tmp_path: Path) -> None:
    first, second = PromptLedger(tmp_path), PromptLedger(tmp_path)  # two workers on one spool
    monday = 20_000 * DAY + 5
    assert first.claim("aa", monday) and not second.claim("aa", monday + 1)
    assert not first.claim("aa", monday + 2)  # remembered: no system call
    assert second.claim("bb", monday) and not first.claim("bb", monday)
    assert sorted(p.name for p in (tmp_path / "2024-10-04").iterdir()) == ["aa", "bb"]
    # A new UTC day: the prompt is written again, into that day's folder; the last day's markers go.
    assert second.claim("aa", monday + DAY) and not first.claim("aa", monday + DAY + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["2024-10-05"]
    assert first.claim("bb", monday + 3)  # a late call of yesterday counts as today's
    assert sorted(p.name for p in (tmp_path / "2024-10-05").iterdir()) == ["aa", "bb"]
    restarted = PromptLedger(tmp_path)  # today's markers hold for a restarted worker
    assert not restarted.claim("aa", monday + DAY) and not restarted.claim("bb", monday + DAY)


def test_a_ledger_whose_folder_cannot_be_written_lets_the_prompt_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    ledger = PromptLedger(tmp_path / "file")  # no folder can be made under a file
    assert ledger.claim("aa", DAY) and not ledger.claim("aa", DAY)  # once per process, as with no folder
    alone = PromptLedger()
    assert alone.claim("aa", DAY) and not alone.claim("aa", DAY) and alone.claim("aa", 2 * DAY)


def test_a_lone_process_counts_in_loop_values_as_prometheus_clients_own_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # the switch is process-wide: undone after
    keep_values_in_the_loop()
    metrics = Metrics(["m"])
    for seconds in (0.2, 0.3, 7.0):
        metrics.observe_call("p", "m", 200, seconds, 0.004)
    metrics.in_flight.set(5)
    metrics.in_flight.set(4)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    call = (("model", "m"), ("provider", "p"))
    assert samples["gateway_requests_total", (*call, ("status", "200"))] == 3
    assert samples["gateway_request_duration_seconds_count", call] == 3
    assert samples["gateway_request_duration_seconds_sum", call] == pytest.approx(7.5)
    assert samples["gateway_request_duration_seconds_bucket", (("le", "0.25"), *call)] == 1
    assert samples["gateway_request_duration_seconds_bucket", (("le", "10.0"), *call)] == 3
    assert samples["gateway_time_to_first_chunk_seconds_bucket", (("le", "0.005"), *call)] == 3
    assert samples["gateway_in_flight_requests", ()] == 4
    assert type(metrics.requests.labels("p", "m", "200")._value) is LoopValue
