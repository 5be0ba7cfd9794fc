"""Benchmark the gateway against the upstream it fronts, on this machine, in one run.

Starts `scripts/bench_upstream.py` and `python -m gateway serve --workers 1` on free loopback ports, pins the
gateway to one core and the upstream plus this load generator to another (taskset, as the shared peer harness
does), and drives bounded closed-loop load with aiohttp. Every phase is bounded in count and in time. Direct
and gateway rounds alternate, and each number is the median over rounds, so slow drift from other work on
the machine falls on both sides. Phases:

  latency   non-streaming, concurrency 1 and 32: added p50/p99 and the ratio to direct, requests/s,
            gateway CPU ms per request (/proc utime+stime of its process tree over the c=32 phase)
  streams   streaming at concurrency 16, 20 chunks 5 ms apart: added time to first chunk p50/p99
  hold      N streams opened at once, each a few seconds long with slow chunks: how many were open at the
            same time, and whether every one got all its chunks and [DONE]
  logging   fresh gateways with logging off, summary and full, interleaved: the cost of logging

Usage: python scripts/bench.py [--quick] [--json] [--logging off|summary|full] [--streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mock-gpt"
TICK = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
TARGETS = {  # what the gateway aims for; printed next to the results
    "added_p50_c1": 0.5,
    "added_p99_c1": 1.0,
    "cpu_ms": 0.25,
    "added_ttfb_p99": 1.0,
    "streams": 2000.0,
    "idle_rss_mb": 60.0,
    "logging_rps_cost": 0.15,
    "logging_added_p50": 0.2,
}


@dataclass(frozen=True)
class Sizes:
    rounds: int = 3
    lat_n: int = 1000
    tput_n: int = 4000
    tput_c: int = 32
    stream_n: int = 400
    stream_c: int = 16
    stream_chunks: int = 20
    stream_delay_ms: float = 5.0
    hold_chunks: int = 10
    hold_delay_ms: float = 400.0
    warmup_s: float = 3.0
    phase_max_s: float = 30.0

    @property
    def stream_shape(self) -> tuple[int, float]:
        return self.stream_chunks, self.stream_delay_ms


QUICK = Sizes(rounds=2, lat_n=300, tput_n=1500, stream_n=160, hold_chunks=6, hold_delay_ms=500, warmup_s=1)


# ---------------------------------------------------------------------------------------------- processes
def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_tree(pid: int) -> list[int]:
    """`pid` and every descendant, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def status_mb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def core_speed_us(cpu: str | None) -> float:
    """Microseconds a fixed pure-Python loop takes on `cpu` (best of 5): how fast and how shared it is now."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in cpu.split(",")})
    try:
        return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6
    finally:
        os.sched_setaffinity(0, before)


def machine_busy_s() -> float:
    """CPU seconds spent busy on the whole machine since boot (every core)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK  # minus idle and iowait


