"""The in-process store: counters in this process's memory, exact for one worker, lost at restart.

Each counter is a cell holding its total: a day's or a month's, the calls in flight, or a sliding minute's,
which also keeps what each of its seconds added. Only the current day and month of a counter are kept.

A plan binds its counters once a second (`bind`): their cells are looked up and the sliding minutes moved on
to that second then, so that an admission only checks and adds to totals, and a settlement corrects only
what needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from gateway.limits.store import Counter, Kind, Verdict, need
from gateway.limits.windows import oldest_bucket, sliding_retry_after


class _Cell:
    """A day's or a month's total, or the calls in flight (a settlement frees a call's slot with -1).

    Every cell has a sliding minute's shape: its total, the bucket of the current second (`slot`), and what
    the buckets before it hold (`base`: the current bucket holds the rest). This one has a single bucket that
    never moves on (slot 0, base 0), so that an admission, and a settlement in the bucket it charged, treat
    every kind alike, adding to the total only, with no call or branch per counter.
    """

    __slots__ = ("base", "slot", "total")

    def __init__(self) -> None:
        self.total = self.base = self.slot = 0

    def turn(self, slot: int, oldest: int) -> int:
        """Ready for the charges of second `slot`: the bucket they go to, this cell's only one."""
        return self.slot

    def used(self, oldest: int) -> int:
        return self.total

    def correct(self, slot: int, delta: int, now: float) -> None:
        """A correction `settle` could not apply in place: this one takes the total below zero."""
        self.total = max(0, self.total + delta)

    def buckets(self) -> list[tuple[int, int]]:
        return []


class _Sliding(_Cell):
    """One sliding minute: its current bucket and the buckets before it (`earlier`, which `base` sums)."""

    __slots__ = ("earlier",)

    def __init__(self) -> None:
        super().__init__()
        self.earlier: dict[int, int] = {}

    def turn(self, slot: int, oldest: int) -> int:
        """Move on to bucket `slot` (never back: a clock set back charges the newest bucket), dropping the
        buckets older than `oldest`; the bucket charges now go to."""
        if slot > self.slot:
            if self.slot:  # kept even when it holds nothing: a call that reserved 0 may still use some
                self.earlier[self.slot] = self.total - self.base
            self.slot, self.base = slot, self.total
        self.used(oldest)
        return self.slot

    def used(self, oldest: int) -> int:
        """The total once the buckets older than `oldest` have left."""
        earlier = self.earlier
        for b in [b for b in earlier if b < oldest]:
            amount = earlier.pop(b)
            self.total -= amount
            self.base -= amount
        if self.slot < oldest:
            self.total = self.base
        return self.total

    def correct(self, slot: int, delta: int, now: float) -> None:
        """Settle a reservation made in an earlier bucket, if it is still counted; never below zero."""
        current = slot == self.slot
        held = self.total - self.base if current else self.earlier.get(slot)
        if held is None or slot < oldest_bucket(now):
            return
        delta = max(delta, -held)
        if not current:
            self.earlier[slot] = held + delta
            self.base += delta
        self.total += delta

    def buckets(self) -> list[tuple[int, int]]:
        return [*self.earlier.items(), (self.slot, self.total - self.base)]


class Bound(NamedTuple):
    """A plan's counters of one second, with their cells: (cell, limit, slot charged, index) of each."""

    counters: tuple[Counter, ...]
    cells: tuple[tuple[_Cell, int, int, int], ...]


class MemoryStore:
    """Counters in this process: exact for one worker, lost at restart."""

    name = "memory"

    def __init__(self) -> None:
        self.on_error: Callable[[str], None] = lambda operation: None
        self._cells: dict[str, _Cell] = {}
        self._windows: dict[str, str] = {}  # a calendar counter's key for its current day or month

    async def start(self) -> None:
        pass

    def bind(self, counters: Sequence[Counter], now: float) -> Bound:
        """`counters` with their cells, ready for the admissions of the second `now` falls in."""
        oldest, cells = oldest_bucket(now), []
        for i, counter in enumerate(counters):
            cell = self._cells.get(counter.key) or self._new(counter)
            cells.append((cell, counter.limit, cell.turn(counter.slot, oldest), i))
        return Bound(tuple(counters), tuple(cells))

    async def admit(self, call_id: str, bound: Bound, amounts: Sequence[int], now: float) -> Verdict:
        outcome = self.admit_now(bound, amounts, now)
        return Verdict(tuple(outcome)) if isinstance(outcome, list) else outcome

    def admit_now(self, bound: Bound, amounts: Sequence[int], now: float) -> list[int] | Verdict:
        """`admit` answered at once (its caller need not suspend): what each counter held before the call
        when every one admitted it, else the verdict naming the one that refused."""
        # Checked and charged counter by counter, the charges made undone if one refuses: one step per
        # counter on the path every call takes. (The index is bound too: zip() or enumerate() would cost as
        # much as a counter's charge.)
        used: list[int] = []
        for cell, limit, _, i in bound.cells:
            amount, before = amounts[i], cell.total
            if before + (amount if amount > 0 else 1) > limit:  # need(), inline
                return self._refuse(bound, amounts, used, now)
            cell.total = before + amount
            used.append(before)
        return used

    def settle(self, call_id: str, bound: Bound, deltas: Sequence[int], now: float) -> None:
        self.settle_now(bound, deltas, lambda: now)

    def settle_now(self, bound: Bound, deltas: Sequence[int], clock: Callable[[], float]) -> None:
        """`settle`, the moment read only by a correction that needs it (one outside the current bucket)."""
        for cell, _, slot, i in bound.cells:
            if delta := deltas[i]:  # a request's count never needs correcting
                if slot == cell.slot and cell.total + delta >= cell.base:  # in the bucket still current
                    cell.total += delta
                else:
                    cell.correct(slot, delta, clock())

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        oldest = oldest_bucket(now)
        return tuple(cell.used(oldest) if (cell := self._cells.get(c.key)) else 0 for c in counters)

    def health(self) -> dict[str, object]:
        return {"store": self.name, "degraded": False}

    async def close(self) -> None:
        pass

    def _new(self, counter: Counter) -> _Cell:
        cell = self._cells[counter.key] = _Sliding() if counter.kind is Kind.SLIDING else _Cell()
        if counter.kind is Kind.CALENDAR:  # a new day or month: the last one is done with
            base = counter.key.rpartition(":")[0]
            self._cells.pop(self._windows.get(base, ""), None)
            self._windows[base] = counter.key
        return cell

    def _refuse(self, bound: Bound, amounts: Sequence[int], used: list[int], now: float) -> Verdict:
        """Undo the charges made so far; the verdict naming the counter that refused."""
        refused = len(used)
        for (cell, _, _, _), amount in zip(bound.cells[:refused], amounts, strict=False):
            cell.total -= amount
        oldest = oldest_bucket(now)
        rest = [cell.used(oldest) for cell, *_ in bound.cells[refused:]]
        cell, counter = bound.cells[refused][0], bound.counters[refused]
        wait = None
        if counter.kind is Kind.SLIDING:
            wait = sliding_retry_after(cell.buckets(), need(amounts[refused]), counter.limit, now)
        return Verdict((*used, *rest), refused, wait)
