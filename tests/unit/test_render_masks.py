"""Golden tests of loss masks: exactly which tokens are trained, per chat-template family.

Each assertion decodes the trained tokens and compares them with the answer text plus its
end-of-turn token, so that a mask shifted by one token, or one that drops the end token, fails.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.data.messages import Example, Message
from tunery.data.render import CHATML_TEMPLATE, render_example, trained_spans
from tunery.errors import TuneryError

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Llama-3 layout: header tokens around the role, "\n\n", content, <|eot_id|>, no newline after it.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Llama-3 layout plus a default system message when the conversation has none.
LLAMA3_DEFAULT_SYSTEM_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] != 'system' %}"
    "<|start_header_id|>system<|end_header_id|>\n\nYou answer briefly.<|eot_id|>"
    "{% endif %}" + LLAMA3_TEMPLATE.removeprefix("{{ bos_token }}")
)

# Mistral/Llama-2 layout: no assistant header at all; the answer follows "[/INST]" after a space
# and ends with </s>. The system message is folded into the first user turn.
INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{# folded into the first user turn #}"
    "{% elif m['role'] == 'user' %}[INST] "
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}</s>{% endif %}"
    "{% endfor %}"
)

# Marks the last message differently, so earlier renderings are not prefixes of the full one.
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} [END]{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)

STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conv(*pairs, weights=None) -> Example:
    """An example from (role, content) pairs; ``weights`` maps a message index to its weight."""
    weights = weights or {}
    messages = [Message(role, content, weights.get(i)) for i, (role, content) in enumerate(pairs)]
    return Example("mem.jsonl", 7, messages=messages)


def trained_text(rendered, tokenizer) -> str:
    ids = [i for i, on in zip(rendered.ids, rendered.trained) if on]
    return tokenizer.decode(ids, skip_special_tokens=False)


def trained_runs(rendered, tokenizer) -> list[str]:
    """Each maximal run of trained tokens, decoded: one string per trained turn."""
    runs, current = [], []
    for token, on in zip(rendered.ids, rendered.trained):
        if on:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    if current:
        runs.append(tokenizer.decode(current, skip_special_tokens=False))
    return runs


def with_template(tokenizer, template, specials=(), bos=None, eos=None):
    tok = copy.deepcopy(tokenizer)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def llama3_tok(smol_tokenizer):
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return with_template(
        smol_tokenizer, LLAMA3_TEMPLATE, specials, "<|begin_of_text|>", "<|eot_id|>"
    )


@pytest.fixture(scope="module")
def llama3_default_system_tok(llama3_tok):
    return with_template(llama3_tok, LLAMA3_DEFAULT_SYSTEM_TEMPLATE)


@pytest.fixture(scope="module")
def inst_tok(smol_tokenizer):
    return with_template(
        smol_tokenizer, INST_TEMPLATE, ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"
    )


PARIS = conv(("user", "Capital of France?"), ("assistant", "Paris."))
TWO_TURNS = conv(
    ("system", "Be brief."),
    ("user", "Capital of France?"),
    ("assistant", "Paris."),
    ("user", "And of Italy?"),
    ("assistant", "Rome, since 1871."),
)


# --- ChatML, the real SmolLM2 tokenizer (adds a default system message) --------------------------


def test_smol_single_turn_trains_answer_and_im_end_only(smol_tokenizer):
    rendered = render_example(PARIS, smol_tokenizer)
    assert trained_text(rendered, smol_tokenizer) == "Paris.<|im_end|>"
    # "Paris" "." "<|im_end|>" and then the template's "\n", which is not trained.
    first = rendered.trained.index(True)
    assert rendered.ids[first : first + 4] == [38634, 30, 2, 198]
    assert rendered.trained[first : first + 4] == [True, True, True, False]
    assert sum(rendered.trained) == 3
    assert rendered.truncated is False and rendered.answer_cut is False


def test_smol_default_system_message_is_rendered_and_not_trained(smol_tokenizer):
    rendered = render_example(PARIS, smol_tokenizer)
    untrained = [i for i, on in zip(rendered.ids, rendered.trained) if not on]
    text = smol_tokenizer.decode(untrained, skip_special_tokens=False)
    assert text.startswith(f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n\n")  # the prompt, then the trailing newline


def test_smol_ids_are_the_templates_own_tokenisation(smol_tokenizer):
    rendered = render_example(TWO_TURNS, smol_tokenizer)
    dicts = [{"role": m.role, "content": m.content} for m in TWO_TURNS.messages]
    assert rendered.ids == list(smol_tokenizer.apply_chat_template(dicts)["input_ids"])


def test_smol_multi_turn_trains_every_assistant_turn(smol_tokenizer):
    rendered = render_example(TWO_TURNS, smol_tokenizer)
    assert trained_runs(rendered, smol_tokenizer) == [
        "Paris.<|im_end|>",
        "Rome, since 1871.<|im_end|>",
    ]


def test_smol_weight_zero_turn_is_not_trained(smol_tokenizer):
    example = conv(*[(m.role, m.content) for m in TWO_TURNS.messages], weights={2: 0})
    rendered = render_example(example, smol_tokenizer)
    assert trained_runs(rendered, smol_tokenizer) == ["Rome, since 1871.<|im_end|>"]
    explicit = conv(*[(m.role, m.content) for m in TWO_TURNS.messages], weights={2: 1, 4: 0})
    assert trained_runs(render_example(explicit, smol_tokenizer), smol_tokenizer) == [
        "Paris.<|im_end|>"
    ]


def test_smol_train_on_last_trains_only_the_final_turn(smol_tokenizer):
    rendered = render_example(TWO_TURNS, smol_tokenizer, train_on="last")
    assert trained_runs(rendered, smol_tokenizer) == ["Rome, since 1871.<|im_end|>"]


def test_smol_train_on_last_respects_weight_zero(smol_tokenizer):
    example = conv(*[(m.role, m.content) for m in TWO_TURNS.messages], weights={4: 0})
    assert not any(render_example(example, smol_tokenizer, train_on="last").trained)


def test_smol_train_on_all_trains_every_token(smol_tokenizer):
    rendered = render_example(TWO_TURNS, smol_tokenizer, train_on="all", max_length=None)
    assert rendered.trained == [True] * len(rendered.ids)
    assert smol_tokenizer.decode(rendered.ids, skip_special_tokens=False).startswith(
        "<|im_start|>system\nBe brief."
    )


def test_smol_multibyte_answer(smol_tokenizer):
    example = conv(("user", "Say it in French"), ("assistant", "Très bien, l'été."))
    assert (
        trained_text(render_example(example, smol_tokenizer), smol_tokenizer)
        == "Très bien, l'été.<|im_end|>"
    )


# --- truncation --------------------------------------------------------------------------------


def test_truncation_inside_the_answer_sets_answer_cut(smol_tokenizer):
    full = render_example(PARIS, smol_tokenizer)
    first = full.trained.index(True)
    cut = render_example(PARIS, smol_tokenizer, max_length=first + 1)
    assert len(cut.ids) == first + 1 and cut.ids == full.ids[: first + 1]
    assert cut.truncated is True and cut.answer_cut is True
    assert trained_text(cut, smol_tokenizer) == "Paris"


def test_truncation_of_trailing_newline_only_keeps_answer(smol_tokenizer):
    full = render_example(PARIS, smol_tokenizer)
    cut = render_example(PARIS, smol_tokenizer, max_length=len(full.ids) - 1)
    assert cut.truncated is True and cut.answer_cut is False
    assert trained_text(cut, smol_tokenizer) == "Paris.<|im_end|>"


def test_truncation_before_the_answer_leaves_nothing_trained(smol_tokenizer):
    cut = render_example(PARIS, smol_tokenizer, max_length=10)
    assert len(cut.ids) == 10 and not any(cut.trained)
    assert cut.truncated is True and cut.answer_cut is True


def test_exact_length_is_not_truncated(smol_tokenizer):
    full = render_example(PARIS, smol_tokenizer)
    same = render_example(PARIS, smol_tokenizer, max_length=len(full.ids))
    assert same.ids == full.ids and same.truncated is False and same.answer_cut is False


# --- Llama-3 layout ------------------------------------------------------------------------------


def test_llama3_trains_answer_and_eot(llama3_tok):
    rendered = render_example(TWO_TURNS, llama3_tok)
    assert trained_runs(rendered, llama3_tok) == ["Paris.<|eot_id|>", "Rome, since 1871.<|eot_id|>"]
    text = llama3_tok.decode(rendered.ids, skip_special_tokens=False)
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    )
    eot = llama3_tok.convert_tokens_to_ids("<|eot_id|>")
    assert rendered.ids[-1] == eot and rendered.trained[-1] is True


def test_llama3_header_tokens_are_never_trained(llama3_tok):
    rendered = render_example(TWO_TURNS, llama3_tok)
    header_ids = set(llama3_tok.convert_tokens_to_ids(["<|start_header_id|>", "<|end_header_id|>"]))
    assert all(not on for token, on in zip(rendered.ids, rendered.trained) if token in header_ids)


def test_llama3_last_and_weights(llama3_tok):
    assert trained_runs(render_example(TWO_TURNS, llama3_tok, train_on="last"), llama3_tok) == [
        "Rome, since 1871.<|eot_id|>"
    ]
    example = conv(*[(m.role, m.content) for m in TWO_TURNS.messages], weights={4: 0})
    assert trained_runs(render_example(example, llama3_tok), llama3_tok) == ["Paris.<|eot_id|>"]


def test_template_with_default_system_message(llama3_default_system_tok):
    tok = llama3_default_system_tok
    rendered = render_example(PARIS, tok)
    assert trained_runs(rendered, tok) == ["Paris.<|eot_id|>"]
    assert tok.decode(rendered.ids, skip_special_tokens=False).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer briefly.<|eot_id|>"
    )
    # With a system message of its own, the default is left out.
    assert "You answer briefly" not in tok.decode(render_example(TWO_TURNS, tok).ids)


# --- [INST] layout: no assistant header, answer glued after a space -------------------------------


def test_inst_template_trains_spaced_answer_and_eos(inst_tok):
    rendered = render_example(TWO_TURNS, inst_tok)
    # The space before the answer belongs to the answer's first token (" Paris"), so it is trained.
    assert trained_runs(rendered, inst_tok) == [" Paris.</s>", " Rome, since 1871.</s>"]
    untrained = inst_tok.decode(
        [i for i, on in zip(rendered.ids, rendered.trained) if not on], skip_special_tokens=False
    )
    assert (
        untrained == "<s>[INST] Be brief.\n\nCapital of France? [/INST][INST] And of Italy? [/INST]"
    )


# --- no template, broken templates ---------------------------------------------------------------


def test_tokenizer_without_template_uses_chatml_default(smol_tokenizer):
    tok = with_template(smol_tokenizer, None)
    rendered = render_example(PARIS, tok)
    assert tok.decode(rendered.ids, skip_special_tokens=False) == (
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert trained_text(rendered, tok) == "Paris.<|im_end|>"
    assert "<|im_start|>" in CHATML_TEMPLATE


def test_prefix_unstable_template_is_an_error(smol_tokenizer):
    tok = with_template(smol_tokenizer, UNSTABLE_TEMPLATE)
    with pytest.raises(TuneryError) as info:
        render_example(PARIS, tok)
    assert info.value.what.startswith("mem.jsonl:7: the chat template is not prefix-stable")
    assert "[END]" in info.value.why
    # train_on all needs no turn boundaries, so it still works.
    assert all(render_example(PARIS, tok, train_on="all").trained)


def test_template_exception_names_the_example(smol_tokenizer):
    tok = with_template(smol_tokenizer, STRICT_TEMPLATE)
    bad = conv(("user", "a"), ("user", "b"), ("assistant", "c"))
    with pytest.raises(
        TuneryError, match=r"mem.jsonl:7: the chat template failed .*roles must alternate"
    ):
        render_example(bad, tok)


def test_unknown_train_on_is_an_error(smol_tokenizer):
    with pytest.raises(TuneryError, match="unknown train_on 'answers'"):
        render_example(PARIS, smol_tokenizer, train_on="answers")


def test_trained_spans_are_character_offsets(smol_tokenizer):
    text, spans = trained_spans(PARIS.messages, smol_tokenizer)
    assert [text[a:b] for a, b in spans] == ["Paris.<|im_end|>"]


# --- raw text ------------------------------------------------------------------------------------


def test_raw_text_is_fully_trained_and_ends_with_eos(smol_tokenizer):
    example = Example("corpus.jsonl", 1, text="The Seine flows through Paris.")
    rendered = render_example(example, smol_tokenizer)
    expected = smol_tokenizer("The Seine flows through Paris.")["input_ids"] + [
        smol_tokenizer.eos_token_id
    ]
    assert rendered.ids == expected and rendered.trained == [True] * len(expected)
    cut = render_example(example, smol_tokenizer, max_length=3)
    assert cut.ids == expected[:3] and cut.truncated and cut.answer_cut


# --- property: for any ChatML conversation, the mask is exactly the answers plus <|im_end|> ------

_content = st.text(alphabet="abcXYZ 019.,?!é'", min_size=1, max_size=20).filter(lambda s: s.strip())
# An answer that starts with spaces is not exactly its own tokens: BPE merges the header's newline with
# them into one token, which is trained (it carries answer text); the test below pins that case.
_answer = _content.filter(lambda s: not s[0].isspace())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    turns=st.lists(st.tuples(_content, _answer), min_size=1, max_size=3),
    system=st.none() | _content,
)
def test_any_chatml_conversation_trains_exactly_the_answers(smol_tokenizer, turns, system):
    pairs = [("system", system)] if system else []
    for question, answer in turns:
        pairs += [("user", question), ("assistant", answer)]
    example = conv(*pairs)
    rendered = render_example(example, smol_tokenizer)
    dicts = [{"role": r, "content": c} for r, c in pairs]
    assert rendered.ids == list(smol_tokenizer.apply_chat_template(dicts)["input_ids"])
    assert trained_text(rendered, smol_tokenizer) == "".join(a + "<|im_end|>" for _, a in turns)


def test_a_token_straddling_the_header_and_the_answer_is_trained(smol_tokenizer):
    rendered = render_example(conv(("user", "x"), ("assistant", "  0")), smol_tokenizer)
    # "\n  " is one token: half header, half answer. Training it teaches the model to start its answer
    # the way this example does; leaving it out would drop the answer's leading spaces from the loss.
    assert trained_text(rendered, smol_tokenizer) == "\n  0<|im_end|>"
