"""Golden tests of tunery's renderer on the real chat templates of Llama 3.x, Mistral, Qwen2.5, Qwen3 and
Gemma (tests/assets/chat_templates/): the exact rendered text, and exactly which text is trained (each
run of trained tokens, decoded). Conversations a template refuses, or that tunery cannot split into
turns, must fail with a message naming the example, never train the wrong tokens."""

from __future__ import annotations

import pytest

from template_helpers import tokenizer_with
from tunery.data.messages import Example, Message
from tunery.data.render import render_example
from tunery.errors import TuneryError


def conv(*pairs) -> Example:
    return Example("chat.jsonl", 3, messages=[Message(role, content) for role, content in pairs])


ONE = conv(("user", "Capital of France?"), ("assistant", "Paris."))
TWO = conv(("user", "Capital of France?"), ("assistant", "Paris."), ("user", "And of Italy?"),
           ("assistant", "Rome, since 1871."))
SYSTEM = conv(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris."))

LLAMA_HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
QWEN25_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"

# (template, example) -> (rendered text, trained runs)
GOLDEN = {
    ("llama-3.3-70b-instruct", "one"): (
        LLAMA_HEAD + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>",
        ["Paris.<|eot_id|>"]),
    ("llama-3.3-70b-instruct", "two"): (
        LLAMA_HEAD + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRome, since 1871.<|eot_id|>",
        ["Paris.<|eot_id|>", "Rome, since 1871.<|eot_id|>"]),
    ("llama-3.3-70b-instruct", "system"): (
        LLAMA_HEAD + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>",
        ["Paris.<|eot_id|>"]),
    ("mistral-7b-instruct-v0.2", "one"): ("<s>[INST] Capital of France? [/INST]Paris.</s>", ["Paris.</s>"]),
    ("mistral-7b-instruct-v0.2", "two"): (
        "<s>[INST] Capital of France? [/INST]Paris.</s>[INST] And of Italy? [/INST]Rome, since 1871.</s>",
        ["Paris.</s>", "Rome, since 1871.</s>"]),
    ("mistral-nemo-instruct-2407", "one"): ("<s>[INST]Capital of France?[/INST]Paris.</s>", ["Paris.</s>"]),
    ("mistral-nemo-instruct-2407", "two"): (
        "<s>[INST]Capital of France?[/INST]Paris.</s>[INST]And of Italy?[/INST]Rome, since 1871.</s>",
        ["Paris.</s>", "Rome, since 1871.</s>"]),
    ("qwen2.5-7b-instruct", "one"): (
        QWEN25_SYSTEM + "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
        ["Paris.<|im_end|>"]),
    ("qwen2.5-7b-instruct", "two"): (
        QWEN25_SYSTEM + "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\nRome, since 1871.<|im_end|>\n",
        ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]),
    ("qwen2.5-7b-instruct", "system"): (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n",
        ["Paris.<|im_end|>"]),
    # Qwen3 writes an empty reasoning block before the final answer: rendered, never trained.
    ("qwen3-0.6b", "one"): (
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "Paris.<|im_end|>\n",
        ["Paris.<|im_end|>"]),
    ("qwen3-0.6b", "system"): (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n",
        ["Paris.<|im_end|>"]),
    ("gemma-2-2b-it", "one"): (
        "<bos><start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n",
        ["Paris.<end_of_turn>"]),
    ("gemma-2-2b-it", "two"): (
        "<bos><start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\nRome, since 1871.<end_of_turn>\n",
        ["Paris.<end_of_turn>", "Rome, since 1871.<end_of_turn>"]),
}
EXAMPLES = {"one": ONE, "two": TWO, "system": SYSTEM}


def trained_runs(rendered, tokenizer) -> list[str]:
    """Each maximal run of trained tokens, decoded: one string per trained turn."""
    runs, current = [], []
    for token, on in zip(rendered.ids + [None], rendered.trained + [False]):
        if on:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    return runs


@pytest.fixture(scope="module")
def tokenizers(smol_tokenizer):
    names = {name for name, _ in GOLDEN} | {"qwen3-0.6b", "gemma-2-2b-it", "mistral-7b-instruct-v0.2",
                                             "mistral-nemo-instruct-2407"}
    return {name: tokenizer_with(smol_tokenizer, name) for name in names}


@pytest.mark.parametrize("name, example", sorted(GOLDEN), ids=[f"{n}-{e}" for n, e in sorted(GOLDEN)])
def test_real_template_renders_and_trains_exactly(tokenizers, name, example):
    tok = tokenizers[name]
    text, runs = GOLDEN[name, example]
    rendered = render_example(EXAMPLES[example], tok)
    assert tok.decode(rendered.ids, skip_special_tokens=False) == text
    dicts = [{"role": m.role, "content": m.content} for m in EXAMPLES[example].messages]
    assert tok.apply_chat_template(dicts, tokenize=False) == text  # the template's own text, unchanged
    assert trained_runs(rendered, tok) == runs


def test_qwen3_trains_a_reasoning_block_that_has_reasoning_in_it(tokenizers):
    tok = tokenizers["qwen3-0.6b"]
    answer = "<think>\nFrance's capital.\n</think>\n\nParis."
    rendered = render_example(conv(("user", "Capital of France?"), ("assistant", answer)), tok)
    assert trained_runs(rendered, tok) == ["<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>"]


def test_qwen3_multi_turn_is_a_clear_error_and_train_on_last_works(tokenizers):
    """Qwen3 drops the reasoning block of earlier turns, so a conversation rendered up to an earlier answer
    is not the start of the whole conversation: tunery cannot place that answer and says so."""
    tok = tokenizers["qwen3-0.6b"]
    with pytest.raises(TuneryError, match=r"chat.jsonl:3: the chat template is not prefix-stable, so tunery "
                                          r"cannot locate assistant turn 1") as err:
        render_example(TWO, tok)
    assert "train_on: all" in err.value.fix
    last = render_example(TWO, tok, train_on="last")
    assert trained_runs(last, tok) == ["Rome, since 1871.<|im_end|>"]
    assert tok.decode(last.ids, skip_special_tokens=False).endswith(
        "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nRome, since 1871.<|im_end|>\n")


@pytest.mark.parametrize("name, message", [
    ("gemma-2-2b-it", "System role not supported"),
    ("mistral-7b-instruct-v0.2", "Conversation roles must alternate"),
    ("mistral-nemo-instruct-2407", "the chat template is not prefix-stable"),  # system goes to the last turn
])
def test_a_system_message_the_template_cannot_place_is_an_error_naming_the_example(tokenizers, name, message):
    with pytest.raises(TuneryError, match=f"chat.jsonl:3: .*{message}"):
        render_example(SYSTEM, tokenizers[name])
