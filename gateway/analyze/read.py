"""Reading every source into DuckDB: list the chunks, stream their bytes into batches, parse the batches."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.analyze import s3
from gateway.analyze.batches import Batcher, ReadStats
from gateway.analyze.progress import Progress
from gateway.analyze.sources import LocalFile, Window, is_s3, local_files
from gateway.analyze.store import RecordTable

INGEST_BYTES = 2 * 1024 * 1024 * 1024  # parse this much at a time: fewer, larger DuckDB scans cost less CPU


class SourceError(Exception):
    """A source cannot be listed: it does not exist, or the bucket cannot be reached."""


def read_sources(
    sources: list[str],
    window: Window,
    table: RecordTable,
    temp_dir: Path,
    *,
    progress: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> ReadStats:
    """Read all chunks the sources name (within `window`'s date folders) into `table`."""
    started = time.monotonic()
    env = os.environ if env is None else env
    files, objects, client = _list(sources, window, env)
    bar = Progress(
        len(files) + len(objects),
        sum(f.size for f in files) + sum(o.size for o in objects),
        "reading",
        enabled=progress,
    )
    ingest = _Ingest(table)
    batcher = Batcher(temp_dir, ingest.add)
    for name, data in _chunks(files, objects, client, batcher.stats):
        batcher.add(name, data)
        bar.advance(len(data))
    batcher.flush()
    ingest.flush()
    bar.close()
    stats = batcher.stats
    stats.records = table.count()
    stats.seconds = time.monotonic() - started
    return stats


def _list(
    sources: list[str], window: Window, env: Mapping[str, str]
) -> tuple[list[LocalFile], list[s3.S3Object], Any]:
    files: dict[Path, LocalFile] = {}
    objects: dict[str, s3.S3Object] = {}
    client = None
    for source in sources:
        try:
            if is_s3(source):
                client = client or s3.make_client(env)
                objects.update((o.url, o) for o in s3.list_objects(client, source, window))
            else:
                files.update((Path(os.path.abspath(f.path)), f) for f in local_files(source, window))
        except (OSError, ValueError) as exc:
            raise SourceError(f"{source}: {exc}") from exc
        except Exception as exc:  # botocore's errors share no base class with the standard library's
            if type(exc).__module__.startswith(("botocore", "boto3", "urllib3")):
                raise SourceError(f"{source}: {exc}") from exc
            raise
    return list(files.values()), list(objects.values()), client


def _chunks(
    files: list[LocalFile], objects: list[s3.S3Object], client: Any, stats: ReadStats
) -> Iterator[tuple[str, bytes]]:
    for file in files:
        try:
            yield str(file.path), file.path.read_bytes()
        except OSError as exc:
            stats.unreadable.append(f"{file.path}: {exc.strerror or exc}")
    for obj, data in s3.fetch_objects(client, objects) if objects else ():
        if isinstance(data, OSError):
            stats.unreadable.append(f"{obj.url}: {data}")
        else:
            yield obj.url, data


class _Ingest:
    """Gathers batch files and parses them once enough have piled up, deleting them afterwards."""

    def __init__(self, table: RecordTable) -> None:
        self.table = table
        self.pending: list[Path] = []
        self.pending_bytes = 0

    def add(self, batch: Path) -> None:
        self.pending.append(batch)
        self.pending_bytes += batch.stat().st_size
        if self.pending_bytes >= INGEST_BYTES:
            self.flush()

    def flush(self) -> None:
        try:
            self.table.ingest(self.pending)
        finally:
            for path in self.pending:
                path.unlink(missing_ok=True)
            self.pending, self.pending_bytes = [], 0
