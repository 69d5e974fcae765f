"""Online RL (GRPO / RLOO) on the shared loop, on the tiny model: sampled answers end with the template's
stop token and are scored with the record's fields, advantages come from the group, the buffer of
samples survives a checkpoint, and a resumed run samples and trains exactly as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from loop_helpers import same_trainable_weights, straight_and_resumed
from pref_helpers import pref_config, write_jsonl
from tunery.errors import TuneryError
from tunery.inference import stop_token_ids
from tunery.runfolder import RunFolder
from tunery.trainers import loop
from tunery.trainers.methods.rl import completions_from_tensors, completions_to_tensors, reference_of
from tunery.trainers.run import prepare

QUIET = dict(log=lambda _text: None)


def prompts_file(tmp_path, n=8):
    return write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)}
                                               for i in range(n)])


def rl_config(model_dir, train, **rl):
    settings = {"graders": ["max_words:3", "numeric"], "max_new_tokens": 6, "group_size": 3} | rl
    return pref_config(model_dir, train, method="rl", rl=settings, lora={"dropout": 0.1},
                       training={"max_steps": 4, "save_every": 100, "eval_every": 100})


def test_a_step_samples_groups_scores_them_and_trains_on_the_answers_only(tmp_path, tiny_model_dir):
    s = prepare(rl_config(tiny_model_dir, prompts_file(tmp_path)), **QUIET)
    stops = stop_token_ids(s.method.tokenizer, s.model)
    pieces = loop.step_pieces(s, 0)
    answers = [c for piece in pieces for c in piece]
    assert len(answers) == 2 * 3  # batch 2 prompts x group 3
    prompts = {p.location: p for p in s.train}
    for k, c in enumerate(answers):
        n_prompt = c.trained.index(True)
        answer = c.ids[n_prompt:]
        assert not any(c.trained[:n_prompt]) and all(c.trained[n_prompt:]) and 1 <= len(answer) <= 6
        assert all(t not in stops for t in answer[:-1])  # stops at the first stop token, kept and trained
    rewards = torch.tensor([c.reward for c in answers]).view(2, 3)
    advantages = torch.tensor([c.advantage for c in answers]).view(2, 3)
    centred = rewards - rewards.mean(1, keepdim=True)
    torch.testing.assert_close(advantages, centred / (rewards.std(1, keepdim=True) + 1e-4), atol=1e-6, rtol=0)
    assert loop.step_pieces(s, 0)[0][0] is answers[0]  # the same step reuses its samples
    assert reference_of({"answer": "7", "reference": "x"}) == "7" and len(prompts) == 8


def test_rloo_and_a_clear_error_without_a_reward(tmp_path, tiny_model_dir):
    s = prepare(rl_config(tiny_model_dir, prompts_file(tmp_path), algorithm="rloo"), **QUIET)
    answers = [c for piece in loop.step_pieces(s, 0) for c in piece]
    rewards = torch.tensor([c.reward for c in answers]).view(2, 3)
    others = (rewards.sum(1, keepdim=True) - rewards) / 2
    torch.testing.assert_close(torch.tensor([c.advantage for c in answers]).view(2, 3), rewards - others,
                               atol=1e-6, rtol=0, check_dtype=False)
    with pytest.raises(TuneryError, match="method rl needs a reward"):
        pref_config(tiny_model_dir, prompts_file(tmp_path), method="rl")


def test_the_sample_buffer_round_trips_through_tensors(tmp_path, tiny_model_dir):
    s = prepare(rl_config(tiny_model_dir, prompts_file(tmp_path), updates_per_generation=2), **QUIET)
    loop.step_pieces(s, 0)
    index, micro = s.method.buffer
    back_index, back = completions_from_tensors(completions_to_tensors(s.method.buffer), 2)
    assert back_index == index == 0 and back == micro and micro[0][0].old_logps is not None


@pytest.mark.parametrize("updates", [1, 2])
def test_rl_resumes_bitwise_including_the_sampler(tmp_path, tiny_model_dir, updates):
    """Interrupted after step 3: with two updates per sampling that is mid-way through a sample batch."""
    cfg = rl_config(tiny_model_dir, prompts_file(tmp_path), updates_per_generation=updates)
    whole, resumed, reason = straight_and_resumed(lambda: prepare(cfg, **QUIET), tmp_path, stop_after=3)
    assert reason == "finished" and same_trainable_weights(whole, resumed)
    rewards = [[m["reward"] for m in RunFolder(tmp_path / name).read_metrics() if m["kind"] == "train"]
               for name in ("a", "b")]
    assert len(rewards[0]) == 4 and rewards[0] == rewards[1]


def test_a_run_logs_rewards_and_a_sample_of_completions(tmp_path, tiny_model_dir):
    from tunery.trainers.run import run_training

    cfg = rl_config(tiny_model_dir, prompts_file(tmp_path, 10), log_completions=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_split": 0.2}),
                                 "training": cfg.training.model_copy(update={"max_steps": 2, "eval_every": 2})})
    info = run_training(cfg, tmp_path / "run", **QUIET)
    assert info["status"] == "finished"
    train = [m for m in RunFolder(tmp_path / "run").read_metrics() if m["kind"] == "train"]
    assert {"reward", "reward_std", "reward_numeric", "reward_max_words:3", "kl", "clip_fraction",
            "completion_tokens", "zero_spread"} <= set(train[0])
    assert train[0]["trained_tokens"] == train[0]["completion_tokens"] * 2 * 3  # tokens of 6 answers
    logged = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [1, 1, 2, 2]
    assert {"prompt", "completion", "reward", "advantage", "reward_numeric"} <= set(logged[0])
    evals = [m for m in RunFolder(tmp_path / "run").read_metrics() if m["kind"] == "eval"]
    assert evals[0]["val_loss"] == pytest.approx(1 - evals[0]["val_reward"]) and "val_ppl" not in evals[0]


def test_a_resumed_run_logs_each_steps_completions_once(tmp_path, tiny_model_dir):
    """Killed after step 4's answers were logged but before its checkpoint: the resumed run samples
    steps 3 and 4 again, and completions.jsonl holds them once, as metrics.jsonl does."""
    import shutil

    from tunery.trainers.run import run_training

    cfg = rl_config(tiny_model_dir, prompts_file(tmp_path, 10), log_completions=2)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 4, "save_every": 2})})
    run_training(cfg, tmp_path / "run", **QUIET)
    log = tmp_path / "run" / "completions.jsonl"
    whole = log.read_text()
    assert [json.loads(line)["step"] for line in whole.splitlines()] == [1, 1, 2, 2, 3, 3, 4, 4]
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000004")  # as if killed before it was written
    log.write_text(whole + '{"step": 4, "prom')  # and while a line was being written
    run_training(cfg, tmp_path / "run", resume=True, **QUIET)
    assert log.read_text() == whole  # the same steps, the same answers (the sampler resumes exactly)
