"""Counters in Redis or Valkey, shared by every worker and replica: one script call per admission, and
settlements sent in the background, batched (one round trip for all those waiting), until acknowledged.

Each admission leaves a marker for its call (its id in its calls-in-flight set, else a marker key); a
settlement applies only while the marker is there and removes it, so a settlement sent twice (its first reply
lost) applies once, and one for an admission whose reply was lost applies exactly when the admission did. No
call waits on the store longer than `store_timeout_s`; after a failure the store is left alone for a second
(the calls follow `on_store_error`), and settlements are retried with backoff until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gateway.limits.resp import Client, ReplyError, bulks, head, pack
from gateway.limits.scripts import ADMIT, READ, SETTLE
from gateway.limits.store import Counter, Kind, StoreError, Verdict
from gateway.limits.windows import bucket, bucket_leaves, oldest_bucket

log = logging.getLogger("gateway.limits")
PAUSE_S = 1.0  # after a failure, admissions skip the store this long
BATCH = 128  # settlements sent in one round trip, at most
QUEUE_MAX = 100_000  # settlements waiting for the store; past this the oldest are dropped (and counted)
DRAIN_S = 5.0  # at shutdown, how long waiting settlements may take
STARTUP_S = 5.0  # at start, how long loading the scripts may take
# A script's SHA1 is the server's name for it: known here, a command can be written before any reply.
SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (ADMIT, SETTLE, READ)}

_FAILURES = (
    ReplyError,
    OSError,
    TimeoutError,
    ValueError,
    TypeError,
)  # the last two: a reply not as expected
Settlement = tuple[str, tuple[Counter, ...], Sequence[int], float]  # call id, counters, deltas, when


class Bound(NamedTuple):
    """A plan's counters of one second, with the parts of their admission command every call shares."""

    counters: tuple[Counter, ...]
    head: bytes  # the command's head: EVALSHA, the script, the number of keys, the counters' keys
    shared: bytes  # the arguments before the call's own: the second's bucket and time, each counter's own


