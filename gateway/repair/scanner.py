"""Finding tool-call markup in answer text that arrives in pieces, holding back only what may be markup.

Text passes on at once up to a `<` that may open a block. From there it is held: released as text as soon as
it cannot be an opener, or kept until the block's closer, then read (`dialects.parse_block`) and replaced by
its calls, or released whole as text when it is not a call to an offered tool. Whitespace after a repaired
block is held too, and dropped when another block or the end follows: it only separated the calls.

Everything is linear in the text received: each piece is searched once (a closer straddling two pieces is
found by re-searching only its length of the previous tail), and a block is joined and read once, when it
closes. A block that grows past `max_held` characters without closing is released as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.repair.dialects import CLOSERS, OPENERS, Parsed, parse_block
from gateway.repair.tools import ToolCatalog

MAX_HELD = 256 * 1024  # characters of one unclosed block held back before it is released as text
MAX_GAP = 256  # characters of whitespace after a block held back in case only more blocks follow
_LONGEST_OPENER = max(map(len, OPENERS))


@dataclass(slots=True)
class _Block:
    opener: str
    closer: str
    parts: list[str] = field(default_factory=list)
    size: int = 0

    def tail(self) -> str:
        """The last characters held, enough for a closer that straddles two pieces."""
        keep, out = len(self.closer) - 1, ""
        for part in reversed(self.parts):
            out = part[-keep:] + out
            if len(out) >= keep:
                break
        return out[-keep:]

    def text(self) -> str:
        return self.opener + "".join(self.parts)


@dataclass(slots=True)
class Scanned:
    """What one piece of text gave: text to pass on, and the blocks read as calls, in order."""

    text: str = ""
    blocks: list[Parsed] = field(default_factory=list)


class MarkupScanner:
    """Feeds on answer text; returns the text that may pass on and the tool-call blocks completed."""

    __slots__ = ("_block", "_gap", "_pending", "left_as_text", "max_held", "tools")

    def __init__(self, tools: ToolCatalog, max_held: int = MAX_HELD) -> None:
        self.tools = tools
        self.max_held = max_held
        self.left_as_text = 0  # blocks that opened but were released as text
        self._pending = ""  # a `<...` at the end of the text so far that may still become an opener
        self._block: _Block | None = None
        self._gap: list[str] | None = None  # whitespace after a repaired block; None: no block before it

    @property
    def holding(self) -> bool:
        """Whether some text is held back."""
        return bool(self._pending or self._block or self._gap)

    def feed(self, text: str) -> Scanned:
        """The text that may pass on now, and the blocks that closed, from the next piece of the answer."""
        out = Scanned()
        released: list[str] = []
        text, self._pending = self._pending + text, ""
        pos = 0
        while pos < len(text):
            if self._block is not None:
                pos = self._fill(text, pos, released, out)
                continue
            start = text.find("<", pos)
            if start < 0:
                self._emit(released, text[pos:])
                break
            self._emit(released, text[pos:start])
            pos = self._open(text, start, released)
        out.text = "".join(released)
        return out

    def finish(self) -> str:
        """The text still held when the answer ends: a partial opener or an unclosed block."""
        held = (self._block.text() if self._block else "") + self._pending
        if self._block:
            self.left_as_text += 1
        gap = "".join(self._gap or ()) if held else ""  # with nothing after it, the gap is dropped
        self._pending, self._block, self._gap = "", None, None
        return gap + held

    def _open(self, text: str, start: int, released: list[str]) -> int:
        """Enter a block at `start`, hold a possible opener cut off by the end, or pass the `<` on."""
        head = text[start : start + _LONGEST_OPENER]
        for opener in OPENERS:
            if head.startswith(opener):
                self._block = _Block(opener, CLOSERS[opener])
                return start + len(opener)
        if any(o.startswith(head) for o in OPENERS):  # only when `text` ends before an opener could
            self._pending = head
            return len(text)
        self._emit(released, "<")
        return start + 1

    def _fill(self, text: str, pos: int, released: list[str], out: Scanned) -> int:
        """Add text to the open block up to its closer; read it when it closes. Returns where text resumes."""
        block = self._block
        assert block is not None
        tail = block.tail()
        found = (tail + text[pos:]).find(block.closer)
        if found < 0:
            block.parts.append(text[pos:])
            block.size += len(text) - pos
            if block.size > self.max_held:
                self._release(released, block.text())
            return len(text)
        end = pos + found - len(tail)  # where the closer starts in `text`; may be before `pos`
        inner = "".join(block.parts)[: block.size + end - pos] if end < pos else "".join(block.parts)
        inner += text[pos:end] if end > pos else ""
        self._block = None
        parsed = parse_block(block.opener, inner, self.tools)
        if parsed is None:
            self._release(released, block.opener + inner + block.closer)
        else:
            self._gap = []  # whitespace since the last block only separated the two: dropped
            out.blocks.append(parsed)
        return end + len(block.closer)

    def _release(self, released: list[str], text: str) -> None:
        self._block = None
        self.left_as_text += 1
        self._emit(released, text)

    def _emit(self, released: list[str], text: str) -> None:
        """Pass text on, unless it is whitespace that may only separate repaired blocks."""
        if not text:
            return
        gap = self._gap
        if gap is not None and text.isspace() and sum(map(len, gap)) + len(text) <= MAX_GAP:
            gap.append(text)
            return
        if gap:
            released.extend(gap)
        self._gap = None
        released.append(text)
