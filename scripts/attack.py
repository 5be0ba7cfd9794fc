"""Attack the gateway the way hostile clients and upstreams do, and print what it costs against the targets.

Starts `scripts/attack_upstream.py` and `python -m gateway serve --workers 1` on free loopback ports (the
gateway pinned to its own core when taskset and 2 cores exist, as `scripts/bench.py` does), then:

  uploads   keyless calls with 8 MiB chunked bodies, 20 at a time, each sending until the gateway answers
            or hangs up: gateway RSS growth and peak, /metrics size, spool bytes per refused call
  models    200 made-up model names, each from a keyless and a keyed caller, then one real call:
            /metrics size, and whether the real model still has its own label
  baseline  ordinary calls (non-streaming, 2 clients) and /livez probes every 100 ms (each on a new
            connection, as a kubelet's), nothing hostile
  hostile   the same while hostile upstream streams run: gzip (1 MB on the wire, no blank line), plain
            (the same bytes uncompressed), endless (chunks every 10 ms), drip (1 byte per 0.5 s):
            ordinary p99, whether /livez answered every probe, gateway peak RSS during and RSS after
  silent    the same while one client (from 127.0.0.2) holds twice the gateway's connection limit
            (server.max_connections, 2000 here) in connections that send nothing, each opened again a
            second after the gateway closed it (--silent-reopen-s 0: at once, a connection flood)

Every phase is bounded in calls and seconds. Usage: python scripts/attack.py [--json] [--uploads N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import attack_load as load
from attack_report import render
from bench import ROOT, Server, child_env, free_port, loadavg, no_nan, percentile, run_loop

SCENARIOS = ("gzip", "plain", "endless", "drip", "silent")
SILENT_SOURCE = "127.0.0.2"
SETTLE_S = 2.0  # after a phase, before RSS is read again
RECOVERY_MAX_S = 30.0  # how long a scenario's end waits for /livez to answer promptly again


def gateway_config(upstream_port: int, spool: Path, max_connections: int) -> dict[str, Any]:
    """Small upstream limits, so that every hostile stream is over within seconds on a fixed gateway; the
    client connections' limit given (0: the gateway's own default, and no setting written)."""
    config = {
        "default_provider": None,
        "providers": {
            "attack": {
                "endpoint": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                "api_key_env": "BENCH_UPSTREAM_API_KEY",
                "models": ["mock-gpt"],
                "model_prefixes": ["hostile/"],
            }
        },
        "upstream": {
            "call_deadline_s": 10,
            "max_event_bytes": 1048576,
            "idle_timeout_s": 5,
            "first_byte_timeout_s": 10,
            "retries": 0,
        },
        "logging": {"capture": "summary", "spool_dir": str(spool), "stdout": False},
    }
    if max_connections:
        config["server"] = {"max_connections": max_connections}
    return config


def spool_bytes(spool: Path) -> int:
    """Bytes of every file under the spool folder, open chunks included."""
    return sum(p.stat().st_size for p in spool.rglob("*") if p.is_file())


class Attack:
    """The processes and clients of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.key = "sk-attack-" + secrets.token_hex(8)
        self.spool = workdir / "spool"
        self.spool.mkdir()
        self.upstream_port, self.port = free_port(), 0
        self.config = gateway_config(self.upstream_port, self.spool, args.max_connections)
        self.servers: list[Server] = []
        self.url = ""

    async def start_upstream(self) -> None:
        """The hostile upstream, once it answers (it builds its gzip stream first)."""
        cmd = [sys.executable, str(ROOT / "scripts/attack_upstream.py"), "--port", str(self.upstream_port)]
        cmd += ["--max-s", str(max(60.0, 4 * self.args.scenario_s))]
        upstream = Server("upstream", cmd, self.args.harness_cpu, child_env("", self.spool), self.workdir)
        self.servers.append(upstream)
        await upstream.wait_ready(f"http://127.0.0.1:{self.upstream_port}/health", timeout_s=60)

    async def start_gateway(self) -> Server:
        """A gateway on a port of its choosing, once it answers /readyz."""
        config_path = self.workdir / "gateway.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--workers", "1"]
        if files := self.args.gateway_files:  # its open-files limit, soft and hard
            cmd = ["prlimit", f"--nofile={files}:{files}", *cmd]
        env = child_env(self.key, self.spool)
        gateway = Server(f"gateway-{len(self.servers)}", cmd, self.args.gateway_cpu, env, self.workdir)
        self.servers.append(gateway)
        self.port = await gateway.port()
        self.url = f"http://127.0.0.1:{self.port}"
        await gateway.wait_ready(self.url + "/readyz")
        return gateway

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    async def metrics(self, session: aiohttp.ClientSession) -> bytes:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with session.get(self.url + "/metrics", headers=headers) as response:
            return await response.read()


