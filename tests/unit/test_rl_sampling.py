"""The sampler of method rl (our own decode loop): the answers are those the model gives token by token
(checked against transformers' greedy `generate` at a near-zero temperature, with left-padded prompts
of different lengths and answers that stop at different steps), each prompt goes through the model once
for its whole group, stopped answers leave the batch, and temperature and top_p draw from the right
distribution."""

from __future__ import annotations

import math

import torch

from tunery.inference import left_pad
from tunery.trainers.methods.rl import draw_tokens, sample_answers, sampling_probs

PROMPTS = [[5, 17, 300, 41, 9], [7, 7, 1200, 88, 14, 90, 301, 3000, 12],
           [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55]]


def greedy_generate(model, prompts, max_new_tokens, stop_ids=None):
    ids, mask = left_pad(prompts, 2)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=stop_ids, pad_token_id=2, top_k=None, top_p=None, temperature=None)
    return out[:, ids.shape[1]:].tolist()


def through_first_stop(tokens, stop_ids):
    for pos, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:pos + 1]
    return tokens


def test_near_zero_temperature_gives_generates_greedy_answers_for_every_answer_of_a_group(smol_tokenizer, tiny_model):
    free = greedy_generate(tiny_model, PROMPTS, 8)  # no stop token: 8 tokens each
    stop_ids = sorted({free[0][2], free[1][5]})  # answers then stop after 3, 6 and (maybe) 8 tokens
    expected = [through_first_stop(row, stop_ids) for row in free]
    assert len({len(e) for e in expected}) > 1  # the answers stop at different steps
    state = torch.get_rng_state()
    answers = sample_answers(tiny_model, smol_tokenizer, PROMPTS, 3, 8, 1e-6, 1.0, 0, stop_ids)
    assert answers == [e for e in expected for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    # Cut into calls of at most 2 answers, the same answers come out.
    assert sample_answers(tiny_model, smol_tokenizer, PROMPTS, 3, 8, 1e-6, 1.0, 0, stop_ids, max_rows=2) == answers


def test_each_prompt_runs_once_per_group_and_stopped_answers_leave_the_batch(smol_tokenizer, tiny_model):
    free = greedy_generate(tiny_model, PROMPTS, 8)
    stop_ids = sorted({free[0][2], free[1][5]})
    lengths = [len(through_first_stop(row, stop_ids)) for row in free]
    shapes = []
    hook = tiny_model.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        sample_answers(tiny_model, smol_tokenizer, PROMPTS, 4, 8, 1e-6, 1.0, 0, stop_ids)
    finally:
        hook.remove()
    assert shapes[0] == (3, 12)  # one prefill of the 3 prompts, not of 12 copies
    # Decode step k feeds token k of the answers that have not stopped yet, 4 per prompt.
    assert shapes[1:] == [(4 * sum(n > k for n in lengths), 1) for k in range(1, max(lengths))]
    assert shapes[-1][0] < 12  # the answers that stopped were dropped


def test_sampling_is_seeded_and_temperature_one_really_samples(smol_tokenizer, tiny_model):
    state = torch.get_rng_state()
    one = sample_answers(tiny_model, smol_tokenizer, PROMPTS, 2, 6, 1.0, 1.0, 11, [2])
    assert torch.equal(torch.get_rng_state(), state)
    assert one == sample_answers(tiny_model, smol_tokenizer, PROMPTS, 2, 6, 1.0, 1.0, 11, [2])
    assert one != sample_answers(tiny_model, smol_tokenizer, PROMPTS, 2, 6, 1.0, 1.0, 12, [2])
    assert one[0] != one[1]  # two answers to one prompt differ


def test_every_sampled_answer_ends_at_its_first_stop_token_or_at_max_new_tokens(smol_tokenizer, tiny_model):
    stop_ids = list(range(0, len(smol_tokenizer), 4))  # a quarter of the vocabulary stops: lengths vary
    answers = sample_answers(tiny_model, smol_tokenizer, PROMPTS, 4, 10, 1.0, 1.0, 3, stop_ids, max_rows=5)
    stops = set(stop_ids)
    assert len(answers) == 12
    for answer in answers:
        first = next((k for k, t in enumerate(answer) if t in stops), None)
        assert (first == len(answer) - 1) if first is not None else len(answer) == 10
    lengths = {len(a) for a in answers}
    assert len(lengths) > 2 and 10 in lengths  # some stopped early, at different steps, some ran to the end


def test_a_lora_wrapped_model_samples_its_own_greedy_answers_and_keeps_training_mode(smol_tokenizer, tiny_model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)  # init_lora_weights=False: the adapter changes the answers, so it must be applied
    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    model.train()
    free = greedy_generate(model, PROMPTS, 7)
    with model.disable_adapter():
        assert greedy_generate(model, PROMPTS, 7) != free
    stop_ids = [free[2][3]]
    answers = sample_answers(model, smol_tokenizer, PROMPTS, 2, 7, 1e-6, 1.0, 0, stop_ids)
    assert answers == [through_first_stop(row, stop_ids) for row in free for _ in range(2)]
    assert model.training  # given back in the mode it came in (the loop's train mode, dropout on)


def frequencies(logits, temperature, top_p, n=20000):
    tokens = draw_tokens(logits.repeat(n, 1), temperature, top_p, torch.Generator().manual_seed(0))
    return (torch.bincount(tokens, minlength=logits.shape[-1]).double() / n).tolist()


def test_draw_tokens_temperature_and_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # Temperature 2: probabilities proportional to sqrt(p) = 0.707, 0.548, 0.387, 0.224 (sum 1.866).
    roots = [math.sqrt(p) for p in (0.5, 0.3, 0.15, 0.05)]
    for seen, want in zip(frequencies(logits, 2.0, 1.0), [r / sum(roots) for r in roots]):
        assert abs(seen - want) < 0.015
    # top_p 0.7: the nucleus is {0, 1} (0.5 < 0.7 <= 0.8), renormalised to 0.625 / 0.375.
    seen = frequencies(logits, 1.0, 0.7)
    assert seen[2] == seen[3] == 0 and abs(seen[0] - 0.625) < 0.015
    # top_p 0.79 is reached by {0, 1} (0.8); 0.81 needs token 2 as well.
    assert frequencies(logits, 1.0, 0.79)[2] == 0 and frequencies(logits, 1.0, 0.81)[2] > 0
    # A tiny top_p keeps the most likely token only.
    assert frequencies(logits, 1.0, 0.01) == [1.0, 0.0, 0.0, 0.0]


def test_the_nucleus_is_the_one_transformers_keeps():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(1)) * 3
    for temperature, top_p in [(1.0, 0.3), (0.7, 0.9), (1.3, 0.95), (1.0, 0.999)]:
        scaled = TemperatureLogitsWarper(temperature)(None, logits)
        theirs = TopPLogitsWarper(top_p)(None, scaled).softmax(-1)
        ours = sampling_probs(logits, temperature, top_p)
        assert torch.equal(ours > 0, theirs > 0)  # the same tokens kept, row by row
        torch.testing.assert_close(ours / ours.sum(-1, keepdim=True), theirs, rtol=1e-5, atol=1e-7)
