"""SentencePiece-style vocabularies (Gemma 2/3, Phi-3-mini, Llama 2: BPE with byte fallback, spaces as
'▁') in a GGUF: llama.cpp and transformers' GGUF reader tokenise like the run's own tokenizer, and a tiny
Gemma 2 with such a vocabulary round-trips through both readers."""

from __future__ import annotations

import pytest

from adapter_helpers import CORPUS
from external_tools import llama_cpp, require
from spm_helpers import tiny_spm_tokenizer
from test_export_families import SMALL, random_model

# ASCII, accents the vocabulary learned, emoji and CJK it did not (byte fallback), leading, double and
# trailing spaces, and a rendered turn (special tokens between text).
TEXTS = ["Hello there", "Café à Zürich, naïve.", "emoji 🙂 and 日本", " leading space", "  two  spaces ",
         "What is the capital of France?", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"]
IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)


@pytest.fixture(scope="module")
def gemma_tok():
    return tiny_spm_tokenizer(prefix=False)


@pytest.fixture(scope="module")
def prefix_tok():
    return tiny_spm_tokenizer(prefix=True)


def config_of(family: str, vocab: int):
    from transformers import Gemma2Config, LlamaConfig, Phi3Config

    if family == "gemma2":  # 26 layers: llama.cpp knows Gemma sizes by layer count
        return Gemma2Config(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                            **(SMALL | IDS | {"num_hidden_layers": 26}))
    return {"phi3": Phi3Config, "llama": LlamaConfig}[family](vocab_size=vocab, **(SMALL | IDS))


def export(tok, family: str, path):
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import pre_tokenizer_name, read_vocab
    from tunery.export.gguf_writer import write_gguf

    model = random_model(config_of(family, len(tok)))
    vocab = read_vocab(tok, model.config.vocab_size, chat_template_of(tok))
    pre, warning = pre_tokenizer_name(tok)
    assert warning is None
    return model, write_gguf(model, vocab, path, "f32", name="tiny", pre=pre)


def llama_cpp_ids(path, texts):
    from tunery.export import llamacpp

    return llamacpp.read_back_isolated(path, texts, [[2]], 1, {1}, with_logits=False).prompt_ids


def test_the_vocabulary_is_written_as_sentencepiece(gemma_tok, prefix_tok):
    from tunery.data.render import chat_template_of
    from tunery.export.gguf_vocab import BYTE, CONTROL, NORMAL, UNKNOWN, read_vocab

    vocab = read_vocab(gemma_tok, len(gemma_tok), chat_template_of(gemma_tok))
    assert vocab.model == "llama" and vocab.add_space_prefix is False and vocab.add_bos is True
    assert vocab.token_types[:4] == [CONTROL, CONTROL, CONTROL, UNKNOWN]  # <pad> <eos> <bos> <unk>
    assert vocab.tokens[4:260] == [f"<0x{b:02X}>" for b in range(256)] and set(vocab.token_types[4:260]) == {BYTE}
    assert vocab.token_types[gemma_tok.convert_tokens_to_ids("<end_of_turn>")] == CONTROL
    # Each merge's result scores minus its rank: llama.cpp merges the highest score first, as BPE does.
    first, second = ("".join(m.split(" ")) for m in vocab.merges[:2])
    assert vocab.scores[vocab.tokens.index(first)] == -1.0 and vocab.scores[vocab.tokens.index(second)] == -2.0
    assert vocab.token_types[vocab.tokens.index(first)] == NORMAL
    assert read_vocab(prefix_tok, len(prefix_tok), chat_template_of(prefix_tok)).add_space_prefix is True


@pytest.mark.parametrize("family,prefix", [("gemma2", False), ("phi3", True)])
def test_both_readers_tokenise_like_the_hf_tokenizer(family, prefix, gemma_tok, prefix_tok, tmp_path):
    require("llama.cpp", llama_cpp())
    from transformers import AutoTokenizer

    tok = prefix_tok if prefix else gemma_tok
    _, path = export(tok, family, tmp_path / f"{family}.gguf")
    texts = TEXTS + CORPUS
    expected = [tok(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert any(tok.convert_ids_to_tokens(ids).count("<0xF0>") for ids in expected)  # byte fallback exercised
    assert llama_cpp_ids(path, texts) == expected
    rebuilt = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert [rebuilt(text, add_special_tokens=False)["input_ids"] for text in texts] == expected
    assert rebuilt("Hello")["input_ids"] == tok("Hello")["input_ids"]  # <bos> added, as the run's tokenizer does
    assert [rebuilt.decode(ids) for ids in expected] == [tok.decode(ids) for ids in expected]


def test_scores_in_the_wrong_order_change_llama_cpp_tokens(gemma_tok, tmp_path, monkeypatch):
    """The scores carry the merge order (llama.cpp never reads the merges): reversed, llama.cpp's
    SentencePiece merges late pairs first and cuts the corpus sentences differently."""
    require("llama.cpp", llama_cpp())
    from tunery.export import gguf_vocab

    right = gguf_vocab._merge_scores
    monkeypatch.setattr(gguf_vocab, "_merge_scores", lambda merges, n, ids: [-s for s in right(merges, n, ids)])
    _, path = export(gemma_tok, "gemma2", tmp_path / "reversed.gguf")
    expected = [gemma_tok(text, add_special_tokens=False)["input_ids"] for text in TEXTS + CORPUS]
    got = llama_cpp_ids(path, TEXTS + CORPUS)
    assert sum(a != b for a, b in zip(got, expected)) >= 3


def test_a_tiny_gemma2_with_a_sentencepiece_vocab_round_trips(gemma_tok, tmp_path):
    require("llama.cpp", llama_cpp())
    from tunery.export.verify import verify_gguf

    model, path = export(gemma_tok, "gemma2", tmp_path / "gemma2.gguf")
    record = verify_gguf(path, model, gemma_tok, "f32")
    top = record["logits"]["max_abs_logit"]
    assert record["logits"]["max_abs_diff"] < 1e-4 * top and record["greedy_identical"] is True
    assert record["tokenizer"] == {"chat_template_identical": True, "probe_tokens_identical": True,
                                   "stop_ids": [1, gemma_tok.convert_tokens_to_ids("<end_of_turn>")],
                                   "stop_ids_identical": True}
    llama = record["llama_cpp"]
    assert llama["ran"] is True and llama["logits"]["max_abs_diff"] < 3e-3 * top  # ggml's f16 GELU table
    assert llama["greedy_identical"] and llama["tokenizer"]["probe_tokens_identical"]
    assert record["passed"] is True, record["failures"]


def test_transformers_rebuilds_a_llama_sentencepiece_vocab_with_metaspace(prefix_tok, tmp_path):
    """A documented corner, not a writer bug: for architecture `llama`, transformers' GGUF reader builds
    its LlamaTokenizer (a Metaspace that prepends '▁' to the first piece only), whatever normalizer the
    run's tokenizer had. With a Prepend normalizer (Phi-3-mini's and older Llama 2 tokenizer.json) the
    two differ on text that starts with a space and after a special token; llama.cpp agrees with the
    run's tokenizer on every text."""
    require("llama.cpp", llama_cpp())
    from transformers import AutoTokenizer

    _, path = export(prefix_tok, "llama", tmp_path / "llama.gguf")
    expected = [prefix_tok(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    assert llama_cpp_ids(path, TEXTS) == expected
    rebuilt = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    differ = [text for text, ids in zip(TEXTS, expected) if rebuilt(text, add_special_tokens=False)["input_ids"] != ids]
    assert differ == [" leading space", "  two  spaces ", TEXTS[-1]]
