"""The server's small parts on their own: token choice, text release with stop strings, the JSON string
guard over xgrammar, request validation and the slot cache's masks."""

from __future__ import annotations

import json

import pytest
import torch

from tunery.grammar import ESCAPED, INSIDE, OUTSIDE, GrammarBook, _lex
from tunery.serve.protocol import ApiError, ChatRequest, CompletionRequest, parse
from tunery.serve.sampling import SamplingParams, choose_tokens, logprobs_of, make_generator
from tunery.serve.slots import decode_mask, prefill_mask
from tunery.serve.text import TextStream


def test_greedy_rows_take_the_argmax_and_sampled_rows_stay_inside_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [2.0, 1.9, -5.0, float("-inf")]])
    greedy = SamplingParams(max_tokens=1, temperature=0.0)
    assert choose_tokens(logits, [greedy, greedy], [None, None]) == [1, 0]
    nucleus = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5)  # row 1: token 0 alone holds > 0.5
    picks = {choose_tokens(logits[1:], [nucleus], [make_generator(s)])[0] for s in range(200)}
    assert picks == {0}
    wide = SamplingParams(max_tokens=1, temperature=1.0)
    picks = [choose_tokens(logits[1:], [wide], [make_generator(s)])[0] for s in range(400)]
    assert set(picks) == {0, 1}  # never the -inf token, and both likely ones
    share = picks.count(0) / len(picks)  # p(0) = e^0.1 / (e^0.1 + 1) = 0.525 (and ~0 for e^-7)
    assert 0.45 < share < 0.60


def test_a_seeded_draw_does_not_depend_on_the_other_rows():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(max_tokens=1, temperature=0.8, top_p=0.9)
    alone = choose_tokens(logits[1:2], [p], [make_generator(9)])
    together = choose_tokens(logits, [p, p, SamplingParams(1, temperature=0.0)],
                             [make_generator(1), make_generator(9), None])
    assert together[1] == alone[0]


def test_logprobs_are_the_models_before_any_mask():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    found = logprobs_of(logits, [0], [2])[0]
    expected = torch.log_softmax(logits, -1)[0]
    assert found.logprob == pytest.approx(float(expected[0]))
    assert [t for t, _ in found.top] == [2, 1]


def test_text_is_held_back_while_it_may_start_a_stop_string(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("The cat sat. END of story")
    stream = TextStream(tok, stop=("END",))
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) == "The cat sat. " and stream.stopped
    assert "".join(TextStream(tok).push(t) for t in ids) + "" == "The cat sat. END of story"


def test_a_character_split_over_tokens_is_released_whole(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("naïve 漢字")
    stream = TextStream(tok)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "naïve 漢字"
    assert len(ids) > len([p for p in pieces if p])  # some tokens released nothing on their own


def test_a_stop_string_spanning_tokens_cuts_before_it(smol_tokenizer):
    tok = smol_tokenizer
    stream = TextStream(tok, stop=("a room",))
    text = "".join(stream.push(t) for t in tok.encode("Lena needs a room in Oslo")) + stream.flush()
    assert text == "Lena needs "


def test_json_lexer_states():
    assert _lex(OUTSIDE, b'{"a') == (INSIDE, False)
    assert _lex(INSIDE, b'b\\') == (ESCAPED, False)
    assert _lex(ESCAPED, b'"c') == (INSIDE, False)  # the escaped quote stays in the string
    assert _lex(OUTSIDE, b'\n\t "x') == (INSIDE, False)  # whitespace between values is fine
    assert _lex(INSIDE, b"x\ny") == (INSIDE, True)
    assert _lex(OUTSIDE, b'"\t') == (INSIDE, True)


def test_xgrammar_admits_control_characters_in_bounded_strings_and_the_guard_masks_them(smol_tokenizer):
    import xgrammar as xgr

    tok = smol_tokenizer
    book = GrammarBook(tok, len(tok), [2])
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 8}}, "required": ["s"]}
    row = book.matcher(book.compile({"type": "json_schema", "schema": schema}))
    for t in tok.encode('{"s": "ab'):
        assert row.accept_token(t)
    control = [i for i, b in enumerate(book._vocab) if b in (b"\x11", b"\t", b"\x00")]
    bitmask = xgr.allocate_token_bitmask(1, len(tok))
    row.matcher.fill_next_token_bitmask(bitmask, 0)
    bare = torch.zeros(1, len(tok))
    xgr.apply_token_bitmask_inplace(bare, bitmask)
    assert all(bare[0, i] == 0 for i in control)  # xgrammar 0.2.9 alone would allow them (invalid JSON)
    from tunery.grammar import apply_grammars

    guarded = torch.zeros(1, len(tok))
    apply_grammars(guarded, [row])
    assert all(guarded[0, i] == float("-inf") for i in control)
    assert guarded[0, tok.encode('"')[0]] == 0  # closing the string is still allowed


def test_strict_request_validation_names_the_field():
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse(ChatRequest, json.dumps(good).encode()).model == "m"
    cases = {
        b"{not json": None,
        b"[1, 2]": None,
        json.dumps(good | {"temperature": "hot"}).encode(): "temperature",
        json.dumps(good | {"max_tokens": 1.5}).encode(): "max_tokens",
        json.dumps(good | {"max_tokens": True}).encode(): "max_tokens",
        json.dumps(good | {"n": 99}).encode(): "n",
        json.dumps(good | {"stop": ["a"] * 5}).encode(): "stop",
        json.dumps(good | {"logit_bias": {"1": 2}}).encode(): "logit_bias",
        json.dumps(good | {"frequency_penalty": 0.5}).encode(): "frequency_penalty",
        json.dumps({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).encode(): "messages.0.role",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}': "temperature",
        b'{"model": "m", "messages": []}': "messages",
        b'{"model": "m"}': "messages",
        b'{"a":' * 100000 + b"1" + b"}" * 100000: None,
    }
    for body, param in cases.items():
        with pytest.raises(ApiError) as err:
            parse(ChatRequest, body)
        assert err.value.status == 400 and err.value.param == param, (body[:60], err.value.message)
    assert parse(CompletionRequest, b'{"model": "m", "prompt": [1, 2, 3]}').prompts() == [[1, 2, 3]]
    assert parse(CompletionRequest, b'{"model": "m", "prompt": ["a", "b"]}').prompts() == ["a", "b"]


def test_masks_let_each_row_see_its_own_tokens_only():
    m = prefill_mask([3, 1])
    assert m.shape == (2, 1, 3, 3)
    assert m[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert m[1, 0, 0].tolist() == [True, False, False]
    d = decode_mask(torch.tensor([2, 0]), 4)
    assert d[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]
