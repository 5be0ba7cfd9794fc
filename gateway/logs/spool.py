"""The on-disk spool: records appended at once to a chunk file laid out exactly as the bucket.

    <spool>/<YYYY-MM-DD>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl.open   the chunk being written (flock held)
    <spool>/<YYYY-MM-DD>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl        closed, waiting for upload

A chunk is closed when it is older than the flush interval, larger than the chunk limit, or when the UTC
date changes (so a chunk never spans two date folders). Each writer holds an exclusive `flock` on its open
chunk; the kernel drops it when the process dies, which is how a restarted gateway (or a sibling worker)
tells a dead writer's leftover chunk from a live one and closes it for upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

OPEN_SUFFIX = ".open"


def chunk_name(ts: float, host: str, pid: int) -> str:
    """`<YYYY-MM-DD>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl` for a chunk whose first record is at `ts`."""
    moment = datetime.fromtimestamp(ts, UTC)
    return f"{moment:%Y-%m-%d}/{moment:%H-%M-%S}-{host}-{pid}-{secrets.token_hex(4)}.jsonl"


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Spool:
    """Appends lines to the current chunk and closes chunks when due."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_age_s: float,
        chunk_max_bytes: int,
        max_bytes: int,
        host: str,
        pid: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.chunk_max_bytes = chunk_max_bytes
        self.max_bytes = max_bytes
        self.host = host.replace("/", "_").replace("-", "_") or "host"
        self.pid = pid or os.getpid()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._deadline = 0.0
        self._size = 0
        self.pending_bytes = self._measure()
        self.full = False
        self.not_spooled = 0

    def write(self, line: bytes, ts: float) -> bool:
        """Append one line; False (and `full` set) when the spool has no room left for it."""
        if self.pending_bytes + len(line) > self.max_bytes:
            self.full = True
            self.not_spooled += 1
            return False
        self.full = False
        if self._fd is None or self._due(ts) or self._size >= self.chunk_max_bytes:
            self._open(ts)
        assert self._fd is not None
        os.write(self._fd, line)
        self._size += len(line)
        self.pending_bytes += len(line)
        return True

    def _due(self, now: float) -> bool:
        return now >= self._deadline

    def _open(self, ts: float) -> None:
        self.close_current()
        name = chunk_name(ts, self.host, self.pid)
        path = self.root / (name + OPEN_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try_lock(fd)  # a fresh name: nobody else holds it
        self._fd, self._path, self._opened, self._size = fd, path, ts, 0
        midnight = (ts // 86400 + 1) * 86400  # the next UTC date boundary
        self._deadline = min(ts + self.max_age_s, midnight)

    def rotate_if_due(self, now: float) -> None:
        """Close the current chunk when it has aged past the flush interval (or the date changed)."""
        if self._fd is not None and self._due(now):
            self.close_current()

    def close_current(self) -> Path | None:
        """Close the chunk being written, making it ready for upload; an empty one is removed."""
        if self._fd is None or self._path is None:
            return None
        fd, path = self._fd, self._path
        self._fd = self._path = None
        closed = path.with_name(path.name.removesuffix(OPEN_SUFFIX))
        if self._size:
            os.rename(path, closed)
        else:
            path.unlink(missing_ok=True)
        os.close(
            fd
        )  # after the rename, so no other process can take the lock while it still has the old name
        return closed if self._size else None

    def recover(self) -> int:
        """Close the open chunks of writers that died (their lock is gone); return how many."""
        recovered = 0
        for path in sorted(self.root.glob(f"*/*.jsonl{OPEN_SUFFIX}")):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if try_lock(fd):
                    if path.stat().st_size:
                        os.rename(path, path.with_name(path.name.removesuffix(OPEN_SUFFIX)))
                    else:
                        path.unlink()
                    recovered += 1
            finally:
                os.close(fd)
        return recovered

    def closed_chunks(self) -> list[Path]:
        """Chunks ready for upload, oldest first."""
        return sorted(self.root.glob("*/*.jsonl"))

    def forget(self, size: int) -> None:
        """Account for an uploaded (deleted) chunk of `size` bytes."""
        self.pending_bytes = max(0, self.pending_bytes - size)

    def refresh(self) -> None:
        """Re-measure the spool from disk (other workers write and upload into it too)."""
        self.pending_bytes = self._measure()

    def _measure(self) -> int:
        total = 0
        for path in self.root.glob("*/*.jsonl*"):
            with contextlib.suppress(FileNotFoundError):  # uploaded meanwhile
                total += path.stat().st_size
        return total

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self._opened if self._fd is not None else 0.0
