"""Talking to providers: one shared connection pool, timeouts, retries before the first byte.

This is the one place where the HTTP client's failures (`gateway.http1`) become the gateway's own
(`UpstreamError`, `UpstreamTimeout`), so nothing above it needs to know how the bytes travel.

Every upstream is a server we do not control: redirects are never followed (a 3xx is an error naming where
it pointed, so no byte of a request reaches a host the config did not name), answers are asked for without
compression and read up to a size limit, and every call has a deadline however steadily its upstream drips.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable

import orjson

from gateway.config import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamRedirect, UpstreamTimeout, UpstreamTooLarge
from gateway.http1 import HTTPError, Pool, Response, Sink
from gateway.metrics import Metrics
from gateway.scrub import Scrubber
from providers.base import UpstreamRequest

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DISCOVERY_MAX_BYTES = 4 << 20  # a /models listing larger than this is ignored


class Upstream:
    """Sends upstream requests through the shared pool, retrying what is safe to retry."""

    def __init__(self, pool: Pool, settings: UpstreamSettings, metrics: Metrics, scrubber: Scrubber) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.scrubber = scrubber

    async def _post(self, url: str, body: bytes, headers: dict[str, str], deadline: float) -> Response:
        """POST and wait for the answer's headers, under one timer: the first-byte timeout or the deadline.

        One `call_later` per attempt, cancelling this task when it fires, is what `asyncio.timeout` does
        without its context-manager machinery. The body is watched by `IdleWatch` instead.
        """
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise UpstreamTimeout("The call reached its deadline before the provider answered.")
        loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup is a getpid() system call
        task = asyncio.current_task(loop)
        assert task is not None  # always: the gateway's coroutines run as tasks
        expiry = _Expiry(task)
        handle = loop.call_later(min(remaining, self.settings.first_byte_timeout_s), expiry.fire)
        try:
            return await self.pool.request("POST", url, headers, body)
        except asyncio.CancelledError:
            if expiry.fired and expiry.task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()

    async def send(
        self, request: UpstreamRequest, provider: str, deadline: float, *, retry: bool = True
    ) -> Response:
        """The upstream's response (any status) once its headers arrive; raises UpstreamError when none came.

        429, 5xx and connection failures are retried with backoff, honouring Retry-After, because nothing
        has reached the client yet; the last attempt's response is returned as it is. A 3xx is never
        followed. `deadline` (a `time.perf_counter()` value) bounds the whole call, body included.
        """
        attempts = 1 + (self.settings.retries if retry else 0)
        headers = {**request.headers, "Accept-Encoding": "identity"}
        for attempt in range(1, attempts + 1):
            try:
                response = await self._post(request.url, request.body, headers, deadline)
            except (TimeoutError, HTTPError) as exc:
                failure = self._failure(exc, provider, deadline)
                if attempt == attempts:
                    raise failure from exc
                wait = self._backoff(attempt)
            else:
                if 300 <= response.status < 400:
                    raise self._redirect(response, provider)
                if response.status not in RETRY_STATUSES or attempt == attempts:
                    return response
                self.metrics.upstream_errors.labels(provider, f"http_{response.status}").inc()
                wait = retry_after(response.headers.get("Retry-After"), self._backoff(attempt))
                response.release()
            self.metrics.retries.labels(provider).inc()
            await asyncio.sleep(min(wait, self.settings.retry_max_wait_s))
        raise AssertionError("unreachable")  # pragma: no cover

    def _redirect(self, response: Response, provider: str) -> UpstreamRedirect:
        """The error for a 3xx: it names where the provider pointed (scrubbed, cut short)."""
        location = self.scrubber.text(response.headers.get("Location", "")[:300]) or "nowhere"
        response.close()
        self.metrics.upstream_errors.labels(provider, "redirect").inc()
        return UpstreamRedirect(
            f"The provider {provider!r} answered HTTP {response.status}, a redirect to {location!r}; "
            "redirects are not followed."
        )

    def _failure(self, exc: BaseException, provider: str, deadline: float) -> UpstreamError:
        if isinstance(exc, TimeoutError):
            self.metrics.upstream_errors.labels(provider, "timeout").inc()
            if time.perf_counter() >= deadline:
                return UpstreamTimeout(f"The call to {provider!r} reached its deadline.")
            return UpstreamTimeout(f"The provider {provider!r} did not answer in time.")
        self.metrics.upstream_errors.labels(provider, "connection").inc()
        return UpstreamError(f"Could not reach the provider {provider!r}: {type(exc).__name__}.")

    def _backoff(self, attempt: int) -> float:
        base = self.settings.retry_backoff_s * 2 ** (attempt - 1)
        return base * (0.5 + random.random() / 2)  # jitter, so retries from many calls spread out

    async def relay(
        self,
        response: Response,
        provider: str,
        deadline: float,
        sink: Sink,
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Hand the body to `sink` as it arrives, in the connection's callback (`Response.pump`), to its end.

        When `sink` says it is full, the socket pauses while `drain()` waits for the sink's own reader. A
        silence longer than idle_timeout_s raises UpstreamTimeout, and so does reaching the call's deadline;
        what `sink` raises comes out as it is.
        """
        watch = IdleWatch(response, self.settings.idle_timeout_s, deadline)
        now = watch.loop.time

        def stamped(data: bytes) -> bool:
            watch.waiting_since = now()  # a piece arrived: silence is counted from here
            return sink(data)

        try:
            watch.waiting_since = now()
            while not await response.pump(stamped):
                watch.waiting_since = None  # the client is slow, not the upstream
                if drain is not None:
                    await drain()
                watch.waiting_since = now()
        except (TimeoutError, HTTPError) as exc:
            raise self._broken(exc, provider, deadline) from exc
        finally:
            watch.cancel()

    def _broken(self, exc: Exception, provider: str, deadline: float) -> UpstreamError:
        """A body's read cut short (a timeout, or the client's HTTPError) as the gateway's error, counted."""
        if isinstance(exc, HTTPError):
            self.metrics.upstream_errors.labels(provider, "broken_stream").inc()
            return UpstreamError(f"The provider {provider!r} broke off the answer: {type(exc).__name__}.")
        if time.perf_counter() >= deadline:
            self.metrics.upstream_errors.labels(provider, "deadline").inc()
            limit = self.settings.call_deadline_s
            return UpstreamTimeout(f"The call to {provider!r} reached its deadline of {limit:g} s.")
        self.metrics.upstream_errors.labels(provider, "idle_timeout").inc()
        idle = self.settings.idle_timeout_s
        return UpstreamTimeout(f"The provider {provider!r} went silent for {idle:g} s mid-answer.")

    async def read(self, response: Response, provider: str, deadline: float) -> bytes:
        """The whole body up to `max_body_bytes`, mapping failures like `relay` does."""
        limit = self.settings.max_body_bytes
        if response.at_eof():
            body = response.read_nowait()  # all of it came with the headers: no timer to arm, no wait
            if len(body) > limit:
                raise self._too_large(provider)
            return body
        parts: list[bytes] = []
        size = 0

        def keep(data: bytes) -> bool:
            nonlocal size
            size += len(data)
            if size > limit:
                raise self._too_large(provider)
            parts.append(data)
            return False

        await self.relay(response, provider, deadline, keep)
        return b"".join(parts)

    def _too_large(self, provider: str) -> UpstreamTooLarge:
        self.metrics.upstream_errors.labels(provider, "too_large").inc()
        limit = self.settings.max_body_bytes
        return UpstreamTooLarge(f"The provider {provider!r} answered with more than {limit} bytes.")

    async def get_json(self, url: str, headers: dict[str, str]) -> object:
        """A small GET (model discovery), bounded in time and size, never redirected; None on any failure."""
        headers = {**headers, "Accept-Encoding": "identity"}
        response: Response | None = None
        try:
            async with asyncio.timeout(max(5.0, self.settings.connect_timeout_s)):
                response = await self.pool.request("GET", url, headers)
                parts: list[bytes] = []
                size = 0
                while response.status == 200 and size <= DISCOVERY_MAX_BYTES:
                    if not (chunk := await response.readany()):
                        return orjson.loads(b"".join(parts))
                    size += len(chunk)
                    parts.append(chunk)
                return None
        except Exception:
            return None
        finally:
            if response is not None:
                response.close()


