"""Inference: loading run folders, batched generation, and the generate/chat commands."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from conftest import make_tiny_model

from tunery.errors import TuneryError
from tunery.inference import (
    cut_at_stop,
    generate_batch,
    generate_ids,
    left_pad,
    load_for_inference,
    stop_token_ids,
)

PROMPTS = ["hi", "what is the capital of France, tell me now please", "2+2?", "a"]
# Greedy answers of the scrambled tiny model (below), one prompt at a time through plain transformers
# `model.generate(do_sample=False, max_new_tokens=10)` on the chat-template prompt: pinned here, so that
# tunery's batched generation is checked against ids it did not produce itself.
GOLDEN_IDS = {
    "hi": [16576, 41407, 6880, 32845, 13850, 30928, 10229, 47376, 41476, 19888],
    "what is the capital of France, tell me now please": [37310, 7742, 31264, 12782, 33364, 37845, 48468, 40770,
                                                          5427, 27591],
    "2+2?": [24517, 16139, 38660, 28299, 17698, 37774, 16139, 2274, 48732, 32254],
    "a": [16576, 41407, 36440, 4281, 39632, 43086, 22457, 40535, 13942, 22075],
}
# The same, 6 tokens, for "hello" after the system message "Be brief.".
HELLO_WITH_SYSTEM_IDS = [29800, 2285, 40449, 25715, 16139, 16139]


def scrambled(model, std: float = 0.3, seed: int = 1):
    """Larger random weights: at init scale the tiny model only repeats its last token, which would make
    generation tests pass trivially; with these, answers depend on the prompt."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model


def convs(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


def write_lora_run(tmp_path, tokenizer, status="finished"):
    """A hand-made LoRA run folder; returns (run_dir, the in-memory PEFT model it holds)."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(len(tokenizer), seed=3)
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: without this the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    info = {"base_model": str(base_dir), "adapter": "lora", "dtype": "float32", "status": status}
    (run / "run.json").write_text(json.dumps(info))
    return run, peft_model.eval()


def test_lora_run_loads_with_the_same_logits(tmp_path, smol_tokenizer):
    run, expected = write_lora_run(tmp_path, smol_tokenizer)
    model, tokenizer = load_for_inference(str(run))
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = expected(input_ids=ids).logits
        base = expected.get_base_model()
        with expected.disable_adapter():
            plain = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - plain).abs().max() > 1e-3  # the adapter is applied, not silently dropped
    assert tokenizer.chat_template == smol_tokenizer.chat_template
    assert tokenizer.pad_token_id == 2


def test_full_run_loads_its_own_weights(tmp_path, smol_tokenizer):
    model = make_tiny_model(len(smol_tokenizer), seed=5)
    run = tmp_path / "full"
    model.save_pretrained(run / "model")
    smol_tokenizer.save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base_model": "unused", "adapter": "full"}))
    loaded, _ = load_for_inference(run)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_unfinished_run_says_to_resume(tmp_path, adapter):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-10").mkdir(parents=True)
    info = {"base_model": "smollm2-135m-instruct", "adapter": adapter, "status": "running"}
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(TuneryError) as err:
        load_for_inference(str(run))
    text = err.value.render()
    assert "training did not finish" in text
    assert "tunery train CONFIG --resume" in text
    assert "status: running" in text


def test_batched_greedy_equals_one_at_a_time(smol_tokenizer, tiny_model):
    model = scrambled(tiny_model)
    golden = [GOLDEN_IDS[p] for p in PROMPTS]
    # Batches of 3 and 1 with left padding: the padded rows must answer as if alone.
    assert generate_ids(model, smol_tokenizer, convs(PROMPTS), max_new_tokens=10, batch_size=3) == golden
    assert [generate_ids(model, smol_tokenizer, [c], max_new_tokens=10)[0] for c in convs(PROMPTS)] == golden


def test_the_token_budget_splits_a_batch_and_keeps_the_answers(smol_tokenizer, tiny_model, monkeypatch):
    """Batch 32 is the default; GENERATE_TOKENS keeps long prompts a few at a time. The answers are
    the one-at-a-time answers however the budget cuts the batch."""
    import tunery.inference as inference

    model = scrambled(tiny_model)
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw["input_ids"].shape[0]) or real(**kw))
    monkeypatch.setattr(inference, "GENERATE_TOKENS", 60)  # about two of these prompts and their 10 new tokens
    got = generate_ids(model, smol_tokenizer, convs(PROMPTS), max_new_tokens=10, batch_size=32, share_prefix=False)
    assert got == [GOLDEN_IDS[p] for p in PROMPTS]
    assert sum(calls) == 4 and max(calls) < 4 and len(calls) >= 2


def test_golden_ids_are_plain_transformers_greedy(smol_tokenizer, tiny_model):
    """The pinned ids are what transformers' own generate gives today (the golden is not stale)."""
    model = scrambled(tiny_model)
    for prompt, expected in GOLDEN_IDS.items():
        ids = smol_tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=10, do_sample=False, eos_token_id=[2], pad_token_id=2)
        assert out[0, len(ids):].tolist() == expected, prompt


