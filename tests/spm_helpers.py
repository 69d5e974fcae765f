"""A tiny SentencePiece-style BPE tokenizer (the kind in Gemma 2/3's and Phi-3-mini's tokenizer.json):
BPE with byte fallback, spaces as '▁', <0x00>..<0xFF> byte tokens, Gemma's specials and turn markers."""

from __future__ import annotations

import json

from adapter_helpers import CORPUS

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TURNS = ["<start_of_turn>", "<end_of_turn>"]
EXTRA = ["Café à Zürich, naïve façade.", "Ünïcödé crème brûlée in Málaga."]


def tiny_spm_tokenizer(prefix: bool = False):
    """Gemma-like (prefix=False: a Replace normalizer, no '▁' before the text) or Llama 2 / Phi-3-like
    (prefix=True: Prepend + Replace normalizers), trained on a few sentences with accents; emoji and
    other unseen characters fall back to byte tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    steps = [normalizers.Prepend("\u2581")] if prefix else []
    normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    trainer_side = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trainer_side.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    trainer_side.train_from_iterator((CORPUS + EXTRA) * 4, trainer=trainer)
    learned = json.loads(trainer_side.to_str())["model"]
    # Gemma's layout: specials first, then the 256 byte tokens, then the learned pieces.
    vocab = {token: index for index, token in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizer
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(decode + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS + TURNS])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>", chat_template=GEMMA_TEMPLATE)