class _Expiry:
    """The timer side of `Upstream._post`: cancels the waiting task, and remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


class IdleWatch:
    """Fails a response's pending read with TimeoutError once the upstream was silent for `seconds`, or
    at the call's deadline.

    One timer per response that re-arms itself when it finds the reader was not waiting that long, so the
    relay only stamps `waiting_since` as each piece arrives: an `asyncio.timeout` around every chunk costs a
    timer, a context manager and a cancellation check per chunk. Time the caller spends waiting for its own
    client (while `waiting_since` is None) does not count as upstream silence; it counts toward the deadline.
    """

    __slots__ = ("_deadline", "_handle", "_response", "_seconds", "loop", "waiting_since")

    def __init__(self, response: Response, seconds: float, deadline: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiting_since: float | None = None
        self._response = response
        self._seconds = seconds
        now = self.loop.time()
        self._deadline = now + (deadline - time.perf_counter())  # on the loop's clock
        self._handle = self.loop.call_at(min(now + seconds, self._deadline), self._check)

    def _check(self) -> None:
        if self._response.closed:
            return
        now, since = self.loop.time(), self.waiting_since
        if now >= self._deadline or (since is not None and now - since >= self._seconds):
            self._response.set_exception(TimeoutError())
            return
        due = (now if since is None else since) + self._seconds
        self._handle = self.loop.call_at(min(due, self._deadline), self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def retry_after(value: str | None, fallback: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), else `fallback`."""
    if not value:
        return fallback
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else fallback
