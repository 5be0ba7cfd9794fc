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
        if self.first < oldest:
            self._drop(oldest)
        return self.total

    def charge(self, oldest: int, slot: int, amount: int, call_id: str) -> int:
        """Add `amount` to bucket `slot`; the total before it."""
        if self.first < oldest:  # at most once a second: the check is all most calls pay
            self._drop(oldest)
        before, buckets = self.total, self.buckets
        if slot in buckets:
            buckets[slot] += amount
        else:
            if not buckets:
                self.first = slot
            buckets[slot] = amount
        self.total = before + amount
        return before

    def _drop(self, oldest: int) -> None:
        buckets = self.buckets
        for b in [b for b in buckets if b < oldest]:
            self.total -= buckets.pop(b)
        self.first = min(buckets, default=oldest)

    def undo(self, slot: int, amount: int, call_id: str) -> None:
        self.buckets[slot] -= amount
        self.total -= amount

    def correct(self, slot: int, delta: int, call_id: str, oldest: int) -> None:
        """Settle a reservation made in bucket `slot`, if that bucket is still counted."""
        buckets = self.buckets
        if slot >= oldest and slot in buckets:
            held = buckets[slot]
            if delta < -held:  # never below zero
                delta = -held
            buckets[slot] = held + delta
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


_CONCURRENT = Kind.CONCURRENT
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
        outcome = self.admit_now(call_id, counters, amounts, now)
        return Verdict(tuple(outcome)) if isinstance(outcome, list) else outcome

    def admit_now(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> list[int] | Verdict:
        """`admit` answered at once (its caller need not suspend): what each counter held before the call
        when every one admitted it, else the verdict naming the one that refused."""
        # Each counter is charged as it is checked, and the charges undone if one refuses: one step per
        # counter on the path every call takes, two only on the refusal's. (Not zip(): on this path, making
        # one costs about as much as charging a counter.)
        oldest, cells, used = oldest_bucket(now), self._cells, []
        for i, counter in enumerate(counters):
            cell, amount = cells.get(counter.key) or self._new(counter), amounts[i]
            before = cell.charge(oldest, counter.slot, amount, call_id)
            used.append(before)
            if before + (amount if amount > 0 else 1) > counter.limit:  # need(), inline
                return self._refuse(call_id, counters, amounts, used, now)
        return used

    def settle(self, call_id: str, counters: Sequence[Counter], deltas: Sequence[int], now: float) -> None:
        oldest, cells = oldest_bucket(now), self._cells
        for i, counter in enumerate(counters):
            delta = deltas[i]
            if delta or counter.kind is _CONCURRENT:  # a request's count never needs correcting
                cell = cells.get(counter.key)  # a day or month gone since is gone: nothing to correct
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
