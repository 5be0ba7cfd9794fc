"""The command line: start the processes, run the phases, print tables or JSON."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import resource
import runpy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

import bench
from bench.goals import goals, load_peers
from bench.instructions import available, instructions, render_instructions
from bench.limits import limits_cost, render_limits, stores_of
from bench.load import Target
from bench.phases import QUICK, Latency, Sizes, alternate, holds, logging_cost, streaming, summarize, warm_up
from bench.processes import ROOT, core_speed_us, fd_limit, loadavg, raise_fd_limit
from bench.report import render
from bench.targets import Stack
from gateway.server import settle_gc

# Every added figure is against direct; the gateway's are also against the floor, with this prefix.
BASES = {"direct": "", "floor": "floor_"}


async def compare(targets: list[Target], sizes: Sizes, stack: Stack, hold_only: bool) -> dict[str, Any]:
    """Latency, streams and the hold over direct, the floor and the gateway; memory of the last two."""
    out: dict[str, Any] = {}
    servers = {t.name: t.server for t in targets if t.server}
    out["memory"] = {name: {"idle_rss_mb": s.memory_mb("VmRSS")} for name, s in servers.items()}
    if not hold_only:
        for target in targets:
            await warm_up(target, sizes)
        progress("latency and throughput")
        out["latency"] = summarize(await alternate(targets, sizes.rounds, Latency(sizes, stack)), BASES)
        for name, server in servers.items():
            out["memory"][name]["peak_rss_after_load_mb"] = server.memory_mb("VmHWM")
        progress("streams")
        out["streams"] = summarize(await alternate(targets, sizes.rounds, streaming(sizes)), BASES)
    if sizes.hold_streams:
        progress(f"holding {sizes.hold_streams:,} streams on each target")
        out["hold"] = await holds(targets, sizes, stack)
    return out


async def run(args: argparse.Namespace, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Every phase the options ask for, on processes started here and stopped at the end."""
    stack = Stack(workdir, args.gateway_cpu, args.harness_cpu, args.tracemalloc, args.gateway_root.resolve())
    report: dict[str, Any] = {"meta": meta(args, sizes)}
    targets: list[Target] = []
    try:
        upstream = await stack.start_upstream()
        floor, floor_port = await stack.start_floor()
        gateway, port = await stack.start_gateway(args.logging)
        report["meta"] |= {
            "fd_limit_upstream": fd_limit(upstream.proc.pid),
            "fd_limit_gateway": fd_limit(gateway.proc.pid),
        }
        await asyncio.sleep(1.0)
        targets = [stack.target("direct", stack.upstream_port), stack.target("floor", floor_port, floor)]
        targets.append(stack.target("gateway", port, gateway))
        report |= await compare(targets, sizes, stack, args.hold_only)
        if stack.traced:
            report["tracemalloc"] = await traced_report(stack.tracemalloc_out)
        gateway.stop()  # frees the gateway core for the logging phase's gateways
        if args.logging_cost and not args.hold_only:
            progress("logging cost")
            report["logging"] = await logging_cost(stack, targets[1], sizes)
        if args.limits_cost and not args.hold_only:  # the cost of enforcing limits (bench.limits)
            progress("limits cost")
            report["limits"] = await limits_cost(stack, sizes, stores_of(args.limits_cost))
        if args.instructions and not args.hold_only:  # each feature's cost, counted (bench.instructions)
            progress("instructions per call, under callgrind")
            report["instructions"] = await instructions(stack)
    finally:
        await asyncio.gather(*(t.session.close() for t in targets))
        stack.stop()
    report["meta"] |= {"core_speed_us_after": core_speed_us(args.gateway_cpu), "loadavg_after": loadavg()}
    report["peers"] = load_peers(Path(args.peers)) if args.peers else None
    return report


async def traced_report(path: Path, timeout_s: float = 120.0) -> str | None:
    """The traced gateway's memory report, once written (a snapshot of a large heap takes a while)."""
    for _ in range(int(timeout_s * 2)):
        if (text := _written(path)) is not None:
            return text
        await asyncio.sleep(0.5)
    return None


def _written(path: Path) -> str | None:
    return path.read_text() if path.exists() else None  # the profiler renames it into place when whole


