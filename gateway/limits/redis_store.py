"""Counters in Redis or Valkey, shared by every worker and replica: one script call per admission, and
settlements sent in the background, batched (one round trip for all those waiting), until acknowledged.

Each admission leaves a marker key for its call; a settlement applies only while the marker is there and
removes it, so a settlement sent twice (its first reply lost) applies once, and one for an admission whose
reply was lost applies exactly when the admission did. No call waits on the store longer than
`store_timeout_s`; after a failure the store is left alone for a second (the calls follow
`on_store_error`), and settlements are retried with backoff until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.limits.resp import Client, ReplyError
from gateway.limits.scripts import ADMIT, READ, SETTLE
from gateway.limits.store import Counter, Kind, StoreError, Verdict
from gateway.limits.windows import bucket, bucket_leaves, oldest_bucket

log = logging.getLogger("gateway.limits")
PAUSE_S = 1.0  # after a failure, admissions skip the store this long
BATCH = 128  # settlements sent in one round trip, at most
QUEUE_MAX = 100_000  # settlements waiting for the store; past this the oldest are dropped (and counted)
DRAIN_S = 5.0  # at shutdown, how long waiting settlements may take
STARTUP_S = 5.0  # at start, how long loading the scripts may take

_FAILURES = (
    ReplyError,
    OSError,
    TimeoutError,
    ValueError,
    TypeError,
)  # the last two: a reply not as expected


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
        self._shas: dict[str, str] = {}
        self._queue: asyncio.Queue[tuple[list[str], list[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def connect(cls, url: str, *, prefix: str, timeout_s: float, lease_s: float) -> RedisStore:
        """A store on `url`; the connection is made at the first call."""
        return cls(Client(url), prefix=prefix, timeout_s=timeout_s, lease_s=lease_s)

    async def start(self) -> None:
        """Start the settler; load the scripts now, so that the first calls do not wait for it."""
        self._task = asyncio.get_running_loop().create_task(self._settle_forever())
        try:
            async with asyncio.timeout(STARTUP_S):
                for script in (ADMIT, SETTLE, READ):
                    await self._load(script)
        except _FAILURES as exc:  # not fatal: calls follow `on_store_error` until the store answers
            self._failed("start", exc)

    async def admit(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Verdict:
        if time.monotonic() < self._pause_until:
            raise StoreError("the store failed a moment ago")
        keys = [self._marker(call_id), *(c.key for c in counters)]
        args: list[Any] = [bucket(now), oldest_bucket(now), int(now), self.lease_s, self.lease_s, call_id]
        for c, amount in zip(counters, amounts, strict=True):
            args += (c.kind.value, c.limit, amount, c.slot)
        reply = await self._call("admit", ADMIT, keys, args)
        refused, retry = int(reply[0]) - 1, int(reply[1])
        used = tuple(int(u) for u in reply[2:])
        return Verdict(used, refused, bucket_leaves(retry) - now if retry >= 0 else None)

    def settle(self, call_id: str, counters: Sequence[Counter], deltas: Sequence[int], now: float) -> None:
        keys, args = [self._marker(call_id)], [oldest_bucket(now), call_id]
        for charge, delta in zip(counters, deltas, strict=True):
            if delta or charge.kind is Kind.CONCURRENT:
                keys.append(charge.key)
                args += (charge.kind.value, delta, charge.slot)
        if self._queue.qsize() >= QUEUE_MAX:
            self._queue.get_nowait()
            self.dropped += 1
            self.on_error("settle_dropped")
        self._queue.put_nowait((keys, args))

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        keys = [c.key for c in counters]
        reply = await self._call(
            "read", READ, keys, [oldest_bucket(now), int(now), *(c.kind.value for c in counters)]
        )
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

    async def _call(self, operation: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run `script` within the timeout; StoreError (counted by the caller) when that fails."""
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._eval(script, keys, args)
        except _FAILURES as exc:
            self._failed(operation, exc)
            raise StoreError(str(exc)) from exc
        self._failing_since = None
        return reply

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._shas.get(script) or await self._load(script)
        try:
            return await self.client.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # the store restarted and forgot its scripts
        return await self.client.execute("EVALSHA", await self._load(script), len(keys), *keys, *args)

    async def _load(self, script: str) -> str:
        sha = self._shas[script] = bytes(await self.client.execute("SCRIPT", "LOAD", script)).decode()
        return sha

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
            await self._send(batch)
            for _ in batch:
                self._queue.task_done()

    async def _send(self, batch: list[tuple[list[str], list[Any]]]) -> None:
        wait = 0.05
        while True:
            try:
                async with asyncio.timeout(max(self.timeout_s, 1.0)):  # off the request path: more time
                    await self._pipeline(batch)
            except _FAILURES as exc:
                self._failed("settle", exc)
                self.on_error("settle")
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
                continue
            self._failing_since = None
            self.settled += len(batch)
            return

    async def _pipeline(self, batch: list[tuple[list[str], list[Any]]]) -> None:
        sha = self._shas.get(SETTLE) or await self._load(SETTLE)
        for attempt in range(2):
            commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in batch]
            errors = [r for r in await self.client.pipeline(commands) if isinstance(r, ReplyError)]
            if not errors:
                return
            if attempt or not str(errors[0]).startswith("NOSCRIPT"):
                raise errors[0]
            sha = await self._load(SETTLE)  # the store restarted and forgot its scripts: send the batch again
