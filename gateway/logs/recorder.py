"""The log recorder: every record at once to stdout and the spool; closed chunks shipped in the background.

The request path only builds a record and appends it to a file: it never waits on S3 and never fails
because of logging. A record that cannot be built is counted, reported and replaced by a minimal one
carrying the error, so no call is ever left without its records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.calls import Call
from gateway.logs.records import RecordBuilder, iso
from gateway.logs.spool import Spool
from gateway.metrics import Metrics
from gateway.scrub import Scrubber

if TYPE_CHECKING:
    from gateway.logs.uploader import Uploader

log = logging.getLogger("gateway.logs")
MAX_BACKOFF_S = 300.0


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
        self._last_full_warning = 0.0

    def request(self, call: Call) -> None:
        try:
            lines = [self._serialize(record) for record in self.builder.request(call)]
        except Exception as exc:
            lines = [self._serialize(self._failed_record(call, "request", exc))]
        for line in lines:
            self._write(line)

    def response(self, call: Call) -> None:
        try:
            line = self._serialize(self.builder.response(call, time.time()))
        except Exception as exc:
            line = self._serialize(self._failed_record(call, "response", exc))
        self._write(line)

    def _serialize(self, record: dict[str, Any]) -> bytes:
        return self.scrubber.line(orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)) + b"\n"

    def _failed_record(self, call: Call, kind: str, exc: Exception) -> dict[str, Any]:
        self.failed += 1
        self.metrics.log_record_failures.inc()
        log.error("could not build the %s record of %s: %s", kind, call.request_id, type(exc).__name__)
        return {
            "timestamp": iso(time.time()),
            "type": kind,
            "request_id": call.request_id,
            "session_id": call.session_id,
            "provider": call.provider,
            "model": call.model,
            "status": call.status,
            "error": f"record could not be built: {type(exc).__name__}",
        }

    def _write(self, line: bytes) -> None:
        self.written += 1
        self.metrics.log_records.inc()
        if self.stdout:
            try:
                os.write(1, line)
            except OSError:
                self.stdout = False
                log.error("stdout is gone; records continue to the spool only")
        if not self.spool.write(line, time.time()):
            self.metrics.log_records_not_spooled.inc()
            self._warn_full()

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._last_full_warning > 60:
            self._last_full_warning = now
            log.error(
                "LOG SPOOL FULL (%d bytes pending, limit %d): records go to stdout only until uploads "
                "free space; %d records not spooled so far",
                self.spool.pending_bytes,
                self.spool.max_bytes,
                self.spool.not_spooled,
            )

    async def run(self, tick_s: float) -> None:
        """Forever: close the chunk when due, then upload closed chunks (with backoff on failure)."""
        backoff, next_try = 0.0, 0.0
        while True:
            await asyncio.sleep(tick_s)
            self.spool.rotate_if_due(time.time())
            self.spool.refresh()
            self.metrics.log_spool_bytes.set(self.spool.pending_bytes)
            if self.uploader is None or time.monotonic() < next_try:
                continue
            if await self.upload():
                backoff = 0.0
            else:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                next_try = time.monotonic() + backoff

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
        """Close the current chunk and upload everything left, within `timeout_s`."""
        self.spool.close_current()
        if self.uploader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.upload()
            await self.uploader.close()

    def health(self) -> dict[str, Any]:
        chunks = self.spool.closed_chunks()
        return {
            "enabled": True,
            "capture": self.builder.settings.capture,
            "spool_dir": str(self.spool.root),
            "destination": self.uploader.target.describe() if self.uploader else "stdout and spool only",
            "records_written": self.written,
            "records_failed": self.failed,
            "records_uploaded": self.uploaded_records,
            "records_not_spooled": self.spool.not_spooled,
            "chunks_pending": len(chunks),
            "bytes_pending": self.spool.pending_bytes,
            "spool_full": self.spool.full,
            "last_upload": iso(self.last_upload) if self.last_upload else None,
            "last_error": self.last_error,
        }
