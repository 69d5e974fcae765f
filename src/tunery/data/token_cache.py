"""Rendered training data kept on disk, so a resumed run (or a second `tunery plan`) skips tokenising.

Rendering runs the chat template several times per example (prefix renderings for the masks): about
1.5 ms per example on 2 CPU cores, minutes for a large file, at every start. The result depends only on
the data files' bytes, the tokenizer (vocabulary and chat template), and the data settings; `cache_key`
hashes exactly those, so any change renders again. Stored as safetensors (ids, trained flags, lengths)
plus a JSON file with the warnings, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunery.atomic import atomic_file, write_text_atomic
from tunery.data.messages import Example, Message
from tunery.data.render import Datasets, Rendered, chat_template_of
from tunery.data.sources import expand

# Bump when rendering changes what it produces for the same inputs.
# 2: control tokens spelled in message content are tokenised as plain text.
# 3: validation examples kept with the rows.
RENDER_VERSION = 3


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_digest(path: str, include, exclude) -> str | list:
    """A file's digest; for a folder, the relative path and digest of every file it stands for, so
    that a file added, removed, renamed or edited under it renders again."""
    if not Path(path).is_dir():
        return _file_digest(path)
    sources, _ = expand(path, include, exclude)
    return [[os.path.relpath(s.path, path), _file_digest(s.path)] for s in sources]


def _tokenizer_digest(tokenizer) -> str:
    backend = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer.get_vocab())
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256((backend + chat_template_of(tokenizer) + repr(specials)).encode()).hexdigest()


def cache_key(cfg, tokenizer) -> str:
    """A hash of everything the rendered rows depend on."""
    data = cfg.data
    parts = {
        "version": RENDER_VERSION,
        "train": [_source_digest(p, data.include, data.exclude) for p in data.train],
        "validation": [_source_digest(p, data.include, data.exclude) for p in data.validation],
        "drop_duplicates": data.drop_duplicates, "near_duplicate_threshold": data.near_duplicate_threshold,
        "format": data.format, "train_on": data.train_on, "max_length": data.max_length,
        "val_split": data.val_split, "seed": cfg.training.seed, "method": cfg.method,
        "allow_special_tokens": data.allow_special_tokens,
        "long_texts": data.long_texts, "window_overlap": data.window_overlap,
        "tokenizer": _tokenizer_digest(tokenizer),
        "retrieval": data.retrieval.model_dump() if data.retrieval is not None else None,
        "choices": cfg.eval.choices,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _pack_rows(rows: list[Rendered], prefix: str) -> dict[str, torch.Tensor]:
    ids = [t for r in rows for t in r.ids]
    trained = [t for r in rows for t in r.trained]
    return {
        f"{prefix}.ids": torch.tensor(ids, dtype=torch.int64),
        f"{prefix}.trained": torch.tensor(trained, dtype=torch.bool),
        f"{prefix}.lengths": torch.tensor([len(r.ids) for r in rows], dtype=torch.int64),
        f"{prefix}.flags": torch.tensor([[r.truncated, r.answer_cut] for r in rows], dtype=torch.bool).reshape(-1, 2),
    }


def _unpack_rows(tensors: dict[str, torch.Tensor], prefix: str) -> list[Rendered]:
    ids, trained = tensors[f"{prefix}.ids"].tolist(), tensors[f"{prefix}.trained"].tolist()
    flags = tensors[f"{prefix}.flags"].tolist()
    rows, start = [], 0
    for length, (truncated, answer_cut) in zip(tensors[f"{prefix}.lengths"].tolist(), flags):
        rows.append(Rendered(ids[start:start + length], trained[start:start + length], truncated, answer_cut))
        start += length
    return rows


def _example_json(example: Example) -> dict:
    messages = None if example.messages is None else [[m.role, m.content, m.weight] for m in example.messages]
    return {"source": example.source, "line": example.line, "messages": messages, "text": example.text}


def _example_from_json(data: dict) -> Example:
    messages = None if data["messages"] is None else [Message(*m) for m in data["messages"]]
    return Example(data["source"], data["line"], messages, data["text"])


def save(folder: Path, key: str, data: Datasets) -> None:
    """Write a `Datasets` under `folder` (tunery.atomic: temporary names, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _pack_rows(data.train, "train") | _pack_rows(data.val, "val")
    meta = {"warnings": data.warnings, "val_examples": [_example_json(e) for e in data.val_examples],
            "retrieval": data.retrieval, "labels": data.labels}
    write_text_atomic(folder / f"{key}.json", json.dumps(meta))
    with atomic_file(folder / f"{key}.safetensors") as tmp:  # last: its presence means both are complete
        save_file(tensors, str(tmp))


def load(folder: Path, key: str) -> Datasets | None:
    """The `Datasets` saved under `key`, or None when there is none."""
    weights, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        tensors = load_file(str(weights))
        meta = json.loads(meta_path.read_text())
        examples = [_example_from_json(e) for e in meta["val_examples"]]
        return Datasets(_unpack_rows(tensors, "train"), _unpack_rows(tensors, "val"), meta["warnings"], examples,
                        meta.get("retrieval"), meta.get("labels"))
    except Exception as exc:  # noqa: BLE001 (a damaged cache, whatever the reader raises)
        print(f"warning: the rendered-data cache {weights} is damaged ({type(exc).__name__}); rendering again",
              file=sys.stderr)
        return None