async def upload_phase(attack: Attack, gateway: Server, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Keyless uploads: what they cost the gateway in memory, in /metrics and in the spool."""
    args = attack.args
    await asyncio.sleep(SETTLE_S)
    rss_before, spool_before = gateway.memory_mb("VmRSS"), spool_bytes(attack.spool)
    size = args.upload_mib << 20
    outcomes = await load.uploads(attack.port, args.uploads, args.concurrency, size, args.phase_max_s)
    await asyncio.sleep(SETTLE_S)
    rss_after = gateway.memory_mb("VmRSS")
    refused = max(1, sum(n for outcome, n in outcomes.items() if outcome.startswith("HTTP 4")))
    return {
        "calls": args.uploads, "body_mib": args.upload_mib, "concurrency": args.concurrency,
        "outcomes": outcomes, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
        "rss_growth_mb": round(rss_after - rss_before, 1), "peak_rss_mb": gateway.memory_mb("VmHWM"),
        "metrics_kb": round(len(await attack.metrics(session)) / 1024, 1),
        "spool_bytes_per_call": round((spool_bytes(attack.spool) - spool_before) / refused),
    }  # fmt: skip


async def model_phase(attack: Attack, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Made-up model names, then one real call: the size of /metrics and the real model's label."""
    url = attack.url + "/v1/chat/completions"
    statuses = await load.made_up_models(session, url, attack.key, attack.args.models)
    headers = {"Authorization": f"Bearer {attack.key}"}
    async with session.post(url, json={"model": "mock-gpt", **load.ASK}, headers=headers) as response:
        real_status = response.status
        await response.read()
    metrics = await attack.metrics(session)
    labels = set(re.findall(rb'model="([^"]*)"', metrics))
    return {
        "names": attack.args.models, "statuses": statuses, "real_call_status": real_status,
        "metrics_kb": round(len(metrics) / 1024, 1), "model_labels": len(labels),
        "real_model_labelled": b"mock-gpt" in labels,
    }  # fmt: skip


async def scenario(attack: Attack, gateway: Server, name: str | None) -> dict[str, Any]:
    """Ordinary calls and /livez probes for one scenario's length, beside hostile streams (none for None)."""
    args, seconds = attack.args, attack.args.scenario_s
    until = time.monotonic() + seconds
    window = load.Window()
    timeout = aiohttp.ClientTimeout(total=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as ordinary,
        # A kubelet opens a new connection for every probe: so do these.
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as probes,
        aiohttp.ClientSession(timeout=timeout) as hostile,
    ):
        url = attack.url + "/v1/chat/completions"
        if name == "silent":
            # From another loopback address: another client than the ordinary ones, as in a cluster.
            flood = load.silent_connections(
                attack.port, args.silent_connections, until, SILENT_SOURCE, args.silent_reopen_s
            )
            streams = [asyncio.create_task(flood)]
        else:
            streams = [
                asyncio.create_task(load.hostile_call(hostile, url, attack.key, f"hostile/{name}", seconds))
                for _ in range(args.hostile_calls if name else 0)
            ]

        def guard() -> None:
            for task in streams:
                task.cancel()

        watch = asyncio.create_task(
            load.watch_rss(lambda: gateway.memory_mb("VmRSS"), until, args.guard_mb, guard)
        )
        await asyncio.gather(
            *(load.ordinary_calls(ordinary, url, attack.key, until, window) for _ in range(2)),
            load.livez_probes(probes, attack.url + "/livez", until, window),
        )
        ended = await asyncio.gather(*streams, return_exceptions=True)
        peak, tripped = await watch
    # A gateway still busy with the last scenario would make the next one look worse than it is.
    recovered = await load.seconds_until_live(attack.url + "/livez", RECOVERY_MAX_S)
    await asyncio.sleep(SETTLE_S)
    return {
        "scenario": name or "baseline", "calls": len(window.latencies), "errors": window.errors,
        "p99_ms": round(percentile(sorted(window.latencies), 99) * 1000, 1),
        "probes": window.probes, "probes_answered": window.probes_answered,
        "worst_probe_ms": round(window.worst_probe_s * 1000, 1), "peak_rss_mb": peak,
        "rss_after_mb": gateway.memory_mb("VmRSS"), "guard_tripped": tripped, "recovered_s": recovered,
        "hostile": [e if isinstance(e, dict) else {"outcome": "cancelled by the RSS guard"} for e in ended],
    }  # fmt: skip


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    attack = Attack(args, workdir)
    report: dict[str, Any] = {"meta": meta(args), "config": attack.config}
    try:
        await attack.start_upstream()
        gateway = await attack.start_gateway()
        report["idle_rss_mb"] = gateway.memory_mb("VmRSS")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            progress(f"{args.uploads} keyless {args.upload_mib} MiB uploads")
            report["uploads"] = await upload_phase(attack, gateway, session)
            progress(f"{args.models} made-up model names")
            report["models"] = await model_phase(attack, session)
        report["scenarios"] = []
        for name in (None, *args.scenarios):
            progress(f"scenario {name or 'baseline'} for {args.scenario_s:g} s")
            report["scenarios"].append(await scenario(attack, gateway, name))
            if gateway.proc.poll() is not None:
                report["gateway_died"] = gateway.tail()
                break
            if report["scenarios"][-1]["recovered_s"] is None:
                # Still stuck on the last scenario: the next one needs a gateway of its own to mean anything.
                progress("the gateway did not recover; killing it and starting a fresh one")
                gateway.proc.kill()
                gateway.proc.wait(10)
                gateway = await attack.start_gateway()
    finally:
        attack.stop()
    report["meta"]["loadavg_after"] = loadavg()
    return report


def meta(args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return {
        "commit": commit.stdout.strip() or "unknown", "uncommitted_changes": bool(dirty.stdout.strip()),
        "cores": os.cpu_count(), "gateway_cpu": args.gateway_cpu, "harness_cpu": args.harness_cpu,
        "loadavg_before": loadavg(), "hostile_calls": args.hostile_calls, "scenario_s": args.scenario_s,
    }  # fmt: skip


def progress(message: str) -> None:
    print(f"[attack] {message} ...", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--uploads", type=int, default=1000, help="keyless uploads (default 1000)")
    parser.add_argument("--upload-mib", type=int, default=8, help="body size of each upload (default 8)")
    parser.add_argument("--concurrency", type=int, default=20, help="uploads at a time (default 20)")
    parser.add_argument("--models", type=int, default=200, help="made-up model names (default 200)")
    parser.add_argument("--scenario-s", type=float, default=15.0, help="length of each scenario (default 15)")
    parser.add_argument("--scenarios", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--hostile-calls", type=int, default=2, help="hostile streams per scenario (default 2)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=2000,
        help="the gateway's server.max_connections (default 2000; 0: its own, from the open-files limit)",
    )
    parser.add_argument(
        "--gateway-files", type=int, help="the gateway's open-files limit (default: this process's)"
    )
    parser.add_argument(
        "--silent-connections",
        type=int,
        help="silent scenario: connections held (default: twice --max-connections)",
    )
    parser.add_argument(
        "--silent-reopen-s",
        type=float,
        default=1.0,
        help="silent scenario: seconds before a closed connection is opened again (0: a connection flood)",
    )
    parser.add_argument("--phase-max-s", type=float, default=300.0, help="time limit of the upload phase")
    parser.add_argument("--guard-mb", type=float, default=4096.0, help="cut hostile streams past this RSS")
    parser.add_argument("--gateway-cpu", default="1", help="taskset CPU list for the gateway ('' for none)")
    parser.add_argument("--harness-cpu", default="0", help="CPU list for the upstream and the clients")
    args = parser.parse_args()
    if args.silent_connections is None:
        if not args.max_connections:
            parser.error("--max-connections 0 needs --silent-connections")
        args.silent_connections = 2 * args.max_connections
    pinning = shutil.which("taskset") and (os.cpu_count() or 1) >= 2
    args.gateway_cpu = args.gateway_cpu if pinning and args.gateway_cpu else None
    args.harness_cpu = args.harness_cpu if pinning and args.harness_cpu else None
    if args.harness_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.harness_cpu.split(",")})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="olp-attack-") as tmp:
        report = run_loop(run(args, Path(tmp)))
    print(json.dumps(no_nan(report), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
