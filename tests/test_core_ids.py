"""Request ids: drawn from the OS in batches, never repeated, and never shared with a forked worker."""

from __future__ import annotations

import multiprocessing
import re

from gateway.ids import request_id


def _child_ids(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([request_id() for _ in range(3)])


def test_ids_are_32_hex_digits_and_never_repeat_across_batches() -> None:
    ids = [request_id() for _ in range(2000)]  # several batches of 256
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_ids() -> None:
    request_id()  # the parent holds a batch with ids still to hand out
    queue: multiprocessing.Queue[list[str]] = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_ids, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(30)
    from_parent = [request_id() for _ in range(3)]
    assert not set(from_child) & set(from_parent)
