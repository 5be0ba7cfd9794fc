"""Instructions per call (`--instructions`): what each feature costs the gateway, counted rather than timed.

On a shared machine, CPU time per call moves by several percent between identical runs, about as much as
the costs of logging and of limits the targets are about. The user-space instructions a call costs repeat
within about half a percent. So each configuration (logging off, summary and full; limits with the
in-process store and logging off) runs as a fresh gateway under `valgrind --tool=callgrind` on the gateway
core: WARM non-streaming calls at c=CONCURRENCY warm it up, the counters are zeroed (`callgrind_control -z`),
CALLS more are counted and dumped (`callgrind_control -d`). Python allocates as it does in production,
with its own allocator: callgrind, unlike memcheck, needs no `PYTHONMALLOC=malloc`, which counts every small
allocation's malloc and free and made allocating features look dearer (the limits at 49c6f82: +8.1 % with
it, +7.0 % without).

What the kernel does for a call (its reads and writes) is not counted: read these figures against each
other, and the timed phases for the whole cost.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.limits import LIMITS  # the limits phase's own rules, counted here
from bench.load import closed_loop
from bench.processes import Server, child_env
from bench.report import fmt, table
from bench.targets import Stack, write_config

WARM, CALLS, CONCURRENCY = 200, 300, 8
READY_S = 180.0  # a gateway starting under valgrind takes tens of seconds
# name: (logging, limits); the limits are the limits phase's own (set so high that nothing is refused)
CONFIGS: dict[str, tuple[str, bool]] = {
    "off": ("off", False),
    "summary": ("summary", False),
    "full": ("full", False),
    "limits": ("off", True),
}


def available() -> bool:
    """Whether valgrind and callgrind_control are installed."""
    return bool(shutil.which("valgrind") and shutil.which("callgrind_control"))


async def instructions(stack: Stack) -> dict[str, Any]:
    """Instructions per counted call of each configuration, and each one's share over logging off."""
    per_call: dict[str, float] = {}
    for name, (logging, limits) in CONFIGS.items():
        per_call[name] = await _count(stack, name, logging, limits)
    base = per_call["off"]
    return {
        "calls": CALLS, "concurrency": CONCURRENCY, "per_call": per_call,
        "added": {name: value / base - 1 for name, value in per_call.items() if name != "off"},
    }  # fmt: skip


async def _count(stack: Stack, name: str, logging: str, limits: bool) -> float:
    """One fresh gateway under callgrind: warmed up, then CALLS calls counted."""
    spool = stack.workdir / f"spool-cg-{name}"
    spool.mkdir(exist_ok=True)
    config = stack.workdir / f"gateway-cg-{name}.json"
    write_config(config, stack.upstream_port, logging, spool, LIMITS if limits else None)
    out = stack.workdir / f"callgrind-{name}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "gateway"]
    cmd += ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    env = child_env(stack.proxy_key, spool) | {"PYTHONPATH": str(stack.gateway_root)}
    server = Server(f"gateway-cg-{name}", cmd, stack.gateway_cpu, env, stack.workdir, cwd=stack.gateway_root)
    stack.servers.append(server)
    port = await server.port(timeout_s=READY_S)
    target = stack.target(f"cg-{name}", port, server)
    try:
        await server.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout_s=READY_S)
        await _calls(target, WARM)
        await _control("-z", server)
        await _calls(target, CALLS)
        await _control("-d", server)
        return _total(out) / CALLS
    finally:
        await target.session.close()
        server.stop()


async def _calls(target: Any, n: int) -> None:
    run = await closed_loop(target, n, CONCURRENCY, max_s=600.0)
    if failed := [s.error for s in run.samples if not s.ok]:
        raise RuntimeError(f"{len(failed)} of {n} calls to {target.name} failed, first: {failed[0]}")


async def _control(option: str, server: Server) -> None:
    """`callgrind_control <option> <pid>`: zero the counters, or dump them to a file of their own."""
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", option, str(server.proc.pid),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"callgrind_control {option} failed: {err.decode(errors='replace')}")


def _total(out: Path) -> int:
    """The instructions in the dump `callgrind_control -d` wrote last (`<out>.1`, `<out>.2`, ...)."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump next to {out}")
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dumps[-1]}")


def render_instructions(report: dict[str, Any]) -> str:
    """The instructions table, when the run counted them."""
    if not (counted := report.get("instructions")):
        return ""
    per_call, added = counted["per_call"], counted["added"]
    rows = []
    for name, value in per_call.items():
        vs_off = fmt(100 * added[name], 1, sign=True) + " %" if name in added else ""
        rows.append([name, f"{value / 1000:,.0f}k", vs_off])
    head = (
        f"instructions per call (user space, callgrind; {counted['calls']} non-streaming calls at "
        f"c={counted['concurrency']} after {WARM} to warm up; logging off unless named)"
    )
    return "\n\n" + head + "\n" + table(["gateway", "instructions", "vs off"], rows)
