"""Request and response records: built per call, written to stdout and the spool, shipped to S3."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import LoggingSettings
from gateway.logs.prompts import MARKERS, PromptLedger
from gateway.logs.recorder import LogRecorder
from gateway.logs.records import RecordBuilder
from gateway.logs.spool import Spool, describe_error
from gateway.logs.uploader import S3Target
from gateway.prices import SHIPPED_PATH, load_prices
from gateway.scrub import Scrubber
from gateway.state import GATEWAY

log = logging.getLogger("gateway.logs")
UPLOAD_GRACE_S = 30.0  # on shutdown, how long the last upload may take


def recorder_context(
    env: Mapping[str, str], secrets: Iterable[str]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs the log recorder for the app's lifetime."""
    secrets = tuple(secrets)

    async def context(app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY]
        settings = gw.config.logging
        if not settings.enabled:
            yield
            return
        recorder = await open_recorder(settings, env, Scrubber(secrets), gw.metrics)
        gw.recorder = recorder
        task = asyncio.create_task(recorder.run(min(1.0, settings.flush_interval_s)))
        try:
            yield
        finally:
            try:
                await _stop(task)
            finally:  # the last chunk is closed and uploaded whatever became of the task
                await recorder.close(UPLOAD_GRACE_S)

    return context


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel the background task and wait for it; an error it died of is logged, not raised."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the background log task had stopped: %s", describe_error(exc))


async def open_recorder(
    settings: LoggingSettings, env: Mapping[str, str], scrubber: Scrubber, metrics: Any
) -> LogRecorder:
    """Build the recorder: recover a dead run's spool, connect to S3 when a bucket and credentials exist."""
    spool = Spool(
        env.get("LOG_SPOOL_DIR") or settings.spool_dir,
        max_age_s=settings.flush_interval_s,
        chunk_max_bytes=settings.chunk_max_bytes,
        max_bytes=settings.spool_max_bytes,
        host=socket.gethostname(),
    )
    if recovered := spool.recover():
        log.info("closed %d chunks left open by a previous run; they will be uploaded", recovered)
    uploader = None
    target = S3Target.from_env(env, settings.prefix)
    if target is None:
        log.info("logging to stdout and %s only: LOG_BUCKET is not set", spool.root)
    else:
        from gateway.logs.uploader import Uploader  # botocore is heavy: loaded only when there is a bucket

        uploader = Uploader(target, spool)
        if not await uploader.start():
            log.warning(
                "logging to stdout and %s only: no AWS credentials for %s", spool.root, target.describe()
            )
            uploader = None
        else:
            log.info(
                "logging to %s every %g s (spool %s)",
                target.describe(),
                settings.flush_interval_s,
                spool.root,
            )
    prices = load_prices(Path(settings.prices) if settings.prices else SHIPPED_PATH)
    # The workers share the spool folder, so they share the markers of the prompts already written.
    builder = RecordBuilder(settings, prices, PromptLedger(spool.root / MARKERS))
    return LogRecorder(builder, spool, scrubber, metrics, uploader=uploader, stdout=settings.stdout)
