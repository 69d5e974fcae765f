"""Long raw text as windows: every token of a document trained once, however long it is.

A document of n tokens becomes windows of at most `length` tokens. Each window after the first starts
with the last `max(1, overlap)` tokens of the one before, as context only: they were trained there, and
the first of them gives the window's first new token something to be predicted from (the first token
of a sequence has no prediction). So the tokens trained across the windows are exactly the document's
trained tokens after its first, each once; `tests/unit/test_windows.py` checks it on random lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunery.data.render import Rendered


@dataclass(frozen=True)
class WindowCount:
    """What splitting did to a set of documents (`tunery data check --method cpt` prints it)."""

    documents: int = 0
    longer: int = 0  # documents longer than one window
    windows: int = 0
    tokens: int = 0  # tokens of the documents
    trained: int = 0  # tokens that carry loss in some window (all but each document's first)
    dropped: int = 0  # tokens no window trains (with `long_texts: cut`)

    def __add__(self, other: "WindowCount") -> "WindowCount":
        return WindowCount(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.documents, self.longer, self.windows, self.tokens, self.trained, self.dropped)


def window_starts(n: int, length: int, overlap: int) -> list[int]:
    """Where each window of a document of `n` tokens starts."""
    stride = length - max(1, overlap)
    starts = [0]
    while starts[-1] + length < n:
        starts.append(starts[-1] + stride)
    return starts


def split_windows(row: Rendered, length: int, overlap: int) -> list[Rendered]:
    """`row` as windows of at most `length` tokens (just `row` when it fits)."""
    if len(row.ids) <= length:
        return [row]
    context = max(1, overlap)
    windows = []
    for k, start in enumerate(window_starts(len(row.ids), length, overlap)):
        ids = row.ids[start:start + length]
        trained = list(row.trained[start:start + length])
        if k:  # the repeated tokens were trained in the window before
            trained[:context] = [False] * context
        windows.append(Rendered(ids, trained, truncated=False, answer_cut=False))
    return windows


def count_windows(full_lengths: list[int], length: int, overlap: int, split: bool) -> WindowCount:
    """The `WindowCount` of documents of these token lengths, split or cut at `length`."""
    total = WindowCount()
    for n in full_lengths:
        over = n > length
        windows = len(window_starts(n, length, overlap)) if split else 1
        kept = n if split or not over else length
        total += WindowCount(1, int(over), windows, n, max(kept - 1, 0), n - kept)
    return total
