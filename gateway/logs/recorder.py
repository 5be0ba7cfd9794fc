"""The log recorder: records to stdout and the spool in batches; closed chunks shipped in the background.

A record waits for the next turn of the event loop, where it is built, scrubbed and written with every other
record queued in that turn, in one write to stdout and one to the spool (at once when 512 wait, or when no
loop runs): nothing about a record happens between a client's request and the upstream request. Whoever
must know its records are on disk awaits `written()`: the proxy does, before a whole answer leaves, so a
`kill -9` loses no non-stream call a client saw complete; a stream's response record is written at the turn
after its handler ends, microseconds after its last byte, unless thousands of streams end at once on a busy
core: their handlers then wake a slice per turn, after the streams still going (`gateway.http1.pacer`), and
their records follow (in the benchmark's 8,000 streams ending within 400 ms, about 0.3 s after `[DONE]` at
the median, under 0.8 s at most). A batch of request records alone, which nobody waits for, is built
then but kept for the next write (another call's answer), at most `HOLD_S` later: under load that halves the
writes, each of which costs more than a record. It never waits on S3 and never fails because of logging. A
field that cannot be built or written as JSON is mended or dropped and named in the record's
`record_errors`; a spool that cannot be written sends records to stdout only, is reported, and is tried
again a second later. The background task outlives its own errors; `close()` runs every step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Final

from gateway.calls import Call
from gateway.logs.fields import iso
from gateway.logs.lines import Batch
from gateway.logs.records import RecordBuilder, head
from gateway.logs.spool import Spool, describe_error
from gateway.metrics import Metrics
from gateway.scrub import Scrubber

if TYPE_CHECKING:
    from gateway.logs.uploader import Uploader

log: Final = logging.getLogger("gateway.logs")
MAX_BACKOFF_S: Final = 300.0
MAX_TASK_PAUSE_S: Final = 60.0  # the longest the background task rests after its own steps failed
WARN_EVERY_S: Final = 60.0
MAX_PENDING: Final = 512  # records queued in one turn of the loop: written then, without waiting for its end
# Chosen texts (model names, sessions, questions...) found free of any trace of a secret are remembered, so
# that a batch repeating them need not search them again: at most this many, of at most this many characters.
KNOWN_CLEAN: Final = 4096
KNOWN_CLEAN_CHARS: Final = 512
HOLD_S: Final = 0.02  # the longest a batch of request records alone waits for the next write to take it along
HOLD_MAX_BYTES: Final = 1 << 20  # and the most such batches keep before they are written anyway


class LogRecorder:
    """Writes records; `run()` closes due chunks and uploads them, backing off while S3 fails."""

    def __init__(
        self,
        builder: RecordBuilder,
        spool: Spool,
        scrubber: Scrubber,
        metrics: Metrics,
        *,
        uploader: Uploader | None = None,
        stdout: bool = True,
    ) -> None:
        self.builder = builder
        self.spool = spool
        self.scrubber = scrubber
        builder.numbers_searched = builder.numbers_searched or scrubber.numeric
        self.metrics = metrics
        self.uploader = uploader
        self.stdout = stdout
        self.records_written = 0
        self.failed = 0
        self.uploaded_records = 0
        self.last_upload: float | None = None
        self.last_error: str | None = None
        self.task_errors = 0
        self.task_error: str | None = None  # the background task's last failure, until a round runs clean
        self._spool_down = False
        self._last_warning = 0.0
        self._pending: list[tuple[Call, str]] = []
        self._awaited = False  # someone waits for the batch queued
        self._flush_scheduled = False
        self._held: list[bytes] = []  # built request records, kept for the next write (see `_hold`)
        self._held_count = self._held_bytes = 0
        self._hold_timer: asyncio.TimerHandle | None = None
        self._clean: set[str | None] = set()  # chosen texts the scrubber found no trace of a secret in

    def request(self, call: Call) -> None:
        """Queue the call's request record (and any new system prompt); never raises."""
        self._queue(call, "request")

    def response(self, call: Call) -> None:
        """Queue the call's response record; never raises. `written()` says when it is on disk."""
        self._queue(call, "response")

    def written(self, now: bool = False) -> Awaitable[None] | None:
        """Something to await until the records queued so far are written (or failed to be); None if none are.

        Queued records are written by a callback the loop was handed (`call_soon`) when the first of them
        came, and a loop runs its callbacks in the order it was handed them: a task that yields to the loop
        now resumes after that write. So the wait is one turn of the loop for the caller's own task, without a
        future to make, resolve and wake it through (that cost 6 % of what recording a call costs). A
        caller cancelled while waiting leaves every other caller's wait alone. `now` writes the batch at once
        instead (its caller knows nothing else will join it), and there is nothing to wait for.
        """
        if not self._pending:  # (nor are there any without a running loop: each was written at once)
            return None
        if now:
            self.flush()
            return None
        self._awaited = True  # request records alone are then not kept for the next write
        return _NEXT_TURN

    def _queue(self, call: Call, kind: str) -> None:
        """Add a record to the queue, written at the next turn of the loop; at once when MAX_PENDING wait or
        no loop runs."""
        self._pending.append((call, kind))
        if len(self._pending) >= MAX_PENDING:
            self.flush()
        elif not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): write at once
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Build, scrub and write the queued records: one write to stdout, one to the spool; never raises."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        awaited, self._awaited = self._awaited, False
        try:
            if pending:  # request records alone, and nobody waiting: they may ride with the next write
                self._write_batch(pending, hold=not awaited and all(kind == "request" for _, kind in pending))
        except Exception as exc:  # a bug past every guard below: said loudly (and no caller waits on it)
            self.failed += len(pending)
            self.metrics.log_record_failures.inc(len(pending))
            log.error("could not write %d queued records: %s", len(pending), describe_error(exc))

    def _write_batch(self, pending: list[tuple[Call, str]], hold: bool = False) -> None:
        """Build, scrub and write `pending`; with `hold`, the batch may be kept for the next write instead
        (see `_hold`)."""
        batch = Batch()
        builder = self.builder
        request, response, records, responses = (
            builder.request,
            builder.response,
            batch.records,
            batch.responses,
        )
        for call, kind in pending:
            try:
                if kind == "response":  # the most common record first, kept in its kind's list at once
                    record = response(call, call.wall_end)
                    records.append(record)
                    responses.append(record)
                    continue
                made = request(call)
            except Exception as exc:  # a builder bug, or no JSON to be had: the call still gets a record
                batch.add(self._failed_record(call, kind, exc), None)
                continue
            if len(made) > 1:
                for prompt in made[:-1]:  # the system prompts the request is the first to name
                    batch.add(prompt, None)  # searched whole
            batch.add(made[-1], batch.requests)
        lines = batch.lines()
        try:
            searched, fresh = batch.searched(lines, builder, self._clean)
            data, clean = self.scrubber.batch(b"".join(lines), searched)
        except Exception as exc:  # a scrubber bug must not cost the records: scrub them one by one
            log.error("could not scrub a batch of records: %s", type(exc).__name__)
            data = b"".join(self._scrub_one(line) for line in lines)
        else:
            if clean and fresh:
                self._remember_clean(fresh)
        if hold and self._hold(data, len(lines)):
            return
        self._write(data, len(lines))

    def _hold(self, data: bytes, count: int) -> bool:
        """Keep these records for the next write, which is at most HOLD_S away; False when no loop runs (or
        HOLD_MAX_BYTES are kept already): they are to be written now."""
        if self._held_bytes + len(data) > HOLD_MAX_BYTES:
            return False
        if self._hold_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            self._hold_timer = loop.call_later(HOLD_S, self.write_held)
        self._held.append(data)
        self._held_count += count
        self._held_bytes += len(data)
        return True

    def write_held(self) -> None:
        """Write the records kept for the next write, now; never raises."""
        self._hold_timer = None
        if self._held:
            try:
                self._write(b"", 0)
            except Exception as exc:  # as `flush` says it
                log.error("could not write %d kept records: %s", self._held_count, describe_error(exc))

    def _remember_clean(self, texts: set[str | None]) -> None:
        """Remember `texts`, searched and found clean: a later batch holding them searches only the others."""
        if len(self._clean) + len(texts) > KNOWN_CLEAN:  # they are the clients': what they take is bounded
            self._clean.clear()
        self._clean.update(t for t in texts if t is None or len(t) <= KNOWN_CLEAN_CHARS)

    def _scrub_one(self, line: bytes) -> bytes:
        try:
            return self.scrubber.line(line)
        except Exception:
            return b""  # unscrubbable: dropped rather than written with a secret in it

    def _failed_record(self, call: Call, kind: str, exc: Exception) -> dict[str, Any]:
        self.failed += 1
        self.metrics.log_record_failures.inc()
        log.error("could not build the %s record of %s: %s", kind, call.request_id, type(exc).__name__)
        error = f"record could not be built: {type(exc).__name__}"
        return {**head(call, kind, time.time(), call.model), "status": call.status, "error": error}

    def _write(self, batch: bytes, count: int) -> None:
        """Write `batch` (`count` records) after any kept ones: once to stdout, once to the spool."""
        if self._held:
            batch, count = b"".join([*self._held, batch]), count + self._held_count
            self._held, self._held_count, self._held_bytes = [], 0, 0
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = None
        self.records_written += count
        self.metrics.log_records.inc(count)
        if self.stdout:
            try:
                _write_all(1, batch)
            except OSError:
                self.stdout = False
                log.error("stdout is gone; records continue to the spool only")
        if not self._spool(batch, count):
            self.metrics.log_records_not_spooled.inc(count)
            self._warn_not_spooled()

    def _spool(self, batch: bytes, count: int) -> bool:
        try:
            spooled = self.spool.write(batch, time.time(), count)
        except Exception:  # the disk failed (or a bug): the spool keeps the error and rests a second
            self.metrics.log_spool_errors.inc()
            self._spool_down = True
            return False
        if spooled and self._spool_down:
            self._spool_down = False
            log.warning("the log spool %s is writable again", self.spool.root)
        return spooled

    def _warn_not_spooled(self) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY_S:
            return
        self._last_warning = now
        spool = self.spool
        why = (
            f"FULL ({spool.pending_bytes} bytes pending, limit {spool.max_bytes}; until uploads free space)"
            if spool.full
            else f"UNWRITABLE ({spool.error}; tried again every second)"
        )
        log.error("LOG SPOOL %s: records go to stdout only; %d not spooled so far", why, spool.not_spooled)

    async def run(self, tick_s: float) -> None:
        """Forever: close the chunk when due, then upload closed chunks; failing steps are retried."""
        backoff, next_try, pause = 0.0, 0.0, 0.0
        while True:
            await asyncio.sleep(tick_s + pause)
            clean = self._housekeep()
            pause = 0.0 if clean else min(MAX_TASK_PAUSE_S, max(1.0, pause * 2))
            if self.uploader is None or time.monotonic() < next_try:
                continue
            if await self.upload():
                backoff = 0.0
            else:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                next_try = time.monotonic() + backoff

    def _housekeep(self) -> bool:
        """Rotate, re-measure, report: each step on its own, so one failing does not stop the others."""
        now = time.time()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("rotation", lambda: self.spool.rotate_if_due(now)),
            ("spool measure", self.spool.refresh),
            ("spool metric", lambda: self.metrics.log_spool_bytes.set(self.spool.pending_bytes)),
        ]
        clean = all([self._step(what, step) for what, step in steps])
        if clean:
            self.task_error = None
        return clean

    def _step(self, what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except Exception as exc:
            self._task_failed(what, exc)
            return False
        return True

    def _task_failed(self, what: str, exc: Exception) -> None:
        self.task_errors += 1
        self.task_error = f"{what}: {describe_error(exc)}"
        self.metrics.log_task_errors.inc()
        log.error("log %s failed, tried again later: %s", what, self.task_error)

    async def upload(self) -> bool:
        """Upload what is closed; False (and the error kept) when S3 refused or could not be reached."""
        if self.uploader is None:
            return True
        try:
            shipped = await self.uploader.upload_pending()
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.metrics.log_upload_failures.inc()
            log.warning("log upload failed, chunks stay on disk: %s", self.last_error)
            return False
        if shipped:
            self.uploaded_records += shipped
            self.metrics.log_records_uploaded.inc(shipped)
            self.last_upload = time.time()
        return True

    async def close(self, timeout_s: float) -> None:
        """Close the current chunk and upload everything left, within `timeout_s`; every step runs."""
        self._step("last records", self.flush)
        self._step("last kept records", self.write_held)
        self._step("last rotation", self.spool.close_current)
        if self.uploader is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.upload()
        except TimeoutError:
            log.warning("the last upload took over %g s; the chunks left go at the next start", timeout_s)
        try:
            await self.uploader.close()
        except Exception as exc:
            self._task_failed("closing the S3 client", exc)

    def health(self) -> dict[str, Any]:
        try:
            chunks: int | None = len(self.spool.closed_chunks())
        except OSError:
            chunks = None
        broken = self.spool.error is not None
        return {
            "enabled": True,
            "capture": self.builder.settings.capture,
            "spool_dir": str(self.spool.root),
            "destination": self.uploader.target.describe() if self.uploader else "stdout and spool only",
            "records_written": self.records_written,
            "records_failed": self.failed,
            "records_uploaded": self.uploaded_records,
            "records_not_spooled": self.spool.not_spooled,
            "chunks_pending": chunks,
            "bytes_pending": self.spool.pending_bytes,
            "spool_full": self.spool.full,
            "spool_error": self.spool.error,
            "spool_errors": self.spool.errors,
            "task_error": self.task_error,
            "task_errors": self.task_errors,
            "degraded": self.spool.full or broken or self.task_error is not None,
            "last_upload": iso(self.last_upload) if self.last_upload else None,
            "last_error": self.last_error,
        }


class _NextTurn:
    """Awaited, resumes its task at the loop's next turn: `asyncio.sleep(0)`, without its coroutine."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield  # a bare yield: the task hands itself back to the loop, behind every callback handed it before


_NEXT_TURN: Final = _NextTurn()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (a pipe may take a large batch in several writes)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]
