"""The log recorder: records to stdout and the spool in batches; closed chunks shipped in the background.

A request record waits for the next turn of the event loop, where it is built, scrubbed and written with
every other record of that turn, in one write to stdout and one to the spool: nothing about a record
happens between a client's request and the upstream request. A response record is written when its call
is over (with whatever was queued), so a `kill -9` loses no call a client saw complete. It never waits on
S3 and never fails because of logging. A field that cannot be built or written as JSON is mended or dropped
and named in the record's `record_errors`; a spool that cannot be written sends records to stdout only, is
reported, and is tried again a second later. The background task outlives its own errors; `close()` runs
every step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.calls import Call
from gateway.logs.records import DUMP_OPTIONS, RecordBuilder, head, iso
from gateway.logs.spool import Spool, describe_error
from gateway.metrics import Metrics
from gateway.scrub import Scrubber

if TYPE_CHECKING:
    from gateway.logs.uploader import Uploader

log = logging.getLogger("gateway.logs")
MAX_BACKOFF_S = 300.0
MAX_TASK_PAUSE_S = 60.0  # the longest the background task rests after its own steps failed
WARN_EVERY_S = 60.0
MAX_DEPTH = 200  # nesting kept when a record is mended; orjson refuses anything past 254 levels
TOO_DEEP = "[unserializable: nested too deep]"


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
        self.metrics = metrics
        self.uploader = uploader
        self.stdout = stdout
        self.written = 0
        self.failed = 0
        self.uploaded_records = 0
        self.last_upload: float | None = None
        self.last_error: str | None = None
        self.task_errors = 0
        self.task_error: str | None = None  # the background task's last failure, until a round runs clean
        self._spool_down = False
        self._last_warning = 0.0
        self._pending: list[tuple[Call, str]] = []
        self._flush_scheduled = False

    def request(self, call: Call) -> None:
        """Queue the call's request record (and any new system prompt); never raises."""
        self._queue(call, "request")

    def response(self, call: Call) -> None:
        """Write the call's response record now (with whatever is queued); never raises.

        It is written before a whole answer leaves (and right after a stream's last byte): a record left
        for a later loop turn is lost to a `kill -9` that comes after the client saw its call complete.
        """
        self._pending.append((call, "response"))
        self.flush()

    def _queue(self, call: Call, kind: str) -> None:
        self._pending.append((call, kind))
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): write at once
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Build, scrub and write every queued record: one write to stdout and one to the spool."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        lines = [line for call, kind in pending for line in self._lines(call, kind)]
        try:
            batch = self.scrubber.line(b"".join(lines))
        except Exception as exc:  # a scrubber bug must not cost the records: scrub them one by one
            log.error("could not scrub a batch of records: %s", type(exc).__name__)
            batch = b"".join(self._scrub_one(line) for line in lines)
        self._write(batch, len(lines))

    def _lines(self, call: Call, kind: str) -> list[bytes]:
        try:
            records = (
                self.builder.request(call)
                if kind == "request"
                else [self.builder.response(call, call.wall_end)]
            )
        except Exception as exc:  # a bug in the builder: the call still gets a record
            records = [self._failed_record(call, kind, exc)]
        lines = []
        for record in records:
            try:
                lines.append(dumps(record) + b"\n")
            except Exception as exc:
                lines.append(dumps(self._failed_record(call, kind, exc)) + b"\n")
        return lines

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
        self.written += count
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
            "records_written": self.written,
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


def dumps(record: dict[str, Any]) -> bytes:
    """The record as JSON; a value orjson refuses is repaired or replaced, and named in `record_errors`."""
    try:
        return orjson.dumps(record, default=str, option=DUMP_OPTIONS)
    except Exception:
        pass  # the slow path below is for the rare record carrying bytes no JSON writer accepts
    kept: dict[str, Any] = {}
    errors = [str(e) for e in record.get("record_errors") or ()]
    for name, value in record.items():
        if name == "record_errors":
            continue
        try:
            orjson.dumps(value, default=str, option=DUMP_OPTIONS)
            kept[name] = value
        except Exception:
            kept[name] = _repaired(value)
            errors += [] if name in errors else [name]
    kept["record_errors"] = errors
    return orjson.dumps(kept, default=str, option=DUMP_OPTIONS)


def _repaired(value: Any) -> Any:
    """`value` with invalid text mended and nesting cut at MAX_DEPTH; a marker when even that fails."""
    try:
        fixed = _mend(value, 0)
        orjson.dumps(fixed, default=str, option=DUMP_OPTIONS)
    except Exception as exc:
        return f"[unserializable: {type(exc).__name__}]"
    return fixed


def _mend(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, dict):
        return {(_valid_text(k) if isinstance(k, str) else k): _mend(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mend(v, depth + 1) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # past 64 bits: orjson writes no such integer
    return value


def _valid_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates (undecodable bytes kept by surrogateescape) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")
    return text


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (a pipe may take a large batch in several writes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
