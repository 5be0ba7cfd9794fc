"""The typed keys the app and its requests carry, and the state the handlers share."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from gateway.auth import KeyRing
from gateway.calls import Call
from gateway.config import Config
from gateway.limits.limiter import Limiter
from gateway.metrics import Metrics
from gateway.routing import Router
from gateway.scrub import Scrubber
from gateway.upstream import Upstream


class Recorder(Protocol):
    """Where a call's two records go: `request` on arrival, `response` when it is over."""

    def request(self, call: Call) -> None: ...

    def response(self, call: Call) -> None: ...

    def written(self) -> asyncio.Future[None] | None:
        """A future done once every record queued so far is written; None when none is waiting."""

    def health(self) -> dict[str, object]: ...


class NullRecorder:
    """Records nothing (logging disabled)."""

    def request(self, call: Call) -> None:
        pass

    def response(self, call: Call) -> None:
        pass

    def written(self) -> asyncio.Future[None] | None:
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
    in_flight: int = 0
    draining: bool = False

    def log_request(self, call: Call) -> None:
        """Write the call's request record, once."""
        if not call.request_logged:
            call.request_logged = True
            self.recorder.request(call)

    def finish(self, call: Call) -> None:
        """Close the books on a call: its request record if not yet written, its response record, metrics."""
        call.ended = time.perf_counter()
        self.log_request(call)
        self.recorder.response(call)
        # Only a call an authenticated caller made and the upstream answered may name a new label.
        answered = call.key_name is not None or self.keys.open
        model = self.metrics.model_label(call.model, answered=answered and 0 < call.status < 400)
        ttfb = None if call.first_byte is None else call.first_byte - call.started
        self.metrics.observe_call(call.provider or "none", model, call.status, call.latency_ms / 1000, ttfb)
        self.limits.settle(call)

    async def recorded(self) -> None:
        """Wait (at most a loop turn) until every record queued so far is written."""
        written = self.recorder.written()
        if written is not None:
            await written


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
RATE_HEADERS = web.RequestKey("rate_headers", dict)  # the call's x-ratelimit-* headers, for its answer
