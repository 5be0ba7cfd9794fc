"""Concatenating many small chunks into a few large batch files for DuckDB, counting lines on the way.

DuckDB spends a millisecond or more per file it opens, and a busy gateway writes thousands of small
chunks a day; one batch file of tens of megabytes reads in the time of a handful of chunks. Counting
non-blank lines here, where the bytes pass anyway, is what lets malformed lines be counted at all:
skipped = lines - records DuckDB recognised. A file that is not plain JSONL (a `kubectl logs` snapshot)
is sifted down to its records first (`loglines`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from gateway.analyze.loglines import is_plain_jsonl, payload, records_only

BATCH_BYTES = 64 * 1024 * 1024


@dataclass
class ReadStats:
    """What reading saw, before any filter."""

    objects: int = 0
    bytes: int = 0
    lines: int = 0
    records: int = 0
    partial_chunks: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped_lines(self) -> int:
        """Lines that were not records: log lines, malformed or cut-off JSON, or of no known type."""
        return max(0, self.lines - self.records)


def count_lines(data: bytes) -> int:
    """Non-blank lines in `data`, counting an unterminated last line."""
    if data.startswith(b"\n") or b"\n\n" in data:  # rare: blank lines, which are not records
        return sum(1 for line in data.split(b"\n") if line.strip())
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def ends_partially(data: bytes) -> bool:
    """Whether the last line was cut off mid-write (no final newline and not a whole JSON value)."""
    if not data or data.endswith(b"\n"):
        return False
    last = data[data.rfind(b"\n") + 1 :]
    if not last.strip():
        return False
    try:
        orjson.loads(payload(last))
    except orjson.JSONDecodeError:
        return True
    return False


class Batcher:
    """Appends chunks to a batch file and hands each full batch to `on_batch`, which may delete it."""

    def __init__(
        self, folder: Path, on_batch: Callable[[Path], None], batch_bytes: int = BATCH_BYTES
    ) -> None:
        self.folder = folder
        self.on_batch = on_batch
        self.batch_bytes = batch_bytes
        self.stats = ReadStats()
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._size = 0

    def add(self, name: str, data: bytes) -> None:
        """Take one chunk's bytes."""
        self.stats.objects += 1
        self.stats.bytes += len(data)
        lines = count_lines(data)
        self.stats.lines += lines
        if ends_partially(data):
            self.stats.partial_chunks.append(name)
            # Dropped here, not left to DuckDB: after a value cut off mid-object its JSON reader goes on
            # into the next line, and would lose the next chunk's first record along with this one.
            data = data[: data.rfind(b"\n") + 1]
            lines -= 1
        if not is_plain_jsonl(data, lines):
            # `kubectl logs` output, or a line cut short mid-file: only the records go on, so that
            # `lines - records` still counts exactly the lines skipped.
            data = records_only(data)
        if self._file is None:
            # Closed by flush(); a `with` block cannot span the many add() calls that fill one batch.
            self._file = tempfile.NamedTemporaryFile(dir=self.folder, suffix=".jsonl", delete=False)  # noqa: SIM115
            self._size = 0
        self._file.write(data)
        if data and not data.endswith(b"\n"):
            # Without it a cut-off last line would swallow the next chunk's first record.
            self._file.write(b"\n")
        self._size += len(data)
        if self._size >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        """Hand over the batch being written, if any."""
        if self._file is None:
            return
        self._file.close()
        path = Path(self._file.name)
        self._file = None
        self.on_batch(path)