def test_sampling_is_seeded(smol_tokenizer, tiny_model):
    model = scrambled(tiny_model)
    run = lambda seed: generate_batch(  # noqa: E731
        model, smol_tokenizer, convs(PROMPTS[:2]), max_new_tokens=8, temperature=1.0, seed=seed
    )
    first = run(3)
    assert first == run(3)
    assert first != run(4)


def test_generation_stops_at_end_of_turn(smol_tokenizer, tiny_model):
    model = scrambled(tiny_model)
    free = generate_ids(model, smol_tokenizer, convs(["hi"]), max_new_tokens=6)[0]

    def end_third(module, args, logits):
        # From the third generated position on, <|im_end|> (id 2) wins: the answer is 2 tokens long.
        if logits.shape[1] == 1 and end_third.calls >= 2:
            logits[..., 2] += 1e4
        end_third.calls += logits.shape[1] == 1
        return logits

    end_third.calls = 0
    model.lm_head.register_forward_hook(end_third)
    ids = generate_ids(model, smol_tokenizer, convs(["hi"]), max_new_tokens=6)
    assert ids == [free[:2]]


def test_stop_ids_include_the_template_end_of_turn(smol_tokenizer):
    assert stop_token_ids(smol_tokenizer) == [2]  # ChatML: <|im_end|> is also eos
    other = copy.deepcopy(smol_tokenizer)
    other.eos_token = "<|endoftext|>"  # id 0; turns still end with <|im_end|>
    assert stop_token_ids(other) == [0, 2]


def test_cut_at_stop_and_left_pad():
    assert cut_at_stop([5, 6, 2, 7, 2], [2]) == [5, 6]
    assert cut_at_stop([5, 6], [2]) == [5, 6]
    assert cut_at_stop([0, 5], [0, 2]) == []
    ids, mask = left_pad([[4, 5, 6], [7]], pad_id=2)
    assert ids.tolist() == [[4, 5, 6], [2, 2, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture()
def patched_cli(monkeypatch, smol_tokenizer, tiny_model):
    """The chat module with the tiny model in place of loading, and a record of each generation call."""
    import tunery.cli.chat as chat

    model = scrambled(tiny_model)
    calls: list[list[dict]] = []

    def spy(model_, tokenizer, conversations, **kwargs):
        calls.extend(copy.deepcopy(conversations))
        return generate_batch(model_, tokenizer, conversations, **kwargs)

    monkeypatch.setattr(chat, "load_for_inference", lambda target: (model, smol_tokenizer))
    monkeypatch.setattr(chat, "generate_batch", spy)
    return chat, model, calls


def test_chat_keeps_history_and_resets(patched_cli, monkeypatch, capsys, smol_tokenizer):
    chat, model, calls = patched_cli
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhello\n/reset\nhello\n"))
    assert chat.run_chat("tiny", "Be brief.", max_new_tokens=6, temperature=0.0) == 0
    roles = [[m["role"] for m in c] for c in calls]
    assert roles == [
        ["system", "user"],
        ["system", "user", "assistant", "user"],
        ["system", "user"],  # /reset dropped the turns but kept the system message
    ]
    # "hello" with the system message: plain transformers greedy ids, decoded as tunery prints answers.
    expected = smol_tokenizer.decode(HELLO_WITH_SYSTEM_IDS, skip_special_tokens=True).strip()
    assert expected == "artisansARChallenges Rica Immun Immun" and calls[1][2]["content"] == expected
    out = capsys.readouterr().out
    assert out.count("bot> ") == 3
    assert out.count(expected) >= 2  # first and post-reset answers are the same greedy answer


def test_chat_exit_command(patched_cli, monkeypatch):
    chat, _, calls = patched_cli
    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\nhello\n"))
    assert chat.run_chat("tiny", None, max_new_tokens=4, temperature=0.0) == 0
    assert calls == []


def test_generate_json_prints_only_json(patched_cli, capsys, smol_tokenizer):
    chat, model, _ = patched_cli
    assert chat.run_generate("tiny", ["hi", "2+2?"], None, 6, 0.0, 0, as_json=True) == 0
    rows = json.loads(capsys.readouterr().out)
    answers = [smol_tokenizer.decode(GOLDEN_IDS[p][:6], skip_special_tokens=True).strip() for p in ("hi", "2+2?")]
    assert answers == ["fathers@@ Long condom protagonophen", "Wid Immun hops slimadicellaneous"]
    assert rows == [{"prompt": "hi", "answer": answers[0]}, {"prompt": "2+2?", "answer": answers[1]}]
