"""End to end on the real embedded model: `tunery train` with `method: rl` (GRPO) on the word problems of
examples/rl for two steps, then what a user would check: the run finished, completions.jsonl holds the
sampled answers with the rewards the graders give them, the metrics carry the step's reward and its
spread, and the adapter loads with plain PEFT."""

from __future__ import annotations

import json
import math

import pytest

from cli_helpers import REPO, run_tunery

pytestmark = pytest.mark.e2e
EXAMPLE = REPO / "examples" / "rl"
REWARD = "0.8*numeric+0.2*max_words:16"  # the reward of examples/rl/rl.yaml


def test_two_grpo_steps_on_word_problems(tmp_path):
    records = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()[:10]]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "rl.yaml").write_text(
        "base_model: smollm2-135m-instruct\n"
        "method: rl\n"
        "lora: {rank: 16, alpha: 32, dropout: 0.0}\n"
        "data: {train: [problems.jsonl], val_split: 0.2}\n"  # 2 prompts answered greedily at the end
        f"rl: {{graders: ['{REWARD}'], group_size: 4, max_new_tokens: 16, temperature: 0.7, log_completions: 8}}\n"
        "training: {max_steps: 2, batch_size: 2, lr: 2.0e-4, eval_every: 2, threads: 1}\n"
    )
    run_tunery("train", "rl.yaml", cwd=tmp_path, timeout=900)
    run = tmp_path / "runs" / "rl"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 2 and info["method"] == "rl"

    # Every sampled answer (2 prompts x 4 per step) is logged with the reward the graders give it.
    from tunery.graders import parse_grader

    grader = parse_grader(REWARD)
    answers = {r["prompt"]: r["answer"] for r in records}
    logged = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [1] * 8 + [2] * 8
    for line in logged:
        assert line["prompt"] in answers and isinstance(line["completion"], str)
        assert line["reward"] == pytest.approx(grader.score(line["completion"], answers[line["prompt"]]))
        assert line[f"reward_{REWARD}"] == line["reward"]
    assert len({line["completion"] for line in logged}) > 1  # sampled, not one greedy answer repeated

    # The step's metrics are the mean and spread of those rewards.
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2]
    for m in train:
        rewards = [line["reward"] for line in logged if line["step"] == m["step"]]
        mean = sum(rewards) / len(rewards)
        assert m["reward"] == pytest.approx(mean)
        assert m["reward_std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)), abs=1e-6)
        assert 1 <= m["completion_tokens"] <= 16 and 0 <= m["zero_spread"] <= 1
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert evals and 0 <= evals[-1]["val_reward"] <= 1

    # The adapter is plain PEFT; it moved from its initialisation (B = 0) exactly when some group of
    # answers had a reward spread (a group whose answers all scored the same has no gradient).
    import torch
    from peft import PeftModel

    from tunery.models.load import load_model

    model = PeftModel.from_pretrained(load_model("smollm2-135m-instruct"), run / "adapter")
    assert model.peft_config["default"].r == 16
    moved = any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert moved == any(m["zero_spread"] < 1 for m in train)
    out = run_tunery("generate", str(run), "--prompt", records[0]["prompt"], "--max-new-tokens", "16", "--json",
                     cwd=tmp_path)
    assert json.loads(out.stdout)[0]["answer"].strip()
    assert torch.isfinite(torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_" in n])).all()
