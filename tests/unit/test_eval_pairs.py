"""`tunery eval` on preference pairs (tunery.eval.pairs) on the tiny model: log-probs by hand, the base
as its own reference, a DPO run against its base, a reward run read back from its folder, the CLI text
and the reward_model grader."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pref_helpers import pair, pairs_file, pref_config, write_jsonl
from tunery.data.render import render_example
from tunery.errors import TuneryError
from tunery.eval.evaluate import EvalOptions, evaluate
from tunery.eval.pairs import is_pairs_file, read_pairs
from tunery.models.load import load_model, load_tokenizer
from tunery.trainers.run import run_training

QUIET = dict(log=lambda _text: None)
OPTS = EvalOptions(max_length=64, batch_size=3)


def hand_logp(model, tokenizer, example) -> float:
    """Summed log-prob of the trained tokens, one plain padded-free forward of one sequence."""
    row = render_example(example, tokenizer, "last", 64)
    ids = torch.tensor([row.ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logps[t, row.ids[t + 1]]) for t in range(len(row.ids) - 1) if row.trained[t + 1])


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("pairs-dpo")
    cfg = pref_config(tiny_model_dir, pairs_file(folder, 12), training={"max_steps": 6})
    run_training(cfg, folder / "run", **QUIET)
    return folder / "run", pairs_file(folder, 6, offset=40, name="heldout.jsonl")


def test_pair_files_are_told_from_conversations(tmp_path):
    openai = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
              "preferred_output": [{"role": "assistant", "content": "Hello."}],
              "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert is_pairs_file(pairs_file(tmp_path, 2))
    assert is_pairs_file(write_jsonl(tmp_path / "openai.jsonl", [openai]))
    assert not is_pairs_file(write_jsonl(tmp_path / "chat.jsonl", [chat]))
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(1), {"prompt": "Hi", "chosen": "A", "rejected": "A"}])
    with pytest.raises(TuneryError, match="bad.jsonl:2"):
        read_pairs(bad)


def test_the_base_scores_each_answer_by_its_log_prob_and_is_its_own_reference(tmp_path, tiny_model_dir):
    data = pairs_file(tmp_path, 5)
    result = evaluate([str(tiny_model_dir)], data, OPTS, **QUIET)
    assert result["kind"] == "pairs" and result["n_examples"] == 5 and result["comparisons"] == []
    (base,) = result["systems"]
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    expected = []
    for p, entry in zip(read_pairs(data), base["per_example"]):
        chosen, rejected = (hand_logp(model, tokenizer, p.conversation(side)) for side in ("chosen", "rejected"))
        assert entry["logp_chosen"] == pytest.approx(chosen, abs=1e-4)
        assert entry["logp_rejected"] == pytest.approx(rejected, abs=1e-4)
        assert entry["scores"]["accuracy"] == 0.5  # margin against itself: 0, a tie
        expected.append(float(chosen > rejected))
    assert base["scores"]["logp_accuracy"]["mean"] == pytest.approx(sum(expected) / 5)
    assert base["scores"]["accuracy"] == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 5, "level": 0.95}


def test_a_dpo_run_is_scored_against_its_base_on_held_out_pairs(dpo_run, tiny_model_dir, monkeypatch):
    from tunery.eval import pairs

    run, heldout = dpo_run
    passes = []
    real = pairs.answer_logps
    monkeypatch.setattr(pairs, "answer_logps", lambda *a, **k: passes.append(1) or real(*a, **k))
    result = evaluate([str(run)], heldout, OPTS, **QUIET)
    assert len(passes) == 2  # the run, and its adapter off; the base row reuses the latter
    base, tuned = result["systems"]
    assert (base["system"]["kind"], tuned["system"]["kind"], tuned["system"]["name"]) == ("base", "policy", "tuned (dpo)")
    assert tuned["system"]["reference"].endswith("(adapter off)")
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    for p, b, t in zip(read_pairs(heldout), base["per_example"], tuned["per_example"]):
        # the adapter switched off is the base model
        assert t["ref_logp_chosen"] == pytest.approx(hand_logp(model, tokenizer, p.conversation("chosen")), abs=1e-4)
        assert (b["logp_chosen"], b["logp_rejected"]) == (t["ref_logp_chosen"], t["ref_logp_rejected"])
        margin = (t["logp_chosen"] - t["ref_logp_chosen"]) - (t["logp_rejected"] - t["ref_logp_rejected"])
        assert t["scores"]["accuracy"] == float(margin > 0)
        assert t["log_ratio_chosen"] - t["log_ratio_rejected"] == pytest.approx(margin, abs=1e-5)
    # six steps on "the right sum is chosen" carry over to sums the run never saw
    assert tuned["scores"]["accuracy"]["mean"] == 1.0 and tuned["mean_log_ratio_margin"] > 0
    tests = {(c["a_column"], c["b_column"]): c for c in result["comparisons"]}
    vs_chance = tests[("accuracy", "accuracy")]
    assert vs_chance["test"] == "sign_exact" and (vs_chance["wins_a"], vs_chance["wins_b"]) == (6, 0)
    assert vs_chance["p"] == pytest.approx(2 / 2**6) and vs_chance["diff"] == pytest.approx(0.5)
    assert tests[("logp_accuracy", "logp_accuracy")]["test"] == "mcnemar_exact"
    assert "tuned (dpo) ranks the chosen answer first on 100%" in result["summary"]


def test_a_reward_run_is_read_back_with_its_trained_head(tmp_path, tiny_model_dir):
    from tunery.eval.pairs import answer_rewards, render_pairs
    from tunery.runfolder import RunFolder
    from tunery.trainers import loop
    from tunery.trainers.run import prepare

    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 12), method="reward", training={"max_steps": 8, "lr": 2e-2})
    s = prepare(cfg, **QUIET)
    loop.train(s, RunFolder(tmp_path / "run"), loop.LoopState(), lambda: False)
    s.method.final_artefact(s.model, RunFolder(tmp_path / "run"))
    RunFolder(tmp_path / "run").update_info(base_model=str(tiny_model_dir), method="reward", adapter="lora")
    heldout = pairs_file(tmp_path, 6, offset=40, name="heldout.jsonl")
    rows, _ = render_pairs(read_pairs(heldout), s.method.tokenizer, 64)
    in_memory = answer_rewards(s.model.eval(), rows, s.method.tokenizer.pad_token_id)
    result = evaluate([str(tmp_path / "run")], heldout, OPTS, **QUIET)
    tuned = result["systems"][1]
    assert tuned["system"]["kind"] == "reward" and set(tuned["scores"]) == {"accuracy"}
    read_back = torch.tensor([[e["reward_chosen"], e["reward_rejected"]] for e in tuned["per_example"]], dtype=torch.float64)
    torch.testing.assert_close(read_back, in_memory, rtol=0, atol=1e-4)  # the saved head, not a new random one
    assert tuned["scores"]["accuracy"]["mean"] == float((in_memory[:, 0] > in_memory[:, 1]).float().mean())
    assert [(c["a_column"], c["b_column"]) for c in result["comparisons"]] == [("accuracy", "accuracy"),
                                                                                ("accuracy", "logp_accuracy")]


def test_the_command_prints_the_table_and_writes_both_files(dpo_run, tmp_path, capsys):
    from tunery.cli.evaluation import run_eval

    run, heldout = dpo_run
    assert run_eval([str(run)], heldout, OPTS, tmp_path / "out", as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["system", "preference", "accuracy", "log-prob"]
    assert lines[2].startswith("base  ") and "50.0% [50.0%, 50.0%]" in lines[2]
    assert lines[3].startswith("tuned (dpo)") and "100.0% [100.0%, 100.0%]" in lines[3]
    assert any(line.startswith("tuned (dpo) preference accuracy vs base preference accuracy: +50.0%") for line in lines)
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    html = (tmp_path / "out" / "report.html").read_text()
    assert saved["kind"] == "pairs" and f'data-key="systems.1.scores.accuracy.mean" data-value="1.0"' in html


def _reward_run(tmp_path, tiny_model_dir):
    cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 12), method="reward", training={"max_steps": 4, "lr": 2e-2})
    run_training(cfg, tmp_path / "rm", **QUIET)
    return tmp_path / "rm"


def test_the_reward_model_grader_scores_sigmoid_of_the_reward_given_the_prompt(tmp_path, tiny_model_dir, monkeypatch):
    from tunery.eval import pairs
    from tunery.graders import parse_grader
    from tunery.trainers import reward_grader

    run = _reward_run(tmp_path, tiny_model_dir)
    loads = []
    real = reward_grader.load_reward_run
    monkeypatch.setattr(reward_grader, "load_reward_run", lambda path: loads.append(path) or real(path))
    grader = parse_grader(f"reward_model:{run}")
    assert loads == [] and grader.kind == "reward_model"  # parsing checks the run, loads nothing
    p = pair(3)
    records = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": "x"}]},
               {"prompt": p["prompt"]}, {"prompt": p["prompt"], "chosen": "a", "rejected": "b"}]
    scores = grader.param.score_many([p["chosen"], p["chosen"], p["rejected"]], [None] * 3, records)
    model, tokenizer = real(run)
    rows, _ = pairs.render_pairs(read_pairs(write_jsonl(tmp_path / "one.jsonl", [p])), tokenizer, 64)
    reward = pairs.answer_rewards(model, rows, tokenizer.pad_token_id)[0]
    sigmoid = [1 / (1 + math.exp(-float(r))) for r in reward]
    assert scores == pytest.approx([sigmoid[0], sigmoid[0], sigmoid[1]], abs=1e-5)
    assert grader.param.score(p["rejected"], None, {"prompt": p["prompt"]}) == pytest.approx(sigmoid[1], abs=1e-5)
    assert len(loads) == 1  # loaded on the first score, then kept
    with pytest.raises(TuneryError, match="needs the prompt"):
        grader.score(p["chosen"])  # a caller without the record cannot give the prompt
    with pytest.raises(TuneryError, match="found no prompt"):
        grader.param.score("x", None, {"text": "no prompt here"})
    monkeypatch.setattr("tunery.graders.reward_model._scorer", None)  # a caller that never imported the scorer
    with pytest.raises(TuneryError, match="no model scorer installed"):
        grader.param.score(p["chosen"], None, {"prompt": p["prompt"]})


def test_the_reward_model_grader_refuses_what_is_not_a_reward_run(tmp_path, dpo_run):
    from tunery.graders import parse_grader

    with pytest.raises(TuneryError, match="not a run folder"):
        parse_grader(f"reward_model:{tmp_path}")
    with pytest.raises(TuneryError, match="trained with method: dpo"):
        parse_grader(f"reward_model:{dpo_run[0]}")
    with pytest.raises(TuneryError, match="needs a run folder"):
        parse_grader("reward_model")
