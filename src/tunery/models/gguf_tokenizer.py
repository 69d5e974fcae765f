"""The tokenizer of a GGUF file, read from its metadata alone: no weights, no torch.

`tunery data check` needs only the tokenizer and the chat template. Reading them through transformers'
GGUF loader imports torch (its GGUF reader does, ~2 s) and converting the whole model takes ~40 s;
this module reads the key-value header of the file (tokens, merges, token types, special token ids,
chat template: ~1 MB of a 94 MB file) and builds the same byte-level BPE tokenizer that transformers
builds from it. A test compares the two, token for token and setting for setting.

Only byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``) with the GPT-2 split are built here
(`supported`); callers load anything else through transformers.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types (gguf spec): code -> struct format, for the fixed-size ones.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Pre-tokenizer names (llama.cpp's) whose split is the GPT-2 one that ByteLevel applies by itself.
GPT2_SPLITS = {"gpt-2", "smollm"}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("the GGUF file ends inside its metadata")
    return struct.unpack("<" + fmt, data)[0]


def _string(handle: BinaryIO) -> str:
    length = _read(handle, "Q")
    return handle.read(length).decode("utf-8", errors="replace")


def _value(handle: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item, count = _read(handle, "I"), _read(handle, "Q")
        if item == _STRING:
            return [_string(handle) for _ in range(count)]
        fmt = _SCALARS[item]
        raw = handle.read(struct.calcsize(fmt) * count)
        return list(struct.unpack(f"<{count}{fmt}", raw))
    return _read(handle, _SCALARS[kind])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every key-value pair of a GGUF file's header (versions 2 and 3)."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(handle, "I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        _read(handle, "Q")  # tensor count
        count = _read(handle, "Q")
        metadata = {}
        for _ in range(count):
            key = _string(handle)
            metadata[key] = _value(handle, _read(handle, "I"))
    return metadata


def supported(metadata: dict[str, Any]) -> bool:
    """Whether `build_tokenizer` builds this file's tokenizer exactly."""
    return (
        metadata.get("tokenizer.ggml.model") == "gpt2"
        and metadata.get("tokenizer.ggml.pre", "gpt-2") in GPT2_SPLITS
        and "tokenizer.ggml.merges" in metadata
    )


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


def build_tokenizer(metadata: dict[str, Any]):
    """A `PreTrainedTokenizerFast` for a byte-level BPE GGUF vocabulary (see `supported`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    kinds: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # A vocabulary entry spelled outside the byte alphabet is re-spelled byte by byte, as transformers does.
    vocab = {
        (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    # Control tokens are special; a "control" token spelled outside the byte alphabet is a llama.cpp
    # mislabel that transformers skips, and so do we.
    backend.add_special_tokens([
        AddedToken(t, normalized=False, special=True)
        for t, kind in zip(tokens, kinds) if kind == _CONTROL and set(t) <= alphabet
    ])
    backend.add_tokens([
        AddedToken(t, normalized=False, special=False)
        for t, kind in zip(tokens, kinds) if kind == _USER_DEFINED and t in vocab
    ])

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"), pad_token=token("padding_token_id"),
        chat_template=metadata.get("tokenizer.chat_template"),
    )
