"""What the load goes to: the bench upstream, the floor (a bare pass-through) and the gateways."""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import MODEL, REQUEST_TIMEOUT, Target
from bench.processes import ROOT, Server, child_env

HERE = Path(__file__).resolve().parent
CHAT = "/v1/chat/completions"


def write_config(
    path: Path, upstream_port: int, logging: str, spool: Path, limits: dict[str, Any] | None = None
) -> None:
    """A gateway config with one provider at the bench upstream, the logging mode asked for, and `limits`."""
    section: dict[str, Any] = (
        {"enabled": False} if logging == "off" else {"capture": logging, "spool_dir": str(spool)}
    )
    config = {
        "default_provider": None,
        "providers": {
            "bench": {
                "endpoint": f"http://127.0.0.1:{upstream_port}{CHAT}",
                "api_key_env": "BENCH_UPSTREAM_API_KEY",
                "models": [MODEL],
            }
        },
        "logging": section,
    }
    if limits:
        config["limits"] = limits
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML too; chosen by the .json extension


@dataclass
class Stack:
    """The processes of one run, on their cores; stopped together, newest first."""

    workdir: Path
    gateway_cpu: str | None
    harness_cpu: str | None
    traced: bool = False  # the gateway under tracemalloc (bench.traced), for a memory report
    gateway_root: Path = ROOT  # where `gateway` and `providers` are imported from: another tree, say
    upstream_port: int = 0
    proxy_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    servers: list[Server] = field(default_factory=list)

    @property
    def upstream(self) -> Server:
        return self.servers[0]

    async def start_upstream(self) -> Server:
        """The bench upstream on the harness core, on a port it picks itself."""
        cmd = [sys.executable, str(ROOT / "scripts/bench_upstream.py"), "--port", "0"]
        server = self._start("upstream", cmd, self.harness_cpu, child_env("", self.workdir), announces=True)
        self.upstream_port = await server.port()
        await server.wait_ready(f"http://127.0.0.1:{self.upstream_port}/health")
        return server

    async def start_floor(self) -> tuple[Server, int]:
        """The bare pass-through on the gateway core."""
        cmd = [sys.executable, str(HERE / "passthrough.py")]
        cmd += ["--upstream", f"http://127.0.0.1:{self.upstream_port}{CHAT}"]
        server = self._start("floor", cmd, self.gateway_cpu, child_env("", self.workdir), announces=True)
        port = await server.port()
        await server.wait_ready(f"http://127.0.0.1:{port}/health")
        return server, port

    async def start_gateway(self, logging: str) -> tuple[Server, int]:
        """`python -m gateway serve --workers 1` on the gateway core, with a fresh config and spool."""
        spool = self.workdir / f"spool-{logging}"
        spool.mkdir(exist_ok=True)
        config = self.workdir / f"gateway-{logging}.json"
        write_config(config, self.upstream_port, logging, spool)
        module = "bench.traced" if self.traced else "gateway"
        cmd = [sys.executable, "-m", module, "serve", "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--workers", "1"]
        env = child_env(self.proxy_key, spool)
        env["PYTHONPATH"] = f"{HERE.parent}:{self.gateway_root}" if self.traced else str(self.gateway_root)
        if self.traced:
            env["BENCH_TRACEMALLOC_OUT"] = str(self.tracemalloc_out)
        server = self._start(f"gateway-{logging}", cmd, self.gateway_cpu, env, cwd=self.gateway_root)
        port = await server.port()
        await server.wait_ready(f"http://127.0.0.1:{port}/readyz")
        return server, port

    def _start(
        self, name: str, cmd: list[str], cpu: str | None, env: dict[str, str], announces: bool = False,
        cwd: Path = ROOT,
    ) -> Server:  # fmt: skip
        server = Server(name, cmd, cpu, env, self.workdir, announces=announces, cwd=cwd)
        self.servers.append(server)
        return server

    @property
    def tracemalloc_out(self) -> Path:
        return self.workdir / "tracemalloc.txt"

    def target(self, name: str, port: int, server: Server | None = None) -> Target:
        """A target on `port` with its own connection pool (64 connections: more than any closed loop)."""
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=REQUEST_TIMEOUT,
            skip_auto_headers=["User-Agent"],
        )
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.proxy_key}"}
        return Target(name, f"http://127.0.0.1:{port}{CHAT}", session, headers, server)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
