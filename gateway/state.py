"""The typed keys the app and its requests carry, and the state the handlers share."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from gateway.auth import KeyRing
from gateway.calls import Call
from gateway.config import Config
from gateway.connections import Connections
from gateway.limits.limiter import Limiter
from gateway.metrics import Metrics
from gateway.routing import Router
from gateway.scrub import Scrubber
from gateway.upstream import Upstream

log = logging.getLogger("gateway")
PUBLISH_WARN_EVERY_S = 60.0


class Recorder(Protocol):
    """Where a call's two records go: `request` on arrival, `response` when it is over."""

    def request(self, call: Call) -> None: ...

    def response(self, call: Call) -> None: ...

    def written(self, now: bool = False) -> Awaitable[None] | None:
        """Something to await until every record queued so far is written; None when none is waiting (or,
        with `now`, once they were written at once)."""

    def health(self) -> dict[str, object]: ...


class NullRecorder:
    """Records nothing (logging disabled)."""

    def request(self, call: Call) -> None:
        pass

    def response(self, call: Call) -> None:
        pass

    def written(self, now: bool = False) -> Awaitable[None] | None:
        return None

    def health(self) -> dict[str, object]:
        return {"enabled": False}


@dataclass(eq=False)
class Gateway:
    """Everything a handler needs, built once per app."""

    config: Config
    router: Router
    keys: KeyRing
    scrubber: Scrubber
    metrics: Metrics
    upstream: Upstream = field(init=False)
    recorder: Recorder = field(default_factory=NullRecorder)
    limits: Limiter = field(default_factory=Limiter)  # the configured one is set by its cleanup context
    connections: Connections = field(init=False)  # the client connections, counted by the server's runner
    in_flight: int = 0
    draining: bool = False
    _ended: list[Call] = field(default_factory=list)  # calls over, their metrics and settlements not yet made
    _publish_failed_at: float = float("-inf")  # when publishing the metrics last failed (and was said)

    def __post_init__(self) -> None:
        self.connections = Connections(on_close=self.metrics.connections_closed_idle.inc)

    def log_request(self, call: Call) -> None:
        """Write the call's request record, once."""
        if not call.request_logged:
            call.request_logged = True
            self.recorder.request(call)

    def finish(self, call: Call) -> None:
        """Close the books on a call: its request record if not yet written, its response record; then, once
        its answer has left (the next turn of the loop, with every call that ended in this one), its metrics
        and its settlement with the limits."""
        if call.ended is None:  # a stream that ended with [DONE] was timed at its last byte
            call.ended = time.perf_counter()
        self.log_request(call)
        self.recorder.response(call)
        if not self._ended:
            try:
                asyncio.get_running_loop().call_soon(self._account)
            except RuntimeError:  # no loop (a script, a test): at once
                self._ended.append(call)
                self._account()
                return
        self._ended.append(call)

    def _account(self) -> None:
        """The metrics and settlements of the calls that ended since the last turn."""
        ended, self._ended = self._ended, []
        keys, metrics, limits = self.keys, self.metrics, self.limits
        for call in ended:
            try:
                limits.settle(call)  # first: a slot or a reservation left unsettled would never be freed
                # Only a call an authenticated caller made and the upstream answered may name a new label.
                answered = call.key_name is not None or keys.open
                model = metrics.model_label(call.model, answered=answered and 0 < call.status < 400)
                ttfb = None if call.first_byte is None else call.first_byte - call.started
                seconds = call.latency_ms / 1000
                metrics.observe_call(call.provider or "none", model, call.status, seconds, ttfb)
            except Exception:  # a bug: said, and the other calls of the turn are still accounted for
                log.exception("could not account for call %s", call.request_id)

    def publish_metrics(self) -> None:
        """Set the gauges of what this process is handling now: calls in flight, stream ends waiting, client
        connections; and bring the keys' tokens and cost up to date. Never raises: a scrape still answers
        with what the metrics hold, and a worker goes on publishing every second."""
        try:
            self.metrics.in_flight.set(self.in_flight)
            self.metrics.client_connections.set(self.connections.open)
            self.metrics.stream_ends_waiting.set(self.upstream.pool.ends.waiting)
            self.limits.publish()  # last: the one that may meet a new label, and a file to grow for it
        except Exception:  # a group's metric file that cannot grow (a full disk), or a bug
            now = time.monotonic()
            if now - self._publish_failed_at >= PUBLISH_WARN_EVERY_S:
                self._publish_failed_at = now  # said once a minute
                log.exception("could not publish the metrics; tried again at the next scrape or second")

    def recorded(self) -> Awaitable[None] | None:
        """Something to await (a loop turn) until every record queued so far is written; None when there is
        nothing to wait for (`LogRecorder.written`).

        With no other call in flight, nothing else would join this loop turn's batch: it is written at once,
        and the handler goes on without suspending (what one call at a time would otherwise wait a turn for).
        """
        return self.recorder.written(now=self.in_flight == 0)


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
RATE_HEADERS = web.RequestKey("rate_headers", bytes)  # its x-ratelimit-* lines (`LinesResponse`)
