"""Request ids: 128 random bits in hex, drawn from the OS a page at a time instead of one syscall per call."""

from __future__ import annotations

import os

_BATCH = 256  # ids per `os.urandom` call


class _Pool:
    __slots__ = ("at", "hex")

    def __init__(self) -> None:
        self.hex = ""
        self.at = 0

    def reset(self) -> None:
        """Forget the drawn bits: a forked worker must not hand out its parent's ids."""
        self.hex, self.at = "", 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.reset)


def request_id() -> str:
    """A fresh id of 32 hex digits, as unpredictable as `os.urandom(16).hex()`."""
    pool = _pool
    if pool.at >= len(pool.hex):
        pool.hex, pool.at = os.urandom(16 * _BATCH).hex(), 0
    at = pool.at
    pool.at = at + 32
    return pool.hex[at : at + 32]