class RedisStore:
    """The shared store; `start()` runs its settler, `close()` drains it."""

    name = "redis"

    def __init__(self, client: Client, *, prefix: str, timeout_s: float, lease_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.lease_s = int(lease_s)
        self.on_error: Callable[[str], None] = lambda operation: None
        self.settled = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._pause_until = 0.0
        self._queue: asyncio.Queue[Settlement] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def connect(cls, url: str, *, prefix: str, timeout_s: float, lease_s: float) -> RedisStore:
        """A store on `url`; the connection is made at the first call."""
        return cls(Client(url), prefix=prefix, timeout_s=timeout_s, lease_s=lease_s)

    async def start(self) -> None:
        """Start the settler; load the scripts now, so that the first calls do not wait for it."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._settle_forever())
        try:
            for script in (ADMIT, SETTLE, READ):
                await self._load(script, loop.time() + STARTUP_S)
        except _FAILURES as exc:  # not fatal: calls follow `on_store_error` until the store answers
            self._failed("start", exc)

    def bind(self, counters: Sequence[Counter], now: float) -> Bound:
        """`counters` with the parts of their admission command that stay the same for a second."""
        shared: list[str | int] = [bucket(now), oldest_bucket(now), int(now), self.lease_s, self.lease_s]
        for c in counters:
            shared += (c.kind.value, c.limit, c.slot)
        n = len(counters)
        command = bulks("EVALSHA", SHA[ADMIT], n + 1, *(c.key for c in counters))
        size = 3 + n + 1 + len(shared) + 1 + n  # with the marker, the call id and the amounts `admit` adds
        return Bound(tuple(counters), head(size) + command, bulks(*shared))

    async def admit(self, call_id: str, bound: Bound, amounts: Sequence[int], now: float) -> Verdict:
        if time.monotonic() < self._pause_until:
            raise StoreError("the store failed a moment ago")
        data = b"".join((bound.head, bulks(self._marker(call_id)), bound.shared, bulks(call_id, *amounts)))
        reply = await self._call("admit", ADMIT, data)
        refused, retry = int(reply[0]) - 1, int(reply[1])
        used = tuple(int(u) for u in reply[2:])
        return Verdict(used, refused, bucket_leaves(retry) - now if retry >= 0 else None)

    def settle(self, call_id: str, bound: Bound, deltas: Sequence[int], now: float) -> None:
        """Queue the settlement: the settler sends it, with those waiting, until it is acknowledged."""
        if self._queue.qsize() >= QUEUE_MAX:
            self._queue.get_nowait()
            self.dropped += 1
            self.on_error("settle_dropped")
        self._queue.put_nowait((call_id, bound.counters, deltas, now))

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        keys = [c.key for c in counters]
        args = [oldest_bucket(now), int(now), *(c.kind.value for c in counters)]
        reply = await self._call("read", READ, pack("EVALSHA", SHA[READ], len(keys), *keys, *args))
        return tuple(int(u) for u in reply)

    def health(self) -> dict[str, object]:
        failing = self._failing_since is not None
        return {
            "store": self.name,
            "degraded": failing,
            "last_error": self.last_error,
            "pending_settlements": self._queue.qsize(),
            "settled": self.settled,
            "dropped_settlements": self.dropped,
        }

    async def flush(self, within: float) -> bool:
        """Wait until every settlement so far is acknowledged (or `within` s pass); True when they were."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._queue.join()
                return True
        return False

    async def close(self) -> None:
        if self._task is not None:
            if not await self.flush(DRAIN_S):
                log.warning("limits: %d settlements not acknowledged at shutdown", self._queue.qsize())
            self._task.cancel()
            await asyncio.wait([self._task])
        await self.client.close()

    def _marker(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    async def _call(self, operation: str, script: str, data: bytes) -> Any:
        """Run the packed call of `script` within the timeout; StoreError (counted by the caller) when that
        fails."""
        try:
            reply = await self._evalsha(script, data, asyncio.get_running_loop().time() + self.timeout_s)
        except _FAILURES as exc:
            self._failed(operation, exc)
            raise StoreError(str(exc)) from exc
        self._failing_since = None
        return reply

    async def _evalsha(self, script: str, data: bytes, deadline: float) -> Any:
        reply = await self.client.request(data, deadline)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self._load(script, deadline)  # the store restarted and forgot its scripts
            reply = await self.client.request(data, deadline)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _load(self, script: str, deadline: float) -> None:
        reply = await self.client.request(pack("SCRIPT", "LOAD", script), deadline)
        if isinstance(reply, ReplyError):
            raise reply

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("limits store failing (%s): %s", operation, type(exc).__name__)
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        self._pause_until = time.monotonic() + PAUSE_S

    async def _settle_forever(self) -> None:
        """Send waiting settlements, batched, each batch until the store acknowledges it."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._send([self._settlement(*item) for item in batch])
            for _ in batch:
                self._queue.task_done()

    def _settlement(
        self, call_id: str, counters: tuple[Counter, ...], deltas: Sequence[int], now: float
    ) -> bytes:
        """The settlement's command: the counters with a correction, and the slots to free (which mark it)."""
        keys = [self._marker(call_id)]
        args: list[str | int] = [oldest_bucket(now), int(now), call_id]
        for counter, delta in zip(counters, deltas, strict=True):
            if delta or counter.kind is Kind.CONCURRENT:
                keys.append(counter.key)
                args += (counter.kind.value, delta, counter.slot)
        return head(3 + len(keys) + len(args)) + bulks("EVALSHA", SHA[SETTLE], len(keys), *keys, *args)

    async def _send(self, commands: list[bytes]) -> None:
        wait = 0.05
        while True:
            try:
                await self._pipeline(commands)
            except _FAILURES as exc:
                self._failed("settle", exc)
                self.on_error("settle")
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
                continue
            self._failing_since = None
            self.settled += len(commands)
            return

    async def _pipeline(self, commands: list[bytes]) -> None:
        deadline = asyncio.get_running_loop().time() + max(self.timeout_s, 1.0)  # off the request path
        for attempt in range(2):
            errors = [r for r in await self.client.pipeline(commands, deadline) if isinstance(r, ReplyError)]
            if not errors:
                return
            if attempt or not str(errors[0]).startswith("NOSCRIPT"):
                raise errors[0]
            await self._load(SETTLE, deadline)  # the store restarted and forgot its scripts: send them again
