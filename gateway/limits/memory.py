"""The in-process store: counters in this process's memory, exact for one worker, lost at restart.

Each counter is a cell that knows its kind: a sliding minute's buckets, a day's or month's total, or the
calls holding a concurrency slot. Only the current day and month of a counter are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.limits.store import Counter, Kind, Verdict, need
from gateway.limits.windows import oldest_bucket, sliding_retry_after


class _Sliding:
    """One sliding minute: its buckets, oldest first (time only moves on), and their running total."""

    __slots__ = ("buckets", "first", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.first = 0  # the oldest bucket held, so that a call with nothing to drop checks one number
        self.total = 0

    def used(self, oldest: int) -> int:
        """The total once the buckets older than `oldest` have left."""
        if self.first < oldest and self.buckets:
            buckets = self.buckets
            for b in [b for b in buckets if b < oldest]:
                self.total -= buckets.pop(b)
            self.first = min(buckets, default=oldest)
        return self.total

    def charge(self, oldest: int, slot: int, amount: int, call_id: str) -> int:
        """Add `amount` to bucket `slot`; the total before it."""
        before = self.used(oldest)
        buckets = self.buckets
        if not buckets:
            self.first = slot
        buckets[slot] = buckets.get(slot, 0) + amount
        self.total = before + amount
        return before

    def undo(self, slot: int, amount: int, call_id: str) -> None:
        self.buckets[slot] -= amount
        self.total -= amount

    def correct(self, slot: int, delta: int, call_id: str, oldest: int) -> None:
        """Settle a reservation made in bucket `slot`, if that bucket is still counted."""
        if slot >= oldest and slot in self.buckets:
            delta = max(delta, -self.buckets[slot])
            self.buckets[slot] += delta
            self.total += delta


class _Calendar:
    """One day's or month's total."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0

    def used(self, oldest: int) -> int:
        return self.total

    def charge(self, oldest: int, slot: int, amount: int, call_id: str) -> int:
        before = self.total
        self.total = before + amount
        return before

    def undo(self, slot: int, amount: int, call_id: str) -> None:
        self.total -= amount

    def correct(self, slot: int, delta: int, call_id: str, oldest: int) -> None:
        self.total = max(0, self.total + delta)


class _Concurrent:
    """The calls holding a slot."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: set[str] = set()

    def used(self, oldest: int) -> int:
        return len(self.calls)

    def charge(self, oldest: int, slot: int, amount: int, call_id: str) -> int:
        before = len(self.calls)
        self.calls.add(call_id)
        return before

    def undo(self, slot: int, amount: int, call_id: str) -> None:
        self.calls.discard(call_id)

    def correct(self, slot: int, delta: int, call_id: str, oldest: int) -> None:
        self.calls.discard(call_id)


_Cell = _Sliding | _Calendar | _Concurrent
_CELLS: dict[Kind, type[_Sliding] | type[_Calendar] | type[_Concurrent]] = {
    Kind.SLIDING: _Sliding,
    Kind.CALENDAR: _Calendar,
    Kind.CONCURRENT: _Concurrent,
}


class MemoryStore:
    """Counters in this process: exact for one worker, lost at restart."""

    name = "memory"

    def __init__(self) -> None:
        self.on_error: Callable[[str], None] = lambda operation: None
        self._cells: dict[str, _Cell] = {}
        self._windows: dict[str, str] = {}  # a calendar counter's key for its current day or month

    async def start(self) -> None:
        pass

    async def admit(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Verdict:
        # Each counter is charged as it is checked, and the charges undone if one refuses: one step per
        # counter on the path every call takes, two only on the refusal's.
        oldest, cells, used = oldest_bucket(now), self._cells, []
        for i, counter in enumerate(counters):
            cell, amount = cells.get(counter.key) or self._new(counter), amounts[i]
            before = cell.charge(oldest, counter.slot, amount, call_id)
            used.append(before)
            if before + (amount if amount > 0 else 1) > counter.limit:  # need(), inline
                return self._refuse(call_id, counters, amounts, used, now)
        return Verdict(tuple(used))

    def settle(self, call_id: str, counters: Sequence[Counter], deltas: Sequence[int], now: float) -> None:
        oldest = oldest_bucket(now)
        for counter, delta in zip(counters, deltas, strict=True):
            if delta or counter.kind is Kind.CONCURRENT:  # a request's count never needs correcting
                cell = self._cells.get(counter.key)  # a day or month gone since is gone: nothing to correct
                if cell is not None:
                    cell.correct(counter.slot, delta, call_id, oldest)

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        oldest = oldest_bucket(now)
        return tuple(cell.used(oldest) if (cell := self._cells.get(c.key)) else 0 for c in counters)

    def health(self) -> dict[str, object]:
        return {"store": self.name, "degraded": False}

    async def close(self) -> None:
        pass

    def _new(self, counter: Counter) -> _Cell:
        cell = self._cells[counter.key] = _CELLS[counter.kind]()
        if counter.kind is Kind.CALENDAR:  # a new day or month: the last one is done with
            base = counter.key.rpartition(":")[0]
            self._cells.pop(self._windows.get(base, ""), None)
            self._windows[base] = counter.key
        return cell

    def _refuse(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], used: list[int], now: float
    ) -> Verdict:
        """Undo the charges made so far; the verdict naming the last counter charged as the refusal."""
        refused = len(used) - 1
        for counter, amount in zip(counters[: refused + 1], amounts, strict=False):
            self._cells[counter.key].undo(counter.slot, amount, call_id)
        oldest = oldest_bucket(now)
        rest = [cell.used(oldest) if (cell := self._cells.get(c.key)) else 0 for c in counters[refused + 1 :]]
        cell, counter = self._cells[counters[refused].key], counters[refused]
        wait = None
        if isinstance(cell, _Sliding):
            wait = sliding_retry_after(cell.buckets.items(), need(amounts[refused]), counter.limit, now)
        return Verdict((*used, *rest), refused, wait)
