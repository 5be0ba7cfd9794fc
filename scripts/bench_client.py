"""CPU per upstream round trip: aiohttp's `ClientSession` against the gateway's own client (`gateway.http1`).

The gateway's upstream leg is one POST and one whole answer per non-streamed call. This measures what that
costs the calling process alone, with the upstream (`scripts/bench_upstream.py`) in another process: each
client in turn sends the same bounded number of calls at the same concurrency, in alternating rounds, and
the process's CPU time (user + system) over a round is divided by its calls. The medians are printed, and
their ratio.

Run: `python scripts/bench_client.py` (loopback only). On a machine with 2 or more cores, pin it and the
upstream apart, e.g. `taskset -c 1 python scripts/bench_client.py --upstream-cpu 0`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from gateway.http1 import Pool

BODY = b'{"model":"mock-gpt","messages":[{"role":"user","content":"Say hello."}]}'
HEADERS = {
    "Authorization": "Bearer sk-bench",
    "Content-Type": "application/json",
    "Accept-Encoding": "identity",
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def per_call(send: Callable[[], Awaitable[bytes]], calls: int, concurrency: int) -> float:
    """Microseconds of this process's CPU per call, over `calls` calls at `concurrency`."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if not await send():
                raise RuntimeError("an empty answer")

    start = cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (cpu_seconds() - start) / calls * 1e6


async def measure(url: str, calls: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    # The session as the gateway had it: no cookie jar, no total timeout, redirects not followed.
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
    )
    pool = Pool()

    async def via_aiohttp() -> bytes:
        async with session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as response:
            return await response.read()

    async def via_http1() -> bytes:
        response = await pool.request("POST", url, HEADERS, BODY)
        try:
            parts = []
            while chunk := await response.readany():
                parts.append(chunk)
            return b"".join(parts)
        finally:
            response.release()

    clients = {"aiohttp ClientSession": via_aiohttp, "gateway.http1 Pool": via_http1}
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for send in clients.values():  # warm-up: connections opened, code paths hot
            await per_call(send, min(calls, 2000), concurrency)
        for i in range(rounds):
            order = list(clients.items()) if i % 2 == 0 else list(reversed(clients.items()))
            for name, send in order:
                results[name].append(await per_call(send, calls, concurrency))
    finally:
        await session.close()
        await pool.close()
    return results


def start_upstream(cpu: str | None) -> tuple[subprocess.Popen[str], str]:
    script = Path(__file__).with_name("bench_upstream.py")
    command = [sys.executable, str(script), "--port", "0"]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    upstream = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None
    line = upstream.stdout.readline().strip()  # "bench upstream on http://127.0.0.1:PORT"
    return upstream, line.rsplit(" ", 1)[-1] + "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per client per round (5000)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, clients alternating (5)")
    parser.add_argument("--upstream-cpu", help="a core for the upstream, through taskset (default: unpinned)")
    args = parser.parse_args()
    upstream, url = start_upstream(args.upstream_cpu)
    try:
        try:
            import uvloop
        except ImportError:
            results = asyncio.run(measure(url, args.calls, args.concurrency, args.rounds))
        else:
            results = uvloop.run(measure(url, args.calls, args.concurrency, args.rounds))
    finally:
        upstream.terminate()
        upstream.wait(10)
    load = os.getloadavg()[0]
    print(f"{args.rounds} rounds x {args.calls} calls at c={args.concurrency}; load average {load:.2f}")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        spread = ", ".join(f"{v:.1f}" for v in results[name])
        print(f"{name:24s} {value:7.1f} us CPU per call  ({spread})")
    first, second = medians.values()
    print(f"ratio                    {first / second:7.2f}x")


if __name__ == "__main__":
    main()
