"""Waking the readers of bodies that ended, a slice per turn of the event loop.

A reader woken at its body's end goes on to whatever follows it: for a relayed stream, the gateway's
handler returning, the call's records and metrics, the client's connection kept alive. Thousands of streams
ending within a few turns (a batch job's calls, started together) would otherwise wake thousands of readers
at once, and the loop would run all their work in one pass before it read any socket again: every stream
still going would have its next chunks held back by all of it. So at most `per_turn` readers wake in one
turn, and the rest in the turns after, in the order their bodies ended. The streams still going are relayed
between two slices (their chunks go out in the sockets' own callbacks, which wake no reader), and an end
that comes alone wakes its reader at once, as before.
"""

from __future__ import annotations

import asyncio
import collections

# Readers woken in one turn: their work comes to a millisecond or two, between two reads of the sockets.
PER_TURN = 32


class EndPacer:
    """Wakes the readers of ended bodies, at most `per_turn` of them in one turn of the event loop."""

    __slots__ = ("_queue", "_scheduled", "_woken", "per_turn")

    def __init__(self, per_turn: int = PER_TURN) -> None:
        self.per_turn = per_turn
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0  # readers woken at once since the last turn began
        self._scheduled = False

    def wake(self, waiter: asyncio.Future[None]) -> None:
        """Resolve `waiter` now, or, when `per_turn` were woken in this turn already, in a turn to come."""
        if self._woken < self.per_turn and not self._queue:
            self._woken += 1
            waiter.set_result(None)
        else:
            self._queue.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    @property
    def waiting(self) -> int:
        """Readers whose bodies ended, not woken yet."""
        return len(self._queue)

    def _turn(self) -> None:
        """A new turn: the next slice of waiting readers wakes, and the count starts again."""
        self._woken, queue = 0, self._queue
        while queue and self._woken < self.per_turn:
            waiter = queue.popleft()
            if not waiter.done():  # its reader was cancelled meanwhile (its client went away)
                waiter.set_result(None)
                self._woken += 1
        if queue or self._woken:  # the turn after this one starts the count again
            asyncio.get_running_loop().call_soon(self._turn)
        else:
            self._scheduled = False