class Server:
    """A process this script started (pinned to `cpu`); measured and stopped by its own pid."""

    def __init__(self, name: str, cmd: list[str], cpu: str | None, env: dict[str, str], workdir: Path):
        self.name = name
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                pinned(cpu, cmd), env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip

    def cpu_s(self) -> float:
        return sum(cpu_seconds(p) for p in proc_tree(self.proc.pid))

    def memory_mb(self, key: str) -> float:
        """VmRSS or VmHWM summed over the process tree."""
        return round(sum(status_mb(p, key) for p in proc_tree(self.proc.pid)), 1)

    async def wait_ready(self, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def logging_off_supported() -> bool:
    """Whether this gateway's config has `logging.enabled` (the way to turn the recorder off)."""
    sys.path.insert(0, str(ROOT))
    from gateway.config import LoggingSettings

    return "enabled" in {f.name for f in dataclasses.fields(LoggingSettings)}


def write_config(path: Path, upstream_port: int, logging: str, spool: Path) -> None:
    section: dict[str, Any] = (
        {"enabled": False} if logging == "off" else {"capture": logging, "spool_dir": str(spool)}
    )
    config = {
        "default_provider": None,
        "providers": {
            "bench": {
                "endpoint": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                "api_key_env": "BENCH_UPSTREAM_API_KEY",
                "models": [MODEL],
            }
        },
        "logging": section,
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML too; chosen by the .json extension


def child_env(proxy_key: str, spool: Path) -> dict[str, str]:
    """This environment without anything that would send logs or calls off the machine."""
    dropped = ("LOG_BUCKET", "AWS_", "PROXY_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        PROXY_KEY=proxy_key, BENCH_UPSTREAM_API_KEY="sk-bench-upstream", LOG_SPOOL_DIR=str(spool),
        NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return env


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Sample:
    ok: bool
    total: float = 0.0
    ttfb: float | None = None
    error: str | None = None


@dataclass
class Run:
    samples: list[Sample]
    wall: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    def pct(self, q: float, ttfb: bool = False) -> float:
        values = sorted((s.ttfb if ttfb else s.total) or 0.0 for s in self.ok)
        return percentile(values, q) * 1000

    @property
    def rps(self) -> float:
        return len(self.ok) / self.wall if self.wall else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (as the shared harness computes it)."""
    if not values:
        return math.nan
    return values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    session: aiohttp.ClientSession
    headers: dict[str, str]
    server: Server | None = None


def request_body(stream: bool, chunks: int = 0, delay_ms: float = 0.0) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    body["max_tokens"] = 32
    if stream:  # asking for usage ourselves means the gateway forwards our bytes unchanged
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        body |= {"mock_chunks": chunks, "mock_chunk_delay_ms": delay_ms}
    return orjson.dumps(body)


async def one_call(target: Target, body: bytes, stream: bool, last_token: bytes) -> Sample:
    start = time.perf_counter()
    ttfb = None
    try:
        async with target.session.post(target.url, data=body, headers=target.headers) as response:
            if not stream:
                data = await response.read()
            else:
                parts = []
                async for chunk in response.content.iter_any():
                    ttfb = ttfb or time.perf_counter() - start
                    parts.append(chunk)
                data = b"".join(parts)
            total = time.perf_counter() - start
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(False, error=type(exc).__name__)
    if status != 200:
        return Sample(False, error=f"HTTP {status}")
    if last_token not in data or (stream and not data.endswith(b"data: [DONE]\n\n")):
        return Sample(False, error="incomplete answer")
    return Sample(True, total, ttfb)


async def closed_loop(
    target: Target, n: int, concurrency: int, max_s: float, stream: tuple[int, float] | None = None
) -> Run:
    """`n` calls from `concurrency` workers, each starting its next call when the last one ends.

    `stream` asks for (chunks, delay ms) streams; every answer is checked down to its last token.
    """
    body = request_body(stream is not None, *(stream or (0, 0.0)))
    last = f"tok{stream[0] - 1} ".encode() if stream else b"bench upstream"
    samples: list[Sample] = []
    todo = iter(range(n))
    deadline = time.monotonic() + max_s

    async def worker() -> None:
        for _ in todo:
            if time.monotonic() > deadline:
                return
            samples.append(await one_call(target, body, stream is not None, last))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(samples, time.perf_counter() - start)


async def warm_up(target: Target, sizes: Sizes) -> None:
    await closed_loop(target, 1_000_000, sizes.tput_c, sizes.warmup_s)
    await closed_loop(target, 1_000_000, sizes.stream_c, sizes.warmup_s / 2, sizes.stream_shape)


# ---------------------------------------------------------------------------------------------- phases
Measure = Callable[[Target], Awaitable[dict[str, float]]]


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


async def alternate(targets: list[Target], rounds: int, measure: Measure) -> dict[str, dict[str, float]]:
    """Run `measure` on every target for `rounds` rounds, order flipped each round; medians per metric.

    Per-round differences to the first target (direct) are kept as `added_<metric>` and `ratio_<metric>`,
    so each added value is the median of paired differences, not a difference of medians.
    """
    per: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
    for r in range(rounds):
        results = {}
        for target in targets if r % 2 == 0 else targets[::-1]:
            results[target.name] = await measure(target)
        base = results[targets[0].name]
        for name, values in results.items():
            for key, value in values.items():
                per[name].setdefault(key, []).append(value)
                if name != targets[0].name and key in base:
                    per[name].setdefault("added_" + key, []).append(value - base[key])
                    per[name].setdefault("ratio_" + key, []).append(value / base[key] if base[key] else 0)
    return {name: {k: median(v) for k, v in metrics.items()} for name, metrics in per.items()}


def latency(sizes: Sizes) -> Measure:
    async def measure(target: Target) -> dict[str, float]:
        c1 = await closed_loop(target, sizes.lat_n, 1, sizes.phase_max_s)
        cpu0, busy0, ours0 = _cpu(target), machine_busy_s(), _our_cpu(target)
        tput = await closed_loop(target, sizes.tput_n, sizes.tput_c, sizes.phase_max_s)
        cpu1, busy1, ours1 = _cpu(target), machine_busy_s(), _our_cpu(target)
        out = {"p50_c1": c1.pct(50), "p99_c1": c1.pct(99), "p50_c32": tput.pct(50), "p99_c32": tput.pct(99)}
        out |= {"rps": tput.rps, "errors": c1.errors + tput.errors}
        out["other_load"] = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / tput.wall  # cores busy with others
        if target.server:
            out["cpu_ms"] = (cpu1 - cpu0) * 1000 / max(1, len(tput.samples))
        return out

    return measure


def streaming(sizes: Sizes) -> Measure:
    async def measure(target: Target) -> dict[str, float]:
        run = await closed_loop(target, sizes.stream_n, sizes.stream_c, sizes.phase_max_s, sizes.stream_shape)
        return {
            "ttfb_p50": run.pct(50, ttfb=True), "ttfb_p99": run.pct(99, ttfb=True),
            "stream_p50": run.pct(50), "stream_errors": run.errors,
        }  # fmt: skip

    return measure


UPSTREAM: list[Server] = []  # the one upstream process, for the machine-load estimate


def _cpu(target: Target) -> float:
    return target.server.cpu_s() if target.server else 0.0


def _our_cpu(target: Target) -> float:
    servers = [s for s in (target.server, *UPSTREAM) if s]
    return cpu_seconds(os.getpid()) + sum(s.cpu_s() for s in servers)


async def hold_streams(target: Target, n: int, chunks: int, delay_ms: float) -> dict[str, float]:
    """Open `n` slow streams at once; count how many were open together and whether each one completed."""
    body = request_body(True, chunks, delay_ms)
    expected_events = chunks + 4  # role, tokens, finish, usage, [DONE]
    state = {"open": 0, "peak": 0, "all_open_at": math.nan}
    gaps: list[float] = []
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:

        async def one() -> bool:
            parts, last, gap, opened = [], 0.0, 0.0, False
            try:
                async with session.post(target.url, data=body, headers=target.headers) as response:
                    async for data in response.content.iter_any():
                        now = time.perf_counter()
                        if not opened:
                            opened = True
                            state["open"] += 1
                            state["peak"] = max(state["peak"], state["open"])
                            if state["peak"] == n:
                                state["all_open_at"] = now - start
                        else:
                            gap = max(gap, now - last)
                        last = now
                        parts.append(data)
            except (aiohttp.ClientError, TimeoutError):
                return False
            finally:
                state["open"] -= opened
            gaps.append(gap)
            stream = b"".join(parts)
            return stream.count(b"data: ") == expected_events and stream.endswith(b"data: [DONE]\n\n")

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        max_s = 30 + chunks * delay_ms / 1000 * 3
        done, pending = await asyncio.wait(tasks, timeout=max_s)
        for task in pending:
            task.cancel()
        complete = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
    return {
        "streams": n, "peak_open": state["peak"], "complete": complete, "stalled": n - complete,
        "all_open_after_s": state["all_open_at"], "max_gap_s": max(gaps, default=math.nan),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    workdir: Path
    upstream_port: int = 0
    proxy_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    servers: list[Server] = field(default_factory=list)

    def start_upstream(self) -> Server:
        self.upstream_port = free_port()
        cmd = [sys.executable, str(ROOT / "scripts/bench_upstream.py"), "--port", str(self.upstream_port)]
        server = Server("upstream", cmd, self.args.harness_cpu, child_env("", self.workdir), self.workdir)
        self.servers.append(server)
        UPSTREAM.append(server)
        return server

    async def start_gateway(self, logging: str) -> tuple[Server, int]:
        port, spool = free_port(), self.workdir / f"spool-{logging}"
        spool.mkdir(exist_ok=True)
        config = self.workdir / f"gateway-{logging}.json"
        write_config(config, self.upstream_port, logging, spool)
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = child_env(self.proxy_key, spool)
        server = Server(f"gateway-{logging}", cmd, self.args.gateway_cpu, env, self.workdir)
        self.servers.append(server)
        await server.wait_ready(f"http://127.0.0.1:{port}/readyz")
        return server, port

    def target(self, name: str, port: int, server: Server | None = None, limit: int = 64) -> Target:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=REQUEST_TIMEOUT,
            skip_auto_headers=["User-Agent"],
        )
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.proxy_key}"}
        return Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", session, headers, server)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = QUICK if args.quick else Sizes()
    bench = Bench(args, sizes, workdir)
    report: dict[str, Any] = {"meta": meta(args, sizes)}
    try:
        upstream = bench.start_upstream()
        await upstream.wait_ready(f"http://127.0.0.1:{bench.upstream_port}/health")
        gateway, port = await bench.start_gateway(args.logging)
        await asyncio.sleep(1.0)
        idle_rss = gateway.memory_mb("VmRSS")
        direct, proxied = bench.target("direct", bench.upstream_port), bench.target("gateway", port, gateway)
        try:
            for target in (direct, proxied):
                await warm_up(target, sizes)
            progress("latency and throughput")
            report["latency"] = await alternate([direct, proxied], sizes.rounds, latency(sizes))
            peak_after_load = gateway.memory_mb("VmHWM")
            progress("streams")
            report["streams"] = await alternate([direct, proxied], sizes.rounds, streaming(sizes))
            progress(f"holding {args.streams} streams")
            report["hold"] = await hold_streams(proxied, args.streams, sizes.hold_chunks, sizes.hold_delay_ms)
        finally:
            await asyncio.gather(direct.session.close(), proxied.session.close())
        report["memory"] = {
            "idle_rss_mb": idle_rss, "peak_rss_after_load_mb": peak_after_load,
            "peak_rss_after_hold_mb": gateway.memory_mb("VmHWM"),
        }  # fmt: skip
        gateway.stop()
        if args.logging_cost:
            progress("logging cost")
            report["logging"] = await logging_cost(bench, sizes)
    finally:
        bench.stop()
    report["meta"] |= {"core_speed_us_after": core_speed_us(args.gateway_cpu), "loadavg_after": loadavg()}
    return report


async def logging_cost(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    """Throughput and unloaded p50 with logging off, summary and full, on fresh gateways, interleaved."""
    modes = ["off", "summary", "full"] if logging_off_supported() else ["summary", "full"]
    targets = []
    for mode in modes:
        server, port = await bench.start_gateway(mode)
        targets.append(bench.target(mode, port, server))
    try:
        for target in targets:
            await warm_up(target, sizes)
        results = await alternate(targets, sizes.rounds, latency(sizes))
    finally:
        await asyncio.gather(*(t.session.close() for t in targets))
        for target in targets:
            assert target.server
            target.server.stop()
    return {"baseline": modes[0], "modes": results}


def meta(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cores": os.cpu_count(), "gateway_cpu": args.gateway_cpu, "harness_cpu": args.harness_cpu,
        "loadavg_before": loadavg(), "logging": args.logging,
        "core_speed_us_before": core_speed_us(args.gateway_cpu),
        "python": platform.python_version(), "aiohttp": aiohttp.__version__, "commit": commit.stdout.strip(),
        "sizes": dataclasses.asdict(sizes), "streams": args.streams,
    }  # fmt: skip


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def progress(message: str) -> None:
    print(f"[bench] {message} ...", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- report
def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def verdict(value: float | None, limit: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "yes" if value < limit else "NO"


def row(
    label: str, direct: str = "", gateway: str = "", added: str = "", ratio: str = "", *goal: str
) -> list[str]:
    """One line of the main table; `goal` is the target and whether it was met, when there is one."""
    return [label, direct, gateway, added, ratio, *(goal or ("", ""))]


def main_rows(report: dict[str, Any]) -> Iterator[list[str]]:
    lat, stm = report["latency"], report["streams"]
    d, g, ds, gs = lat["direct"], lat["gateway"], stm["direct"], stm["gateway"]
    limits = {"p50_c1": TARGETS["added_p50_c1"], "p99_c1": TARGETS["added_p99_c1"]}
    limits["ttfb_p99"] = TARGETS["added_ttfb_p99"]
    for key, label, dd, gg in [
        ("p50_c1", "latency p50, c=1 (ms)", d, g), ("p99_c1", "latency p99, c=1 (ms)", d, g),
        ("p50_c32", "latency p50, c=32 (ms)", d, g), ("p99_c32", "latency p99, c=32 (ms)", d, g),
        ("ttfb_p50", "first chunk p50, c=16 (ms)", ds, gs),
        ("ttfb_p99", "first chunk p99, c=16 (ms)", ds, gs),
        ("stream_p50", "whole stream p50, c=16 (ms)", ds, gs),
    ]:  # fmt: skip
        added, limit = gg["added_" + key], limits.get(key)
        goal = (f"+ < {limit:g}", verdict(added, limit)) if limit else ()
        yield row(
            label, fmt(dd[key]), fmt(gg[key]), fmt(added, sign=True), fmt(gg["ratio_" + key], 1) + "x", *goal
        )
    yield row(
        "throughput, c=32 (req/s)", fmt(d["rps"], 0), fmt(g["rps"], 0), "", fmt(g["ratio_rps"], 2) + "x"
    )
    cpu, limit = g["cpu_ms"], TARGETS["cpu_ms"]
    yield row("gateway CPU per request (ms)", "", fmt(cpu, 3), "", "", f"< {limit:g}", verdict(cpu, limit))
    mem, hold = report["memory"], report["hold"]
    idle, limit = mem["idle_rss_mb"], TARGETS["idle_rss_mb"]
    yield row("idle RSS (MB)", "", fmt(idle, 1), "", "", f"< {limit:g}", verdict(idle, limit))
    yield row("peak RSS after load (MB)", "", fmt(mem["peak_rss_after_load_mb"], 1))
    yield row("peak RSS after hold (MB)", "", fmt(mem["peak_rss_after_hold_mb"], 1))
    held, ok = f"{hold['peak_open']}/{hold['streams']}", hold["peak_open"] >= TARGETS["streams"]
    yield row("streams open at once", "", held, "", "", f">= {TARGETS['streams']:g}", "yes" if ok else "NO")
    stalled = hold["stalled"]
    yield row("streams stalled or incomplete", "", str(stalled), "", "", "0", "NO" if stalled else "yes")


def logging_rows(logging: dict[str, Any]) -> Iterator[list[str]]:
    base = logging["baseline"]
    for mode, values in logging["modes"].items():
        cells = [mode, fmt(values["rps"], 0), fmt(values["p50_c1"], 3), fmt(values["cpu_ms"], 3)]
        if mode == base:
            yield [*cells, "", "", ""]
            continue
        cost, added = 1 - values["ratio_rps"], values["added_p50_c1"]
        ok = cost <= TARGETS["logging_rps_cost"] and added < TARGETS["logging_added_p50"]
        met = ("yes" if ok else "NO") if mode == "full" else ""
        yield [*cells, fmt(100 * cost, 1) + " %", fmt(added, 3, sign=True), met]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) if not i else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in lines
    )


def render(report: dict[str, Any]) -> str:
    m = report["meta"]
    lat = report["latency"]
    errors = (
        lat["direct"]["errors"] + lat["gateway"]["errors"] + report["streams"]["gateway"]["stream_errors"]
    )
    hold = report["hold"]
    out = [
        f"open-llm-proxy bench ({m['commit']}): {m['cores']} cores, gateway on CPU {m['gateway_cpu']}, "
        f"upstream + load on CPU {m['harness_cpu']}; logging={m['logging']}; "
        f"medians of {m['sizes']['rounds']} rounds",
        f"load average before/after: {' '.join(m['loadavg_before'])} / {' '.join(m['loadavg_after'])}; "
        f"other work during c=32 phases: {fmt(lat['gateway']['other_load'], 2)} cores; errors: {int(errors)}",
        f"core check, sum(range(1000)) on the gateway core before/after: {m['core_speed_us_before']:.1f} / "
        f"{m['core_speed_us_after']:.1f} us (lower is faster; compare runs only at similar values)",
        "",
        table(["measure", "direct", "gateway", "added", "ratio", "target", "met"], list(main_rows(report))),
        f"hold: {hold['streams']} streams x {m['sizes']['hold_chunks']} chunks "
        f"{m['sizes']['hold_delay_ms']:g} ms apart; all open after {fmt(hold['all_open_after_s'], 2)} s; "
        f"longest gap between chunks {fmt(hold['max_gap_s'], 2)} s; {fmt(hold['seconds'], 1)} s in all",
    ]
    if logging := report.get("logging"):
        cost, p50 = TARGETS["logging_rps_cost"], TARGETS["logging_added_p50"]
        goal = f"full <= {cost:.0%} throughput, < +{p50:g} ms p50"
        out += ["", f"logging cost vs {logging['baseline']} (targets: {goal})"]
        header = ["logging", "req/s c=32", "p50 c=1 ms", "CPU ms/req", "req/s cost", "added p50", "met"]
        out.append(table(header, list(logging_rows(logging))))
    return "\n".join(out)


def run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def no_nan(value: Any) -> Any:
    """The report with NaN (no data) as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--logging", choices=["off", "summary", "full"], default="summary")
    parser.add_argument("--streams", type=int, default=2000, help="streams held open at once (default 2000)")
    parser.add_argument("--no-logging-cost", dest="logging_cost", action="store_false")
    parser.add_argument("--gateway-cpu", default="1", help="taskset CPU list for the gateway ('' for none)")
    parser.add_argument(
        "--harness-cpu", default="0", help="CPU list for the upstream and the load ('' for none)"
    )
    args = parser.parse_args()
    if args.logging == "off" and not logging_off_supported():
        parser.error("this gateway has no logging.enabled setting, so logging cannot be turned off")
    pinning = shutil.which("taskset") and (os.cpu_count() or 1) >= 2
    args.gateway_cpu = args.gateway_cpu if pinning and args.gateway_cpu else None
    args.harness_cpu = args.harness_cpu if pinning and args.harness_cpu else None
    if args.harness_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.harness_cpu.split(",")})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it: 2 sockets per stream
    with tempfile.TemporaryDirectory(prefix="olp-bench-") as tmp:
        report = run_loop(run(args, Path(tmp)))
    print(json.dumps(no_nan(report), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
