"""The on-disk spool: records appended at once to a chunk file laid out exactly as the bucket.

    <spool>/<YYYY-MM-DD>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl.open   the chunk being written (flock held)
    <spool>/<YYYY-MM-DD>/<HH-MM-SS>-<host>-<pid>-<rand>.jsonl        closed, waiting for upload

A chunk is closed when it is older than the flush interval, larger than the chunk limit, or when the UTC
date changes (so a chunk never spans two date folders). Each writer holds an exclusive `flock` on its open
chunk; the kernel drops it when the process dies, which is how a restarted gateway (or a sibling worker)
tells a dead writer's leftover chunk from a live one and closes it for upload.

A disk that fails (full, read-only, I/O errors, the folder removed) makes `write` raise once and then refuse
quietly until `RETRY_S` has passed, when the next write tries again. An open chunk unlinked under us (an
operator or a cleanup job removed the folder) still holds its records behind our descriptor, and takes the
ones written after: at the next tick (`rotate_if_due`), or when the chunk is closed, they are all read back
and re-written into a fresh chunk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

OPEN_SUFFIX = ".open"
RETRY_S = 1.0  # after a failed write, how long the spool is left alone before the next write tries again

log = logging.getLogger("gateway.logs")


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


def describe_error(exc: BaseException) -> str:
    """`ENOSPC: No space left on device`, or the type and where it was raised: never the message, which
    may quote a record."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, 'OSError')}: {exc.strerror}"
    frames = traceback.extract_tb(exc.__traceback__)
    return type(exc).__name__ + (
        f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    )


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
        self.error: str | None = None  # the last write's failure, until a write succeeds again
        self.errors = 0
        self._retry_at = 0.0
        # The one seam for faults no unprivileged test can make a real disk produce (EIO).
        self.write_fd: Callable[[int, memoryview], int] = os.write

    def write(self, line: bytes, ts: float, count: int = 1) -> bool:
        """Append `count` whole lines; False when full or resting after a failure; a failure raises."""
        if self.pending_bytes + len(line) > self.max_bytes:
            self.full = True
            self.not_spooled += count
            return False
        self.full = False
        if self.error is not None and time.monotonic() < self._retry_at:
            self.not_spooled += count
            return False
        try:
            self._append(line, ts)
        except Exception as exc:
            self.error, self._retry_at = describe_error(exc), time.monotonic() + RETRY_S
            self.errors += 1
            self.not_spooled += count
            raise
        self.error = None
        self.pending_bytes += len(line)
        return True

    def _append(self, line: bytes, ts: float) -> None:
        # Whether the open chunk was unlinked is asked at each tick and before a chunk is closed, not here:
        # what is appended to an unlinked chunk stays behind its descriptor, and is salvaged with the rest.
        if self._fd is None or self._due(ts) or self._size >= self.chunk_max_bytes:
            self._open(ts)
        assert self._fd is not None
        self._append_all(self._fd, line, self._size)
        self._size += len(line)

    def _append_all(self, fd: int, data: bytes, size: int) -> None:
        """Append all of `data` to a file of `size` bytes; on failure cut it back, so no half line stays."""
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                written = self.write_fd(fd, view[done:] if done else view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
        except OSError:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                    os.lseek(fd, size, os.SEEK_SET)  # the next write goes where the cut file ends
            raise

    def _due(self, now: float) -> bool:
        return now >= self._deadline

    def _unlinked(self) -> bool:
        return self._fd is not None and os.fstat(self._fd).st_nlink == 0

    def _create(self, ts: float) -> tuple[int, Path]:
        path = self.root / (chunk_name(ts, self.host, self.pid) + OPEN_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)  # also brings back a removed spool folder
        # Written at the descriptor's own position, which only this writer moves: O_APPEND would make ext4
        # take a slower path, more than doubling the cost of each write.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)  # readable: see `_salvage`
        try_lock(fd)  # a fresh name: nobody else holds it
        return fd, path

    def _open(self, ts: float) -> None:
        self.close_current()
        self._fd, self._path = self._create(ts)
        self._opened, self._size = ts, 0
        midnight = (ts // 86400 + 1) * 86400  # the next UTC date boundary
        self._deadline = min(ts + self.max_age_s, midnight)

    def _salvage(self) -> None:
        """Re-write the records of the open chunk, unlinked under us, into a fresh chunk of the same date."""
        assert self._fd is not None
        old = self._fd
        data = _read_all_at(old)
        fd, path = self._create(self._opened)
        try:
            self._append_all(fd, data, 0)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise  # the old descriptor still holds the records: the next try starts again from it
        os.close(old)
        log.warning("the open log chunk was removed from disk; its %d bytes were re-written", len(data))
        self._fd, self._path, self._size = fd, path, len(data)

    def rotate_if_due(self, now: float) -> None:
        """Re-write an unlinked open chunk; close the chunk when it has aged past the flush interval."""
        if self._fd is not None and self._due(now):
            self.close_current()
        elif self._unlinked():
            self._salvage()

    def close_current(self) -> Path | None:
        """Close the chunk being written, making it ready for upload; an empty one is removed."""
        if self._fd is None or self._path is None:
            return None
        if self._size and self._unlinked():
            self._salvage()
        closed = self._path.with_name(self._path.name.removesuffix(OPEN_SUFFIX))
        if self._size:
            try:
                os.rename(self._path, closed)
            except FileNotFoundError:  # moved away by hand (it still has a name: not ours to re-write)
                log.warning("the open log chunk %s was moved away; leaving it where it went", self._path)
        else:
            self._path.unlink(missing_ok=True)
        fd, size = self._fd, self._size
        self._fd = self._path = None
        os.close(
            fd
        )  # after the rename, so no other process can take the lock while it still has the old name
        return closed if size else None

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


def _read_all_at(fd: int) -> bytes:
    """Everything in the file behind `fd`, read by offset (the descriptor's own position is not ours)."""
    parts, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)
