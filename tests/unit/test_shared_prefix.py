"""The prompt prefix all rows share is computed once, and answers stay those of unshared generation."""

from __future__ import annotations

import pytest
import torch

from tunery.inference import generate_ids, prompt_ids
from tunery.shared_prefix import MIN_SHARED, can_share, common_prefix, shared_prefix

SYSTEM = "You route customer messages to one team: billing, shipping, returns or technical support."


def conversations(n: int) -> list[list[dict]]:
    words = ["invoice", "parcel", "refund", "crash", "charge", "tracking", "broken", "login", "late"]
    return [[{"role": "system", "content": SYSTEM},
             {"role": "user", "content": " ".join(words[i % len(words):] + words[:i % 3]) + f" #{i}"}]
            for i in range(n)]


def test_common_prefix_leaves_each_row_a_token_of_its_own():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == [1, 2, 3]
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]  # the shorter row keeps its last token
    assert common_prefix([[7, 1], [8, 1]]) == [] and common_prefix([]) == []


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_answers_equal_unshared_generation(tiny_model, smol_tokenizer, temperature):
    convs = conversations(11)  # batches of 4, 4 and 3
    options = dict(max_new_tokens=6, temperature=temperature, seed=3, batch_size=4)
    shared = generate_ids(tiny_model, smol_tokenizer, convs, **options)
    plain = generate_ids(tiny_model, smol_tokenizer, convs, share_prefix=False, **options)
    one_by_one = [generate_ids(tiny_model, smol_tokenizer, [c], max_new_tokens=6)[0] for c in convs]
    assert shared == plain
    if temperature == 0.0:
        assert shared == one_by_one
    if temperature > 0:
        assert len({tuple(a) for a in shared}) > 1  # sampled per row, not one answer copied


def test_the_prefix_runs_through_the_model_once(tiny_model, smol_tokenizer):
    convs = conversations(8)
    rows = [prompt_ids(smol_tokenizer, c) for c in convs]
    prefix = common_prefix(rows)
    assert len(prefix) >= MIN_SHARED
    widths = []
    hook = tiny_model.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        generate_ids(tiny_model, smol_tokenizer, convs, max_new_tokens=1, batch_size=4)
    finally:
        hook.remove()
    own = [max(len(r) for r in rows[i:i + 4]) - len(prefix) for i in (0, 4)]
    assert widths[0] == (1, len(prefix))  # once, for the whole call
    assert widths[1:] == [(4, own[0]), (4, own[1])]  # each batch computes only its rows' own tokens


def test_sliding_window_models_and_short_prefixes_are_not_shared(tiny_model, smol_tokenizer):
    assert can_share(tiny_model)
    tiny_model.config.sliding_window = 8
    tiny_model.config.use_sliding_window = True
    assert not can_share(tiny_model)
    tiny_model.config.sliding_window = None
    rows = [[5, 6, 7, 8], [5, 6, 7, 9]]
    assert shared_prefix(tiny_model, rows, torch.device("cpu")) is None  # 3 tokens: not worth it


@torch.inference_mode()
def test_next_token_logits_equal_those_of_the_whole_prompt(tiny_model, smol_tokenizer):
    from tunery.inference import left_pad

    rows = [prompt_ids(smol_tokenizer, c) for c in conversations(5)]
    prefix = shared_prefix(tiny_model, rows, torch.device("cpu"))
    ids, mask, extra = prefix.batch(rows, smol_tokenizer.pad_token_id)
    cache = next(iter(extra.values()))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix.ids):]
    shared = tiny_model(input_ids=ids[:, len(prefix.ids):], attention_mask=mask, position_ids=positions,
                        **{prefix.cache_name: cache}).logits[:, -1]
    whole_ids, whole_mask = left_pad(rows, smol_tokenizer.pad_token_id)
    whole = tiny_model(input_ids=whole_ids, attention_mask=whole_mask,
                       position_ids=(whole_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    alone = torch.stack([tiny_model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
    assert torch.allclose(shared, alone, atol=1e-5) and torch.allclose(whole, alone, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the rows differ, so this can fail
