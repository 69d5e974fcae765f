"""Retrieval-augmented fine-tuning (`data.retrieval`): each prompt carries its k nearest training examples.

The same index serves training and answering, so a run answers the way it was trained:
- documents: the training examples (after the validation split), each as in-context turns (its user and
  assistant turns, system message dropped), searched by their prompt text (`prompt_text`);
- ranking: the BM25 or the MiniLM embeddings of `tunery.data.retrieval` (the retrieval baseline's own);
- exclusion at training: a document is never a shot for a prompt that is a near-duplicate of its own
  prompt (an example never sees itself or a copy of itself, which would teach copying its answer
  instead of using examples); at answer time only the same question (equal once normalised) is skipped,
  as the retrieval baseline of `tunery eval` skips the evaluated example: a near-duplicate training
  example is the best help a new question can get (measured on examples/routing: excluding them at
  answer time cost 11 points, docs/retrieval.md);
- rendering: the k shots as (user, assistant) turns after the prompt's system messages and before its
  question, the most similar one last, nearest the question (`tunery.eval.baselines.with_shots`, the
  base-retrieval baseline's layout); the shots' answers carry weight 0, so only the example's own answer
  is trained.

Near-duplicate (`near_duplicate`): the same text after case folding and collapsing whitespace, or word-set
Jaccard similarity of at least `NEAR_DUPLICATE_JACCARD` (0.8). The index is saved in the run folder as
`retrieval.json` (plain JSON: method, k, documents) and rebuilt from it; both rankers are deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunery.data.messages import Example, Message
from tunery.errors import TuneryError

INDEX_FILE = "retrieval.json"
NEAR_DUPLICATE_JACCARD = 0.8
FORMAT_VERSION = 1


def normalised(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed to one space."""
    return " ".join(text.casefold().split())


def near_duplicate(a: str, b: str, threshold: float = NEAR_DUPLICATE_JACCARD) -> bool:
    """Whether two prompt texts are the same question: equal once normalised, or sharing at least
    `threshold` of their distinct words (Jaccard |A & B| / |A | B| of the lower-cased word sets)."""
    from tunery.data.retrieval import words

    return _same_question((normalised(a), set(words(a))), (normalised(b), set(words(b))), threshold)


def _same_question(a: tuple[str, set], b: tuple[str, set], threshold: float = NEAR_DUPLICATE_JACCARD) -> bool:
    """`near_duplicate` on (normalised text, word set) pairs, computed once per document."""
    if a[0] == b[0]:
        return True
    left, right = a[1], b[1]
    if not left or not right:
        return False
    return len(left & right) / len(left | right) >= threshold


def prompt_of(messages: list[Message]) -> str:
    """The non-system text before the last assistant turn (what is searched and compared)."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages))
    return "\n".join(m.content for m in messages[:last] if m.role != "system")


def query_of(conversation: list[dict]) -> str:
    """The non-system text of a conversation about to be answered (chat dicts)."""
    return "\n".join(m["content"] for m in conversation if m["role"] != "system")


def shot_turns(example: Example) -> list[dict]:
    """A training example as in-context turns: its non-system turns through its last answer."""
    messages = example.messages or []
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        raise TuneryError(f"{example.location}: retrieval needs conversations with an assistant answer")
    return [{"role": m.role, "content": m.content} for m in messages[: last + 1] if m.role != "system"]


@dataclass
class RetrievalIndex:
    """The training examples a run retrieves from, and how."""

    method: str
    k: int
    documents: list[dict]  # {"where": file:line, "query": prompt text, "turns": [chat dicts]}

    def __post_init__(self):
        from tunery.data.retrieval import make_retriever

        from tunery.data.retrieval import words

        self._retriever = make_retriever(self.method, [d["query"] for d in self.documents])
        self._keys = [(normalised(d["query"]), set(words(d["query"]))) for d in self.documents]

    @classmethod
    def build(cls, examples: list[Example], method: str, k: int) -> "RetrievalIndex":
        """The index over `examples` (conversations only)."""
        docs = [{"where": e.location, "query": prompt_of(e.messages), "turns": shot_turns(e)}
                for e in examples if e.messages is not None]
        return cls(method, k, docs)

    def neighbours(self, query: str, training: bool = False) -> list[int]:
        """The k best documents for `query`, best first. Training (`training`) skips near-duplicates of
        the prompt; answering skips only the same question (equal once normalised)."""
        from tunery.data.retrieval import rank, words

        scores = self._retriever.scores(query)
        key = (normalised(query), set(words(query)))
        if training:
            skip = lambda i: _same_question(key, self._keys[i])  # noqa: E731
        else:
            skip = lambda i: key[0] == self._keys[i][0]  # noqa: E731
        # The best few first; all of them only when skipped ones fill that many (a set of copies).
        for width in (4 * self.k + 8, len(scores)):
            chosen = [i for i in rank(scores, width) if not skip(i)]
            if len(chosen) >= self.k or width >= len(scores):
                return chosen[: self.k]
        return []

    def augment(self, conversation: list[dict]) -> list[dict]:
        """`conversation` (chat dicts, ending before the answer) with its shots inserted."""
        from tunery.data.retrieval import insert_turns

        picked = self.neighbours(query_of(conversation))[::-1]  # the most similar last
        return insert_turns(conversation, [t for i in picked for t in self.documents[i]["turns"]])

    def augment_example(self, example: Example) -> Example:
        """A training example with its shots before its question; the shots' answers have weight 0."""
        messages = example.messages or []
        picked = self.neighbours(prompt_of(messages), training=True)[::-1]
        shots = [Message(t["role"], t["content"], 0 if t["role"] == "assistant" else None)
                 for i in picked for t in self.documents[i]["turns"]]
        head = 0
        while head < len(messages) and messages[head].role == "system":
            head += 1
        return Example(example.source, example.line, messages[:head] + shots + messages[head:], example.text)

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, "method": self.method, "k": self.k, "documents": self.documents,
                "near_duplicate_jaccard": NEAR_DUPLICATE_JACCARD}

    @classmethod
    def from_json(cls, data: dict) -> "RetrievalIndex":
        return cls(data["method"], int(data["k"]), list(data["documents"]))

    def save(self, run_dir: str | Path) -> Path:
        """Write `retrieval.json` into the run folder (atomically)."""
        return save_index(run_dir, self.to_json())


def save_index(run_dir: str | Path, index: dict) -> Path:
    """Write an index's JSON (`RetrievalIndex.to_json`) as the run folder's `retrieval.json`, atomically."""
    from tunery.atomic import write_text_atomic

    path = Path(run_dir) / INDEX_FILE
    write_text_atomic(path, json.dumps(index, ensure_ascii=False))
    return path


def load_index(run_dir: str | Path) -> RetrievalIndex | None:
    """The run's saved index, or None when the run was trained without retrieval."""
    path = Path(run_dir) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {FORMAT_VERSION}")
        return RetrievalIndex.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise TuneryError(f"{path} cannot be read: {exc}",
                          why="the run's retrieval index is damaged or from another tunery version",
                          fix="train the run again, or copy retrieval.json from the original run folder") from exc
