"""The real chat templates in tests/assets/chat_templates/, on SmolLM2's tokenizer plus each family's
special tokens (the rendered text and the trained characters are the template's own)."""

from __future__ import annotations

import copy
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets" / "chat_templates"

# template file -> (special tokens to add, bos, eos)
FAMILIES = {
    "llama-3.3-70b-instruct": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                               "<|begin_of_text|>", "<|eot_id|>"),
    "mistral-7b-instruct-v0.2": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"),
    "mistral-nemo-instruct-2407": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"),
    "qwen2.5-7b-instruct": ([], None, "<|im_end|>"),
    "qwen3-0.6b": ([], None, "<|im_end|>"),
    "gemma-2-2b-it": (["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>"),
}


# Added tokens that are not special (Qwen3's tokenizer marks its reasoning tags "special": false): text
# spelling them becomes that token, and they are the model's own format, not control tokens of the template.
PLAIN_ADDED = {"qwen3-0.6b": ["<think>", "</think>"]}


def real_template(name: str) -> str:
    return (ASSETS / f"{name}.jinja").read_text()


def tokenizer_with(base, name: str):
    """A copy of `base` carrying the real template `name` and that family's special tokens."""
    specials, bos, eos = FAMILIES[name]
    tok = copy.deepcopy(base)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    if name in PLAIN_ADDED:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED[name]])
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    tok.chat_template = real_template(name)
    return tok
