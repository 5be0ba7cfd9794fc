"""The processes a benchmark starts, and what /proc says about them: CPU time, memory, descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import time
import timeit
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")
_ANNOUNCED = re.compile(rb"http://127\.0\.0\.1:(\d+)")
_SERVING = re.compile(rb"serving on http://127\.0\.0\.1:(\d+) ")  # the gateway's, in its log


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    """`cmd` run by taskset on the CPU list `cpu`, or as it is."""
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


def free_port() -> int:
    """A loopback port free now; for servers that cannot report the port they bound."""
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
    """The CPU time of one process (every thread's, user and system), to the nanosecond: read from its CPU
    clock, which Linux numbers from the pid (`MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)`). /proc/<pid>/stat
    says it in clock ticks of 10 ms, a step of a few percent of what a benchmark round measures; it is read
    where the clock cannot be."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def status_mb(pid: int, key: str) -> float:
    """One size field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    """How many descriptors `pid` holds open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_limit(pid: int) -> int:
    """The soft limit on open files of `pid`, as /proc/<pid>/limits shows it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; children inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


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


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def child_env(proxy_key: str, spool: Path) -> dict[str, str]:
    """This environment without anything that would send logs or calls off the machine."""
    dropped = ("LOG_BUCKET", "AWS_", "PROXY_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        PROXY_KEY=proxy_key, BENCH_UPSTREAM_API_KEY="sk-bench-upstream", LOG_SPOOL_DIR=str(spool),
        NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return env


class Server:
    """A process this script started (pinned to `cpu`); measured and stopped by its own pid.

    With `announces`, the process binds port 0 and prints its URL on stdout, so no other process can take
    the port between a bind-then-close probe and the server's own bind; a gateway (`serve --port 0`) names
    its port in its log instead.
    """

    def __init__(
        self, name: str, cmd: list[str], cpu: str | None, env: dict[str, str], workdir: Path,
        *, announces: bool = False, cwd: Path = ROOT,
    ) -> None:  # fmt: skip
        self.name = name
        self.announces = announces
        self.log = workdir / f"{name}.log"
        self.out = workdir / f"{name}.out"
        with self.log.open("wb") as log, self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                pinned(cpu, cmd), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=out if announces else subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip

    def cpu_s(self) -> float:
        """CPU seconds used so far by the process tree."""
        return sum(cpu_seconds(p) for p in proc_tree(self.proc.pid))

    def memory_mb(self, key: str) -> float:
        """VmRSS or VmHWM summed over the process tree."""
        return round(sum(status_mb(p, key) for p in proc_tree(self.proc.pid)), 1)

    def fds(self) -> int:
        """Descriptors open in the process tree."""
        return sum(open_fds(p) for p in proc_tree(self.proc.pid))

    async def port(self, timeout_s: float = 30.0) -> int:
        """The port the process announced on stdout; a gateway's, from its log's `serving on` line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            source, pattern = (self.out, _ANNOUNCED) if self.announces else (self.log, _SERVING)
            if found := pattern.search(source.read_bytes()):
                return int(found.group(1))
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} announced no port after {timeout_s:g} s:\n{self.tail()}")

    async def wait_ready(self, url: str, timeout_s: float = 30.0) -> None:
        """Poll `url` until it answers 200."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s:\n{self.tail()}")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        """The last lines of the process's stderr."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
