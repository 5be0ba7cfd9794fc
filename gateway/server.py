"""Running the app: one process or N workers sharing the port, uvloop when present, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from gateway.config import ServerSettings
from gateway.edge import EdgeRunner
from gateway.state import GATEWAY

log = logging.getLogger("gateway")
AppFactory = Callable[[], web.Application]


def make_runner(app: web.Application, *, shutdown_timeout: float | None = None) -> web.AppRunner:
    """The runner `app` is served with, in production and in the tests alike.

    An app that is not a gateway (the tests' fake upstream) gets the default server settings.
    """
    gw = app.get(GATEWAY)
    settings = gw.config.server if gw is not None else ServerSettings()
    return EdgeRunner(
        app,
        # Without it a handler never learns that its client went away.
        handler_cancellation=True,
        access_log=None,
        # aiohttp arms this timer at connect and again after each response, and closes a connection still
        # waiting for a whole request line and headers when it fires: the header timeout, slowloris included.
        keepalive_timeout=settings.header_timeout_s,
        # A body the handler left unread belongs to a call refused before it (no key, too large, too slow,
        # undecodable): aiohttp would go on reading and discarding it for 10 s; the connection closes now.
        lingering_time=0,
        shutdown_timeout=settings.drain_timeout_s if shutdown_timeout is None else shutdown_timeout,
    )


async def serve_app(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then drain: in-flight calls finish (up to the drain timeout)."""
    gw = app[GATEWAY]
    drain_s = gw.config.server.drain_timeout_s
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=2048, shutdown_timeout=drain_s)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving on http://%s:%d (pid %d)", host, port, os.getpid())
    await stop.wait()
    gw.draining = True
    log.info("draining: %d calls in flight, waiting up to %g s", gw.in_flight, drain_s)
    # Stops accepting, lets running handlers finish within shutdown_timeout, then runs the cleanup
    # contexts: the log recorder's cleanup writes and uploads the last chunk.
    await runner.cleanup()
    log.info("stopped")


def run(app_factory: AppFactory, host: str, port: int, workers: int) -> int:
    """Run `app_factory()` in this process, or in `workers` forked processes sharing the port."""
    if workers <= 1:
        _run_loop(serve_app(app_factory(), host, port))
        return 0
    return _supervise(app_factory, host, port, workers)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _supervise(app_factory: AppFactory, host: str, port: int, workers: int) -> int:
    """Fork the workers (each binds the port with SO_REUSEPORT), restart any that die, pass signals on."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's loop installs its own handlers
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _run_loop(serve_app(app_factory(), host, port, reuse_port=True))
            except BaseException:
                log.exception("worker %d failed", slot)
                code = 1
            os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(workers):
        spawn(slot)
    worst = 0
    while children:
        pid, status = os.wait()
        slot = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if slot >= 0 and not stopping:
            log.error("worker %d (pid %d) exited with %d; restarting it", slot, pid, code)
            time.sleep(1)  # do not spin if it dies at once
            spawn(slot)
    return 0 if stopping else worst


def setup_logging() -> None:
    """Operational messages go to stderr; stdout carries only the JSONL records."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