def meta(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """The machine, the versions and the options, to read the figures against."""
    return {
        "cores": os.cpu_count(), "gateway_cpu": args.gateway_cpu, "harness_cpu": args.harness_cpu,
        "loadavg_before": loadavg(), "logging": args.logging,
        "core_speed_us_before": core_speed_us(args.gateway_cpu),
        "python": platform.python_version(), "aiohttp": aiohttp.__version__,
        "commit": tree(args.gateway_root), "compiled": compiled(args.gateway_root),
        "sizes": dataclasses.asdict(sizes),
        "fd_limit_load": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }  # fmt: skip


def compiled(root: Path) -> str:
    """How many of the modules the build compiles (gateway/native.py) the tree holds compiled."""
    native = root / "gateway" / "native.py"
    if not native.exists():
        return "plain Python (a tree from before the compiled modules)"
    found = runpy.run_path(str(native))  # its paths are the tree's own
    modules = found["MODULES"]
    built = [m for m in modules if found["built"](m) is not None]
    return f"{len(built)} of {len(modules)} modules compiled" + (" (plain Python)" if not built else "")


def tree(root: Path) -> str:
    """The commit the gateway runs from, marked when its files differ from it; or the tree it runs from."""
    if root.resolve() != ROOT:
        return str(root)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    paths = ("gateway", "providers")
    edited = git("diff", "--quiet", "HEAD", "--", *paths).returncode
    changed = edited or git("ls-files", "--others", "--exclude-standard", "--", *paths).stdout
    return git("rev-parse", "--short", "HEAD").stdout.strip() + (" with local changes" if changed else "")


def progress(message: str) -> None:
    print(f"[bench] {message} ...", file=sys.stderr, flush=True)


def run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run `main` on uvloop when it is installed, with the gateway's collector settings, as it does."""
    settle_gc()  # a full collection here would delay thousands of held streams' chunks at once
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def no_nan(value: Any) -> Any:
    """The report with NaN (no data) as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(bench.__doc__ or "").splitlines()[0], epilog="Every address is loopback."
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls, 2,000 held streams")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write the JSON object to FILE")
    parser.add_argument("--logging", choices=["off", "summary", "full"], default="summary")
    add_hold_options(parser)
    parser.add_argument("--no-logging-cost", dest="logging_cost", action="store_false")
    parser.add_argument(
        "--limits-cost", choices=["memory", "redis", "both"],
        help="also measure limits enforced with the in-process store, Redis on loopback, or both",
    )  # fmt: skip
    parser.add_argument(
        "--instructions", action="store_true",
        help="also count the user-space instructions per call of logging off, summary and full, and of "
        "limits (in-process), each under callgrind (needs valgrind): they repeat within about 0.5 %%",
    )  # fmt: skip
    parser.add_argument(
        "--peers", metavar="RESULTS", help="the shared harness's results.json (or its run folder)"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true",
        help="run the gateway under tracemalloc and print where its memory is at the hold's peak "
        "(its CPU and RSS figures are then the profiler's too)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-root", type=Path, default=ROOT,
        help="run the gateway from this tree (e.g. `git archive <commit> gateway providers` unpacked), "
        "for before/after figures from one session",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int,
        help="rounds of the latency, streams and logging phases (default 3; --quick 2; the limits phase "
        "runs three times as many): more rounds, steadier medians of differences of a few percent",
    )  # fmt: skip
    parser.add_argument("--gateway-cpu", default="1", help="taskset CPU list for the gateway ('' for none)")
    parser.add_argument(
        "--harness-cpu", default="0", help="CPU list for the upstream and the load ('' for none)"
    )
    return parser


def add_hold_options(parser: argparse.ArgumentParser) -> None:
    """The hold's options: its size and shape, and running it alone."""
    parser.add_argument(
        "--streams", type=int, help="streams held at once (default 8,000; --quick 2,000; 0: no hold)"
    )
    parser.add_argument(
        "--open-per-s", type=float, help="how fast the hold sends its streams (default 1,000/s)"
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        help="the hold's time between chunks (default 400; longer for --tracemalloc)",
    )
    parser.add_argument(
        "--history-kb", type=int, help="earlier turns of about this many KB in each held stream's request"
    )
    parser.add_argument(
        "--hold-only", action="store_true", help="only the hold (no latency, streams or logging)"
    )
    parser.add_argument(
        "--hold-rounds", type=int, help="rounds of the hold per target (default 2; --quick 1)"
    )


def main() -> int:
    """Parse the options, pin this process to the harness core, run, print."""
    parser = build_parser()
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.streams is not None:
        sizes = dataclasses.replace(sizes, hold_streams=args.streams)
    if args.open_per_s:
        sizes = dataclasses.replace(sizes, hold_open_per_s=args.open_per_s)
    if args.chunk_delay_ms:
        sizes = dataclasses.replace(sizes, hold_delay_ms=args.chunk_delay_ms)
    if args.history_kb:
        sizes = dataclasses.replace(sizes, hold_history_kb=args.history_kb)
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    if args.hold_rounds:
        sizes = dataclasses.replace(sizes, hold_rounds=args.hold_rounds)
    if not (args.gateway_root / "gateway" / "__main__.py").exists():
        parser.error(f"no gateway package in {args.gateway_root}")
    if args.instructions and not available():
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    if args.peers and not Path(args.peers).exists():
        parser.error(f"no such file: {args.peers}")
    pinning = shutil.which("taskset") and (os.cpu_count() or 1) >= 2
    args.gateway_cpu = args.gateway_cpu if pinning and args.gateway_cpu else None
    args.harness_cpu = args.harness_cpu if pinning and args.harness_cpu else None
    if args.harness_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.harness_cpu.split(",")})
    raise_fd_limit()  # children inherit it: each held stream is two sockets in the gateway
    with tempfile.TemporaryDirectory(prefix="olp-bench-") as tmp:
        report = run_loop(run(args, sizes, Path(tmp)))
    report["goals"] = [g.as_dict() for g in goals(report)]
    if args.save:
        args.save.write_text(json.dumps(no_nan(report), indent=2) + "\n")
    text = render(report) + render_limits(report) + render_instructions(report)
    print(json.dumps(no_nan(report), indent=2) if args.json else text)
    return 0
