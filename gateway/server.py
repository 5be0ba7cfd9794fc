"""Running the app: one process or N workers sharing the port, uvloop when present, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from functools import partial
from typing import Any, NoReturn

from aiohttp import web

from gateway.config import ServerSettings
from gateway.connections import Connections, default_limit
from gateway.edge import EdgeRunner
from gateway.metrics import WorkerGroup, keep_values_in_the_loop
from gateway.state import GATEWAY, Gateway

# The collector's thresholds: allocations between two sweeps of the young generation; young sweeps between
# two of the middle one; middle sweeps before a full collection is considered.
GC_THRESHOLDS = (20_000, 1, 200)
log = logging.getLogger("gateway")
AppFactory = Callable[[], web.Application]
# Connections the kernel keeps waiting to be accepted: as many as it allows (listen(2) caps this at
# net.core.somaxconn, 4,096 by default). A burst of thousands of connections, a client's flood among them,
# then waits its turn instead of being dropped, and a probe dropped there would retry only a second later.
BACKLOG = 65535
PUBLISH_EVERY_S = 1.0  # how fresh a worker's gauges and keys' usage are in a sibling's scrape
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def settle_gc() -> None:
    """Tune the cyclic collector for a long-lived server, once everything it keeps has been built.

    The benchmark's upstream, its bare pass-through and its load generator call it too: a full collection
    there stops every held stream at once, and the gateway then relays the backlog as one burst.
    """
    # Everything built so far lives as long as the process: keep it out of every full collection, whose
    # pauses otherwise grow with start-up objects while thousands of streams wait on the loop.
    gc.freeze()
    # A call allocates a few hundred tracked objects and frees nearly all of them by reference counting;
    # at the default threshold (700) the young generation is swept every few calls for almost nothing.
    # Thousands of open streams are another matter: nearly everything they allocate survives, and a sweep
    # of the middle generation walks every survivor since the last one. Swept after every other young
    # sweep, it holds at most two young sweeps' worth: a pause of about 20 ms with 8,000 streams open,
    # where 20 sweeps' worth stopped the loop for 100 to 170 ms. Each survivor is walked as often either
    # way, and a full collection is considered as often as before (every 400 or so young sweeps).
    gc.set_threshold(*GC_THRESHOLDS)


def make_runner(app: web.Application, *, shutdown_timeout: float | None = None) -> web.AppRunner:
    """The runner `app` is served with, in production and in the tests alike.

    An app that is not a gateway (the tests' fake upstream) gets the default server settings.
    """
    gw = app.get(GATEWAY)
    settings = gw.config.server if gw is not None else ServerSettings()
    connections = gw.connections if gw is not None else Connections()
    connections.limit = settings.max_connections or default_limit()
    return EdgeRunner(
        app,
        connections=connections,
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
    _raise_open_files_limit()  # first: the connections allowed by default follow from it
    runner = make_runner(app)
    await runner.setup()
    settle_gc()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=BACKLOG, shutdown_timeout=drain_s)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    log.info("serving on http://%s:%d (pid %d)", where, port, os.getpid())
    await stop.wait()
    gw.draining = True
    log.info("draining: %d calls in flight, waiting up to %g s", gw.in_flight, drain_s)
    # Stops accepting, lets running handlers finish within shutdown_timeout, then runs the cleanup
    # contexts: the log recorder's cleanup writes and uploads the last chunk.
    await runner.cleanup()
    log.info("stopped")


def check_port(host: str, port: int) -> None:
    """Raise OSError now when `host:port` cannot be listened on, rather than in every worker, forever."""
    for address in _addresses(host, port):
        _bound(*address).close()


def _addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """(family, type, protocol, address) of each address `host:port` is listened on at."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return [(family, kind, proto, address) for family, kind, proto, _, address in found]


def _bound(family: int, kind: int, proto: int, address: Any, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to `address` as asyncio binds a server's: a port the last run left in TIME_WAIT is
    free, and IPv6 does not claim IPv4."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each stream holds two, and a pod cannot set it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(app_factory: AppFactory, host: str, port: int, workers: int) -> int:
    """Run `app_factory()` in this process, or in `workers` forked processes sharing the port.

    Port 0 is a free port the system chooses, the same for every worker and every address of `host`; the
    log's `serving on` line names it.
    """
    with reserved_port(host, port) as (port, shared):
        if workers <= 1:
            keep_values_in_the_loop()  # metrics stepped by this process's loop alone
            _run_loop(serve_app(app_factory(), host, port, reuse_port=shared))
            return 0
        return _supervise(app_factory, host, port, workers)


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[tuple[int, bool]]:
    """`port`, or for port 0 a free one held for the run; and whether the listening sockets must share it.

    asyncio binds port 0 anew for each address (and each worker would bind its own): the port is chosen
    once here instead, by a socket bound with SO_REUSEPORT and never listening, which keeps it ours until
    the run ends while every listening socket binds it beside it (a socket that is not listening is given
    no connections).
    """
    if port:
        yield port, False
        return
    with _bound(*_addresses(host, 0)[0], reuse_port=True) as holder:
        yield holder.getsockname()[1], True


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _supervise(app_factory: AppFactory, host: str, port: int, workers: int) -> int:
    """Fork the workers and watch them; the run folder they share lives as long as this process."""
    group = WorkerGroup.create(workers)
    try:
        return _watch(app_factory, host, port, group)
    finally:
        group.remove()


def _watch(app_factory: AppFactory, host: str, port: int, group: WorkerGroup) -> int:
    """Fork the workers (each binds the port with SO_REUSEPORT), restart any that die, pass signals on."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        # A stop arriving mid-fork waits until the child has its own handlers and the parent knows the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            _work(app_factory, host, port, group, slot)
        children[pid] = slot
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(group.workers):
        spawn(slot)
    worst = 0
    while children:
        pid, status = os.wait()
        slot = children.pop(pid, -1)
        group.bury(pid)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if slot >= 0 and not stopping:
            log.error("worker %d (pid %d) exited with %d; restarting it", slot, pid, code)
            time.sleep(1)  # do not spin if it dies at once
            if not stopping:  # a stop came during the pause: a worker started now would not hear it
                spawn(slot)
    return 0 if stopping else worst


def _work(app_factory: AppFactory, host: str, port: int, group: WorkerGroup, slot: int) -> NoReturn:
    """A forked worker's life: join the group, serve until told to stop, exit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's loop installs its own handlers
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = 0
    try:
        member = group.join(slot)  # before the app exists: its metrics are made in the group's files
        app = app_factory()
        app[GATEWAY].metrics.share(member)
        app.cleanup_ctx.append(partial(_publish_metrics, app[GATEWAY]))
        _run_loop(serve_app(app, host, port, reuse_port=True))
    except BaseException:
        log.exception("worker %d failed", slot)
        code = 1
    os._exit(code)


async def _publish_metrics(gw: Gateway, app: web.Application) -> AsyncIterator[None]:
    """Keep this worker's load gauges and keys' usage current in the group's files: a scrape may reach
    a sibling."""

    async def publish() -> None:
        while True:
            gw.publish_metrics()
            await asyncio.sleep(PUBLISH_EVERY_S)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def setup_logging() -> None:
    """Operational messages go to stderr; stdout carries only the JSONL records."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
