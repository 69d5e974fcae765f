"""Token ids to text as they come, with stop strings: what a client may be sent after each token.

Decoding token by token does not give text piece by piece: a character can span several tokens
(half of it decodes to U+FFFD until the rest arrives), and a stop string can span tokens too. Text is
held back while it ends in an unfinished character or in the beginning of a stop string, and released
once it cannot be either. A streamed answer is the concatenation of the pieces, and a non-streamed
answer is built from the same pieces, so the two are equal by construction.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one sequence's generated tokens, released piece by piece."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = ""  # text already released
        self.stopped = False  # a stop string was found; nothing after it is ever released

    def push(self, token: int) -> str:
        """Add a token; return the text that can be released now (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._release(text[:cut])
        return self._release(text[: len(text) - self._held(text)])

    def flush(self) -> str:
        """At the end of the sequence: the text held back so far (nothing after a stop string)."""
        if self.stopped:
            return ""
        return self._release(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        # Decoding a longer sequence almost always extends the shorter one's text; where it does not
        # (a tokenizer that rewrites earlier text), the released part cannot be taken back, so only
        # what extends it is sent.
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece = text[len(self.sent):]
        self.sent = text
        return piece

    def _stop_at(self, text: str) -> int | None:
        """Where the first stop string starts in the text not yet released (None when none does)."""
        if not self.stop:
            return None
        start = max(0, len(self.sent) - max(len(s) for s in self.stop))
        found = [pos for pos in (text.find(s, start) for s in self.stop) if pos >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        """How many characters at the end of `text` must wait for the next token."""
        held = 0
        if text.endswith(REPLACEMENT):
            held = len(text) - len(text.rstrip(REPLACEMENT))
        for s in self.stop:
            for size in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:size]):
                    held = max(held, size)
                    break
        return held
