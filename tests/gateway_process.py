"""Running the real `python -m gateway serve` as a subprocess, for tests that need the whole process
(signals, restarts, workers, stdout records), and the fake upstream on a thread of its own beside it."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from fake_upstream import FakeUpstream

PROXY_KEY = "test-proxy-key-0123456789"
PROVIDER_KEY = "test-provider-key-9876543210"


SERVING = re.compile(rb"serving on http://\S+:(\d+) \(pid \d+\)")


def free_port() -> int:
    """A loopback port free now (the tests' one helper), for a server that cannot report the port it bound,
    or that must be named before it runs: another process may take it meanwhile. The gateway can (`--port 0`,
    then `serving_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving_port(stderr: Path) -> int | None:
    """The port a gateway started with `--port 0` bound, once its log says it is serving."""
    found = SERVING.search(stderr.read_bytes()) if stderr.exists() else None
    return int(found[1]) if found else None


def fake_config(upstream_url: str, **sections: Any) -> dict[str, Any]:
    """A config with one provider, `fake`, serving `fake-model` from the fake upstream at `upstream_url`."""
    config: dict[str, Any] = {
        "default_provider": "fake",
        "providers": {
            "fake": {
                "endpoint": f"{upstream_url}/v1/chat/completions",
                "api_key_env": "FAKE_KEY",
                "models": ["fake-model"],
            }
        },
        "upstream": {"retry_backoff_s": 0.01},
    }
    config.update(sections)
    return config


_RUNS = itertools.count()


class GatewayProcess:
    """One gateway process on a port of its own choosing; `url` (once started), `stop()`, `kill()`, and its
    captured stdout/stderr. Started again, it comes back on the same port."""

    def __init__(
        self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.tmp = tmp
        self.port = 0  # the gateway picks one at its first start
        run = next(_RUNS)
        self.config_path = tmp / f"config-{run}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stdout_path = tmp / f"stdout-{run}.jsonl"
        self.stderr_path = tmp / f"stderr-{run}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROXY_KEY", "LOG_"))}
        self.env = {**base, "PROXY_KEY": PROXY_KEY, "FAKE_KEY": PROVIDER_KEY, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.stderr}")
            if not self.port:
                self.port = serving_port(self.stderr_path) or 0
                time.sleep(0 if self.port else 0.05)
                continue
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"gateway did not get ready: {self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """`kill -9`: no drain, no flush."""
        self.stop(signal.SIGKILL, timeout=10)

    @property
    def url(self) -> str:
        assert self.port, "the gateway names its port once started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def stdout_lines(self) -> list[bytes]:
        return self.stdout_path.read_bytes().splitlines() if self.stdout_path.exists() else []

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGKILL, timeout=10)


class UpstreamThread:
    """The fake upstream on its own event loop in a thread, so tests can block on the gateway process."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.port = 0  # bound by the thread, which names it before `ready`
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.fake.app, handler_cancellation=True)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
