"""A real `redis-server` (Debian's) on a free loopback port, in a temporary folder, for the limits tests.

Persistence as the deploy component runs Valkey: every write is appended to the file before the server
answers (`appendonly yes`), and fsynced every second (`appendfsync everysec`), so a write the gateway saw
acknowledged survives a restart of the server, `kill -9` included (only a crash of the machine itself could
lose the last second). `restart()` keeps the port and the folder.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        pytest.fail(
            "redis-server is not installed: scripts/test.sh installs it (apt-get install redis-server)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`start()`, `stop()`, `kill()`, `restart()`, `pause()`/`resume()`; `url` for clients."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder = folder
        self.options = options  # more redis-server options, e.g. `--requirepass`
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, within: float = 10.0) -> RedisServer:
        for _ in range(3):  # the port was free a moment ago; another process may have taken it since
            if self._start(within):
                return self
            self.port = _free_port()
        raise RuntimeError(f"redis-server did not start: {self.log}")

    def _start(self, within: float) -> bool:
        args = [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.folder / "redis.log"), "--protected-mode", "yes", *self.options]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def ping(self) -> bool:
        """Whether it answers (a server asking for a password answers too: with an error)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save; only what was fsynced is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, *, hard: bool = True, down_s: float = 0.0) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_s)
        if not self._start(10.0):
            raise RuntimeError(f"redis-server did not come back on port {self.port}: {self.log}")

    def pause(self) -> None:
        """SIGSTOP: the port stays open and nothing answers, as a hung server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
