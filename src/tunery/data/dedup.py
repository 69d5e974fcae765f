"""Exact and near duplicates among raw-text documents, found in seconds for thousands of documents.

- Exact: the same text after normalising whitespace and case (`normalise`).
- Near: MinHash (Broder 1997) over the set of word 5-gram shingles, with LSH banding (Indyk and
  Motwani 1998; Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets*, ch. 3). Two documents
  whose signatures agree on a share ``s`` of their 128 values have an estimated Jaccard similarity
  ``s``; they are near duplicates when ``s >= threshold`` (0.8 by default). Banding puts two
  documents in a common bucket, and so compares them at all, with probability ``1 - (1 - J**r)**b``
  (``b`` bands of ``r`` rows): 0.95 at J = 0.8 with 16 bands of 8, above 0.9999 at J = 0.9.

Everything is deterministic: words are hashed with BLAKE2b (not Python's per-process salted
``hash``), the permutations come from a fixed seed, and groups are listed in document order, so the
same corpus gives the same groups and the same kept documents in every run. Groups join documents
linked by a chain of near-duplicate pairs; the first document of a group is the one kept.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tunery.config import defaults
from tunery.data.messages import Example

NUM_PERM = 128
SHINGLE_WORDS = 5
NEAR_THRESHOLD = defaults.NEAR_DUPLICATE_THRESHOLD
_SEED = 0x74756E65  # fixed: the same permutations, so the same groups, in every run
# Odd multipliers that make a shingle's hash depend on the order of its words.
_SHINGLE_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


@dataclass(frozen=True)
class DuplicateGroup:
    """Indexes of documents that are duplicates of each other, in document order (the first one is
    kept). ``exact``: every member has the same normalised text; ``near``: the members are near
    duplicates, each standing for its own exact group if it has one."""

    kind: Literal["exact", "near"]
    members: tuple[int, ...]


def normalise(text: str) -> str:
    """Case folded, runs of whitespace made one space, ends stripped: what an exact duplicate shares."""
    return " ".join(text.casefold().split())


def _permutations() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    multipliers = rng.integers(0, 2**64, size=NUM_PERM, dtype=np.uint64, endpoint=False) | np.uint64(1)
    offsets = rng.integers(0, 2**64, size=NUM_PERM, dtype=np.uint64, endpoint=False)
    return multipliers, offsets


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit moves about half of the output bits."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class _Signer:
    """MinHash signatures, with a cache of word hashes shared by every document of a corpus."""

    def __init__(self):
        self.words: dict[str, int] = {}
        self.multipliers, self.offsets = _permutations()

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self.words
        for word in words:
            if word not in cache:
                digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                cache[word] = int.from_bytes(digest, "little")
        return np.array([cache[w] for w in words], dtype=np.uint64)

    def shingles(self, normalised: str) -> np.ndarray:
        """64-bit hashes of the word 5-grams (one shingle of all words for a shorter text)."""
        hashes = self._word_hashes(normalised.split())
        width = min(SHINGLE_WORDS, len(hashes))
        count = len(hashes) - width + 1
        combined = np.zeros(count, dtype=np.uint64)
        for offset in range(width):  # multiplication wraps modulo 2**64, as a hash should
            combined += hashes[offset:offset + count] * _SHINGLE_MULTIPLIERS[offset]
        return _mix(combined)

    def signature(self, normalised: str) -> np.ndarray:
        """NUM_PERM minima of multiply-shift hashes (the high 32 bits of ``a * x + b`` mod 2**64)."""
        shingles = self.shingles(normalised)
        permuted = (shingles[:, None] * self.multipliers[None, :] + self.offsets[None, :]) >> np.uint64(32)
        return permuted.min(axis=0).astype(np.uint32)  # the high 32 bits: 4 bytes a value suffice


def _bands(threshold: float) -> int:
    """Rows per band: the most (fewest candidate pairs) whose banding threshold ``(1/b)**(1/r)`` lies
    at least 0.05 below ``threshold``, so that pairs at the threshold are rarely missed."""
    for rows in (16, 8, 4, 2):
        if (rows / NUM_PERM) ** (1.0 / rows) <= threshold - 0.05:
            return rows
    return 1


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _link_bucket(members: list[int], signatures: np.ndarray, threshold: float, links: _UnionFind) -> None:
    """Join the near duplicates among documents that share a band. Each document is compared with the
    first document of each group met so far in this bucket, and only when it matches none of them with
    every earlier one: a bucket of a thousand templated pages costs a thousand comparisons, not a
    million."""
    heads: list[int] = []
    is_head: set[int] = set()
    for position, doc in enumerate(members):
        matched = False
        if heads:
            agree = (signatures[heads] == signatures[doc]).mean(axis=1)
            for head in np.asarray(heads)[agree >= threshold]:
                links.union(int(head), doc)
                matched = True
        if not matched:
            others = [m for m in members[:position] if m not in is_head]
            if others:
                agree = (signatures[others] == signatures[doc]).mean(axis=1)
                for other in np.asarray(others)[agree >= threshold]:
                    links.union(int(other), doc)
                    matched = True
        if not matched:
            heads.append(doc)
            is_head.add(doc)


def _near_links(texts: list[str], indexes: list[int], threshold: float) -> _UnionFind:
    """Near-duplicate links among ``texts[i]`` for ``i`` in ``indexes`` (positions in ``indexes``)."""
    signer = _Signer()
    # One normalised text at a time; the signatures (128 x 4 bytes per document) are all that is kept.
    signatures = np.zeros((len(indexes), NUM_PERM), dtype=np.uint32)
    for position, index in enumerate(indexes):
        signatures[position] = signer.signature(normalise(texts[index]))
    rows = _bands(threshold)
    links = _UnionFind(len(indexes))
    for start in range(0, NUM_PERM, rows):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for doc in range(len(indexes)):
            buckets[signatures[doc, start:start + rows].tobytes()].append(doc)
        for members in buckets.values():
            if len(members) > 1:
                _link_bucket(members, signatures, threshold, links)
    return links


def duplicate_groups(texts: list[str], mode: Literal["exact", "near"] = "near",
                     threshold: float = NEAR_THRESHOLD) -> list[DuplicateGroup]:
    """Groups of two or more duplicate texts, ordered by their first member.

    ``exact`` groups hold texts equal after `normalise`. With ``near``, ``near`` groups follow: the
    first text of each exact group (or a text with no exact duplicate) joined to others whose
    estimated Jaccard similarity of word 5-gram sets is at least ``threshold``. Dropping all but the
    first member of every group keeps exactly one text of each set of duplicates. Blank texts are
    never grouped."""
    first_of: dict[bytes, int] = {}  # a digest of the normalised text, not a second copy of the corpus
    exact: dict[int, list[int]] = defaultdict(list)
    for index, text in enumerate(texts):
        key = normalise(text)
        if key:
            digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            exact[first_of.setdefault(digest, index)].append(index)
    groups = [DuplicateGroup("exact", tuple(m)) for m in exact.values() if len(m) > 1]
    if mode == "near":
        firsts = list(exact)  # in document order, one per distinct normalised text
        links = _near_links(texts, firsts, threshold)
        near: dict[int, list[int]] = defaultdict(list)
        for position, index in enumerate(firsts):
            near[links.find(position)].append(index)
        groups += [DuplicateGroup("near", tuple(m)) for m in near.values() if len(m) > 1]
    return sorted(groups, key=lambda g: (g.members[0], g.kind))


def drop_duplicates(examples: list[Example], mode: Literal["exact", "near"],
                    threshold: float = NEAR_THRESHOLD) -> tuple[list[Example], int]:
    """``examples`` without all but the first of each group of duplicate raw-text documents, and how
    many were dropped. Conversations are kept as they are; order is kept."""
    texts = [(i, e.text) for i, e in enumerate(examples) if e.messages is None and e.text is not None]
    groups = duplicate_groups([t for _, t in texts], mode, threshold)
    dropped = {texts[m][0] for g in groups for m in g.members[1:]}
    return [e for i, e in enumerate(examples) if i not in dropped], len(dropped)


def drop_from_splits(train: list[Example], validation: list[Example], mode: Literal[False, "exact", "near"],
                     threshold: float = NEAR_THRESHOLD) -> tuple[list[Example], list[Example], list[str]]:
    """`data.drop_duplicates` at training time: each split without its duplicate raw-text documents
    (a split on its own; overlap between them is reported apart), and one warning line with the count,
    or none when nothing was dropped or ``mode`` is False."""
    if not mode:
        return train, validation, []
    kept_train, from_train = drop_duplicates(train, mode, threshold)
    kept_val, from_val = drop_duplicates(validation, mode, threshold)
    if not from_train + from_val:
        return train, validation, []
    what = "exact duplicates" if mode == "exact" else f"exact or near duplicates (Jaccard >= {threshold})"
    where = f"{from_train} of {len(train)} training"
    where += f", {from_val} of {len(validation)} validation" if validation else ""
    warning = (
        f"data.drop_duplicates: {mode}: dropped {from_train + from_val} raw text document(s) that are "
        f"{what} of an earlier one ({where}); `tunery data check` lists the groups"
    )
    return kept_train, kept_val, [warning]
