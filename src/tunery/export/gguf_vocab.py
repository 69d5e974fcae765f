"""The tokenizer half of a GGUF file: vocabulary, merges, token kinds, special ids and chat template.

A GGUF has no tokenizer.json; readers (llama.cpp, Ollama, transformers' GGUF loader) rebuild the
tokenizer from metadata under llama.cpp's key names. The part users notice when it goes wrong is the
chat side: without the exact template the model is prompted in a format it never saw, and without
the end-of-turn token it never stops. So the template written here is the run's own (the one it was
trained with), and the end-of-turn token is stored both as `eot` and among the stop ids.

Supported:
- byte-level BPE vocabularies (GPT-2 style, `tokenizer.ggml.model = gpt2`), which SmolLM, Llama 3,
  Qwen and most recent models use;
- SentencePiece-style BPE (`tokenizer.ggml.model = llama`): a BPE model with byte fallback whose
  spaces are '▁' (a Metaspace pre-tokenizer, or a Replace normalizer, with or without a Prepend), as
  in the tokenizer.json of Gemma 2/3, Phi-3-mini and Llama 2. llama.cpp tokenises these with its
  SentencePiece algorithm, which merges the adjacent pair whose result has the highest score and never
  reads merges, so each token's score is minus the rank of the first merge that makes it (the order
  BPE applies them); the merges are written as well, for transformers' reader, which uses them.
  Byte-fallback tokens <0xNN> are marked BYTE, and `add_space_prefix` says whether a '▁' is put
  before the text (Metaspace/Prepend) or not (Gemma).
Other kinds (Unigram, WordPiece) raise a clear error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tunery.errors import TuneryError

# llama.cpp's token kinds (gguf.TokenType): what a reader does with each token.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocab:
    """Everything the GGUF tokenizer metadata needs, read from a Hugging Face tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str
    stop_ids: list[int] = field(default_factory=list)
    model: str = "gpt2"  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    scores: list[float] | None = None  # "llama" only: higher merges first in llama.cpp
    add_space_prefix: bool | None = None  # "llama" only: a '▁' before the text


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TuneryError(
            "GGUF export needs a fast (tokenizers-backed) tokenizer",
            fix="save the model with a tokenizer.json (transformers' fast tokenizer)",
        )
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict) -> bool:
    text = json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    return spec["model"].get("type") == "BPE" and "ByteLevel" in text


def _is_sentencepiece_bpe(spec: dict) -> bool:
    # '▁' stands for a space in the normalizer, pre-tokenizer or decoder (Replace, Metaspace)
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")], ensure_ascii=False)
    model = spec["model"]
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "\u2581" in text


def _space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts '▁' before the text: a Prepend normalizer or a prepending Metaspace."""
    parts = [spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}]
    steps = [step for part in parts for step in (part.get("normalizers") or part.get("pretokenizers") or [part])]
    for step in steps:
        if step.get("type") == "Prepend":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def _merge_scores(merges: list[str], n_tokens: int, token_ids: dict[str, int]) -> list[float]:
    """Minus the rank of the first merge that makes each token; 0 for tokens no merge makes."""
    scores = [0.0] * n_tokens
    made = set()
    for rank, merge in enumerate(merges):
        token = token_ids.get(merge.replace(" ", "", 1))
        if token is not None and token not in made:
            made.add(token)
            scores[token] = -float(rank + 1)
    return scores


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether encoding plain text adds `token_id` at the start (first) or the end."""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def read_vocab(tokenizer, n_vocab: int, chat_template: str) -> Vocab:
    """The GGUF view of `tokenizer`, padded to the model's `n_vocab` embedding rows."""
    from tunery.inference import stop_token_ids

    spec = _backend_json(tokenizer)
    sentencepiece = not _is_byte_level(spec) and _is_sentencepiece_bpe(spec)
    if not _is_byte_level(spec) and not sentencepiece:
        raise TuneryError(
            "this tokenizer is neither byte-level BPE nor SentencePiece-style BPE with byte fallback, the "
            "kinds tunery's GGUF writer handles",
            why=f"tokenizer model type: {spec['model'].get('type')}",
            fix="export with --format hf, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    by_id = {index: token for token, index in spec["model"]["vocab"].items()}
    specials = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        specials[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if max(by_id) >= n_vocab:
        raise TuneryError(f"the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} rows")
    tokens, types = [], []
    for index in range(n_vocab):
        if index in by_id:
            tokens.append(by_id[index])
            types.append(specials.get(index, NORMAL))
        else:  # embedding rows no token uses (vocabularies padded to a multiple of 64, say)
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    scores = None
    if sentencepiece:
        types = [BYTE if kind == NORMAL and BYTE_TOKEN.fullmatch(token) else kind for token, kind in zip(tokens, types)]
        if tokenizer.unk_token_id is not None and types[tokenizer.unk_token_id] != UNUSED:
            types[tokenizer.unk_token_id] = UNKNOWN
        scores = _merge_scores(merges, n_vocab, {token: i for i, token in enumerate(tokens)})
    stops = stop_token_ids(tokenizer)
    eot = next((i for i in stops if i != tokenizer.eos_token_id), tokenizer.eos_token_id)
    return Vocab(
        tokens=tokens, token_types=types, merges=merges,
        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
        unk_id=tokenizer.unk_token_id, eot_id=eot,
        add_bos=_adds(tokenizer, tokenizer.bos_token_id, True),
        add_eos=_adds(tokenizer, tokenizer.eos_token_id, False),
        chat_template=chat_template, stop_ids=stops,
        model="llama" if sentencepiece else "gpt2", scores=scores,
        add_space_prefix=_space_prefix(spec) if sentencepiece else None,
    )


def pre_tokenizer_name(tokenizer) -> tuple[str, str | None]:
    """llama.cpp's name for how this tokenizer splits text before BPE, and a warning when unknown.

    Readers pick their split regex by this name. Plain byte-level splitting is GPT-2's; a split by a
    regular expression is looked up among the names transformers' GGUF reader knows, so that reader
    rebuilds the same splitting (the verification then shows it on the probe prompts).
    """
    spec = _backend_json(tokenizer)
    if not _is_byte_level(spec) and _is_sentencepiece_bpe(spec):
        return "default", None  # llama.cpp's SentencePiece tokenizer has no pre-tokenizer to name
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2", None  # llama.cpp's name (it refuses "gpt2")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    regex = next((s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"), None)
    if regex:
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:  # a transformers without this table: fall through to the warning
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for name, known in GGUF_PRE_TOKENIZER_SPLITS.items():
            if known == regex:
                return name, None
    return "default", ("unknown pre-tokenizer; wrote 'default', so llama.cpp may split some text "
                       "differently from the run's tokenizer")


def write_vocab(writer, vocab: Vocab, pre: str) -> None:
    """Add the tokenizer metadata to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(pre if vocab.model == "gpt2" else "default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_token_merges(vocab.merges)
    for setter, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                          (writer.add_pad_token_id, vocab.pad_id), (writer.add_unk_token_id, vocab.unk_id),
                          (writer.add_eot_token_id, vocab.eot_id)):
        if value is not None:
            setter(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_chat_template(vocab.chat_template)
