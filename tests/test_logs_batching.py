"""Records go out in batches, one per turn of the event loop, and `written()` tells when they are on disk.

A whole answer waits on `written()` before it leaves, so the batch must come at once, hold every call of the
turn in one write to stdout and one to the spool, and resolve its waiters whatever came of the write.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_logs_hardening import a_call, new_recorder, pairs, printed, record_both, spooled

from gateway.calls import Answer, Call
from gateway.logs import spool as spool_module
from gateway.logs.recorder import (
    HOLD_MAX_BYTES,
    HOLD_S,
    KNOWN_CLEAN,
    KNOWN_CLEAN_CHARS,
    MAX_PENDING,
    LogRecorder,
)
from gateway.scrub import REDACTED, Scrubber


def count_writes(recorder: LogRecorder, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the writes to the spool and to stdout."""
    writes = {"spool": 0, "stdout": 0}
    write = os.write

    def to_spool(fd: int, data: memoryview) -> int:
        writes["spool"] += 1
        return write(fd, data)

    def counted(fd: int, data: bytes) -> int:
        # os.write as the recorder looks it up at each write (compiled or not): stdout's are counted
        writes["stdout"] += fd == 1
        return write(fd, data)

    recorder.spool.write_fd = to_spool
    monkeypatch.setattr(os, "write", counted)
    return writes


class Unreadable(Call):
    """A call whose answer cannot be read: what a bug in building its response record looks like."""

    __slots__ = ()

    @property
    def answer(self) -> Answer:
        raise RuntimeError("a bug")


def both(*rids: str) -> dict[str, set[str]]:
    return {rid: {"request", "response"} for rid in rids}


async def test_the_calls_of_one_turn_share_one_write_and_their_waiters_see_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    recorder = new_recorder(tmp_path)
    writes = count_writes(recorder, monkeypatch)
    assert recorder.written() is None  # nothing queued: nothing to wait for
    calls = [a_call() for _ in range(3)]
    waiters = []
    for call in calls:
        recorder.request(call)
        recorder.response(call)
        waiters.append(recorder.written())
    assert spooled(tmp_path) == [] and writes == {"spool": 0, "stdout": 0}  # queued, not yet written
    assert all(w is not None for w in waiters)
    for waiter in waiters:  # awaited in turn, in this task: the first wait is the one turn the write takes
        await waiter  # type: ignore[misc]
        assert writes == {"spool": 1, "stdout": 1}
    assert pairs(spooled(tmp_path)) == both(*(c.request_id for c in calls))
    assert pairs(printed(capfdbinary.readouterr().out)) == both(*(c.request_id for c in calls))
    assert recorder.written() is None and recorder.health()["records_written"] == 6


async def test_records_are_written_in_the_next_turn_without_anyone_waiting(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)
    call = a_call()
    recorder.request(call)
    recorder.response(call)
    await asyncio.sleep(0)  # one turn of the loop
    assert pairs(spooled(tmp_path)) == both(call.request_id)


async def test_request_records_alone_ride_with_the_next_write_or_go_within_the_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = new_recorder(tmp_path)
    writes = count_writes(recorder, monkeypatch)
    streaming, answered = a_call(), a_call()
    recorder.request(streaming)  # a call under way: nobody waits for its request record
    await asyncio.sleep(0)
    assert writes == {"spool": 0, "stdout": 0} and recorder.health()["records_written"] == 0  # built, kept
    recorder.request(answered)
    recorder.response(answered)
    waiter = recorder.written()
    assert waiter is not None
    await waiter  # the answer's write takes the kept record along: one write
    assert writes == {"spool": 1, "stdout": 1}
    assert pairs(spooled(tmp_path)) == {streaming.request_id: {"request"}, **both(answered.request_id)}
    later = a_call()
    recorder.request(later)
    await asyncio.sleep(0)
    assert pairs(spooled(tmp_path)).get(later.request_id) is None
    started = time.monotonic()
    while pairs(spooled(tmp_path)).get(later.request_id) is None:  # nothing else comes: the hold ends it
        assert time.monotonic() - started < HOLD_S + 1.0
        await asyncio.sleep(0.002)
    assert time.monotonic() - started >= HOLD_S / 2 and writes == {"spool": 2, "stdout": 2}


