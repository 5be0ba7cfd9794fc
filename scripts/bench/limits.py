"""The cost of enforcing limits (`--limits-cost`): fresh gateways with no limits, with the in-process store
and with Redis on loopback, measured in the same alternating rounds.

The goals are the issue's: CPU per request at most 5 % more with the in-process store, and p50 at most
0.3 ms more with Redis. Every gateway logs nothing, so the limits are weighed against the leanest gateway.
The limits are the issue's example default (requests and tokens per minute, calls in flight), set so high
that nothing is refused: every call is admitted, charged and settled. Redis runs on the harness core with
`appendonly yes` and `appendfsync everysec`, as the deploy component runs Valkey.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from typing import Any

from bench.load import Target
from bench.phases import Latency, Rounds, Sizes, alternate, summarize, warm_up
from bench.processes import Server, child_env, free_port
from bench.report import fmt, table
from bench.targets import Stack, write_config

LIMITS = {"default": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "concurrent": 10**6}}
GOALS = {"memory": ("CPU ms/req", 0.05), "redis": ("p50 c=1", 0.3)}  # +5 %, +0.3 ms
GENERATIONS = 3  # fresh gateways, each measured in a third of the rounds


async def start_redis(stack: Stack) -> tuple[Server, int]:
    """redis-server (or valkey-server) on loopback, on the harness core, its files in the run's folder."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise RuntimeError("--limits-cost redis needs redis-server (apt-get install redis-server)")
    port, folder = free_port(), stack.workdir / "redis"
    folder.mkdir(exist_ok=True)
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", ""]
    cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
    server = Server("redis", cmd, stack.harness_cpu, child_env("", stack.workdir), stack.workdir)
    stack.servers.append(server)
    for _ in range(200):
        if await asyncio.to_thread(_pong, port):
            return server, port
        await asyncio.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer:\n{server.tail()}")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def start_gateway(stack: Stack, name: str, limits: dict[str, Any] | None) -> tuple[Server, int]:
    """A gateway with logging off and `limits`, on the gateway core."""
    path = stack.workdir / f"gateway-limits-{name}.json"
    write_config(path, stack.upstream_port, "off", stack.workdir, limits)
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    server = Server(
        f"gateway-{name}", cmd, stack.gateway_cpu, child_env(stack.proxy_key, stack.workdir), stack.workdir
    )
    stack.servers.append(server)
    port = await server.port()
    await server.wait_ready(f"http://127.0.0.1:{port}/readyz")
    return server, port


async def limits_cost(stack: Stack, sizes: Sizes, stores: list[str]) -> dict[str, Any]:
    """Latency, throughput and CPU per call with no limits and with each store in `stores`, interleaved.

    Three times the other phases' rounds, the difference measured being a few percent, in GENERATIONS of
    fresh gateways: the CPU a call costs one process and another of the same code differs by about as much
    (the limits' figure read 3.9 to 9.6 % in five runs of one gateway each), so every figure is a median over
    several processes' rounds, not one process's.
    """
    configs: dict[str, dict[str, Any] | None] = {"none": None}
    if "memory" in stores:
        configs["memory"] = LIMITS
    if "redis" in stores:
        _, redis_port = await start_redis(stack)
        configs["redis"] = {**LIMITS, "store": "redis", "redis_url": f"redis://127.0.0.1:{redis_port}/0"}
    per: Rounds = {name: {} for name in configs}
    for _ in range(GENERATIONS):
        rounds = await _generation(stack, sizes, configs, 3 * sizes.rounds // GENERATIONS or 1)
        for name, metrics in rounds.items():
            for key, values in metrics.items():
                per[name].setdefault(key, []).extend(values)
    return {"baseline": "none", "stores": summarize(per, {"none": ""}), "generations": GENERATIONS}


async def _generation(
    stack: Stack, sizes: Sizes, configs: dict[str, dict[str, Any] | None], rounds: int
) -> Rounds:
    """`rounds` alternating rounds over a fresh gateway for each config, stopped after."""
    targets: list[Target] = []
    try:
        for name, limits in configs.items():
            server, port = await start_gateway(stack, name, limits)
            targets.append(stack.target(name, port, server))
        for target in targets:
            await warm_up(target, sizes)
        return await alternate(targets, rounds, Latency(sizes, stack))
    finally:
        await asyncio.gather(*(t.session.close() for t in targets))
        for target in targets:
            if target.server:
                target.server.stop()


def render_limits(report: dict[str, Any]) -> str:
    """The limits table, when the run measured it."""
    if not (cost := report.get("limits")):
        return ""
    rows = [_row(name, values) for name, values in cost["stores"].items()]
    cols = ["limits", "req/s c=32", "p50 c=1 ms", "CPU ms/req", "CPU added", "p50 added ms", "goal met"]
    generations = cost.get("generations", 1)
    head = (
        f"limits cost vs none, over {generations} sets of fresh gateways "
        "(goals: in-process store CPU/req +5 % at most, Redis p50 +0.3 ms at most)"
    )
    return "\n\n" + head + "\n" + table(cols, rows)


def _row(name: str, values: dict[str, float]) -> list[str]:
    cells = [name, fmt(values["rps"], 0), fmt(values["p50_c1"], 3), fmt(values["cpu_ms"], 3)]
    if name == "none":
        return [*cells, "", "", ""]
    cpu, p50 = values["ratio_cpu_ms"] - 1, values["added_p50_c1"]
    met = ""
    if name in GOALS:
        what, limit = GOALS[name]
        met = f"{what}: {'yes' if (cpu if name == 'memory' else p50) <= limit else 'NO'}"
    return [*cells, fmt(100 * cpu, 1) + " %", fmt(p50, 3, sign=True), met]


def stores_of(option: str) -> list[str]:
    """The stores `--limits-cost` names."""
    return ["memory", "redis"] if option == "both" else [option]