async def test_kept_request_records_are_written_at_close_and_never_grow_past_their_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = new_recorder(tmp_path)
    writes = count_writes(recorder, monkeypatch)
    kept = a_call()
    recorder.request(kept)
    await asyncio.sleep(0)
    assert spooled(tmp_path) == []
    await recorder.close(1.0)  # shutdown: nothing kept is left behind
    assert pairs(spooled(tmp_path)) == {kept.request_id: {"request"}}
    recorder = new_recorder(tmp_path / "big")
    writes = count_writes(recorder, monkeypatch)
    big = {"model": "m", "messages": [{"role": "user", "content": "q" * 60_000}]}
    calls = [a_call(big) for _ in range(2 * HOLD_MAX_BYTES // 60_000)]
    for call in calls:  # one batch per turn, each over 60 KB: the bound has them written before the hold ends
        recorder.request(call)
        await asyncio.sleep(0)
    assert writes["spool"] >= 1 and recorder.health()["records_written"] >= HOLD_MAX_BYTES // 61_000
    await recorder.close(1.0)
    assert len(pairs(spooled(tmp_path / "big"))) == len(calls)
    recorder = new_recorder(tmp_path / "one")
    writes = count_writes(recorder, monkeypatch)
    for call in calls:  # all in one turn: one batch over the bound, written in its turn
        recorder.request(call)
    await asyncio.sleep(0)
    assert writes["spool"] == 1 and len(pairs(spooled(tmp_path / "one"))) == len(calls)


async def test_a_full_queue_is_written_at_once(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)
    calls = [a_call() for _ in range(MAX_PENDING // 2)]
    for call in calls:
        recorder.request(call)
        recorder.response(call)
    assert len(spooled(tmp_path)) == MAX_PENDING  # within the turn that queued them
    assert recorder.written() is None
    late = a_call()
    recorder.response(late)
    assert len(spooled(tmp_path)) == MAX_PENDING  # the next one waits for the turn again
    await asyncio.sleep(0)
    assert len(spooled(tmp_path)) == MAX_PENDING + 1


async def test_a_caller_waiting_on_request_records_alone_finds_them_written_not_kept(tmp_path: Path) -> None:
    """Request records alone are kept for the next write (`HOLD_S`), unless someone waits for them."""
    recorder = new_recorder(tmp_path)
    call = a_call()
    recorder.request(call)
    waiter = recorder.written()
    assert waiter is not None
    await waiter
    assert pairs(spooled(tmp_path)) == {call.request_id: {"request"}}


async def test_a_caller_alone_has_its_batch_written_at_once_and_nothing_to_wait_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = new_recorder(tmp_path)
    writes = count_writes(recorder, monkeypatch)
    earlier, call = a_call(), a_call()
    recorder.request(earlier)
    waiter = recorder.written()  # a caller that waits for the turn
    recorder.request(call)
    recorder.response(call)
    assert recorder.written(now=True) is None  # the one call in flight: written within this turn
    assert writes == {"spool": 1, "stdout": 1}
    assert pairs(spooled(tmp_path)) == {earlier.request_id: {"request"}, **both(call.request_id)}
    assert waiter is not None
    await waiter
    assert writes == {"spool": 1, "stdout": 1}  # the turn's own flush finds nothing left to write


def test_without_a_running_loop_each_record_is_written_at_once(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)
    call = a_call()
    recorder.request(call)
    recorder.response(call)
    assert pairs(spooled(tmp_path)) == both(call.request_id) and recorder.written() is None


async def test_a_caller_cancelled_while_waiting_cancels_only_its_own_wait(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)
    calls = [a_call(), a_call()]

    async def finish(call: Any) -> None:
        recorder.request(call)
        recorder.response(call)
        waiter = recorder.written()
        assert waiter is not None
        await waiter

    first, second = (asyncio.create_task(finish(call)) for call in calls)

    async def cancel_first() -> None:  # runs in the same turn, while both wait for the batch
        first.cancel()

    await asyncio.wait([first, second, asyncio.create_task(cancel_first())])
    assert first.cancelled() and second.result() is None
    assert pairs(spooled(tmp_path)) == both(*(c.request_id for c in calls))


async def test_waiters_are_released_when_the_spool_fails(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)

    def failing(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    recorder.spool.write_fd = failing
    recorder.response(a_call())
    waiter = recorder.written()
    assert waiter is not None
    await asyncio.wait_for(waiter, 5)
    assert recorder.health()["spool_error"] == "EIO: Input/output error"


async def test_waiters_are_released_and_records_kept_when_building_or_scrubbing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = new_recorder(tmp_path)

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(recorder.scrubber, "batch", broken)
    call = a_call()
    call.__class__ = Unreadable  # its response record cannot be built
    recorder.request(call)
    recorder.response(call)
    waiter = recorder.written()
    assert waiter is not None
    await asyncio.wait_for(waiter, 5)
    found = spooled(tmp_path)  # scrubbed one by one, the failed record in the place of the response
    assert pairs(found) == both(call.request_id) and recorder.failed == 1
    assert found[1]["error"] == "record could not be built: RuntimeError"


async def test_a_batch_that_cannot_be_written_at_all_still_releases_its_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = new_recorder(tmp_path)

    write = os.write

    def broken(fd: int, data: bytes) -> int:
        if fd == 1:  # stdout, whose failures no guard expects (only OSError)
            raise RuntimeError("a bug past every guard")
        return write(fd, data)

    monkeypatch.setattr(os, "write", broken)
    recorder.response(a_call())
    waiter = recorder.written()
    assert waiter is not None
    await asyncio.wait_for(waiter, 5)
    assert recorder.failed == 1 and "could not write 1 queued records: RuntimeError" in caplog.text


def test_records_written_after_the_chunk_was_removed_are_salvaged_at_the_tick(tmp_path: Path) -> None:
    recorder = new_recorder(tmp_path)
    first = record_both(recorder, a_call())
    [chunk] = tmp_path.glob("*/*.jsonl.open")
    chunk.unlink()
    later = [record_both(recorder, a_call()) for _ in range(3)]  # appended behind the descriptor only
    assert spooled(tmp_path) == []
    assert recorder._housekeep()  # the background task's tick
    assert pairs(spooled(tmp_path)) == both(first, *later)
    assert len(spooled(tmp_path)) == 8


def test_a_write_asks_the_disk_nothing_but_to_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = new_recorder(tmp_path)
    record_both(recorder, a_call())  # the chunk is open
    asked: list[int] = []
    fstat = os.fstat
    monkeypatch.setattr(spool_module.os, "fstat", lambda fd: asked.append(fd) or fstat(fd))
    for _ in range(5):
        record_both(recorder, a_call())
    assert asked == []
    recorder.spool.rotate_if_due(time.time())
    assert len(asked) == 1  # once a tick


SECRET = "sk-live-Secret123456"


def secret_recorder(root: Path) -> LogRecorder:
    recorder = new_recorder(root)
    recorder.scrubber = Scrubber([SECRET])
    recorder.stdout = False
    return recorder


def test_texts_found_clean_are_searched_once_and_a_secret_beside_them_still_found(tmp_path: Path) -> None:
    recorder = secret_recorder(tmp_path)
    record_both(recorder, a_call(session_id="session-clean"))
    assert {"session-clean", "What is 2+3?", "kimi"} <= recorder._clean  # remembered as holding no trace
    # The same texts again, now beside a secret: they are not searched, the secret is found all the same.
    call = a_call(session_id="session-clean", origin=f"https://{SECRET}.example")
    record_both(recorder, call)
    written = b"".join(path.read_bytes() for path in tmp_path.glob("*/*.jsonl*"))
    assert SECRET.encode() not in written and written.count(REDACTED.encode()) == 2  # both records' origin


def test_texts_beside_a_secret_are_not_remembered_and_lookalikes_are(tmp_path: Path) -> None:
    recorder = secret_recorder(tmp_path)
    # Each record is a batch of its own here (no loop runs): session and origin are in both.
    record_both(recorder, a_call(session_id="my token", origin=f"https://{SECRET}.example"))  # the secret
    record_both(recorder, a_call(session_id="Bearer abcdefghijklmnop1234", origin="https://o.example"))
    assert recorder._clean == set()  # a batch holding either remembers none of its texts
    # An anchor or a trigger with nothing around it to replace: clean, remembered, not searched again.
    record_both(recorder, a_call(session_id="my token", origin="https://Secret123456.example"))
    assert {"my token", "https://Secret123456.example", "kimi"} <= recorder._clean
    record_both(recorder, a_call(session_id="s" * (KNOWN_CLEAN_CHARS + 1)))  # clean, but too long to keep
    assert "s" * (KNOWN_CLEAN_CHARS + 1) not in recorder._clean
    written = b"".join(path.read_bytes() for path in tmp_path.glob("*/*.jsonl*"))
    assert SECRET.encode() not in written and b"abcdefghijklmnop1234" not in written
    assert written.count(b"https://Secret123456.example") == 2 and written.count(b'"my token"') == 4


def test_the_texts_remembered_are_bounded(tmp_path: Path) -> None:
    recorder = secret_recorder(tmp_path)
    for n in range(KNOWN_CLEAN // 4 + 10):
        record_both(recorder, a_call(session_id=f"session-{n}", origin=f"https://app-{n}", client=f"c{n}"))
    assert 0 < len(recorder._clean) <= KNOWN_CLEAN
