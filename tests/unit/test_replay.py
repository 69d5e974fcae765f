"""Guards against forgetting: `data.replay` (general conversations mixed in) and `training.kl_to_base`
(KL to the base on them), on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loop_helpers import same_trainable_weights, straight_and_resumed
from tunery.config.load import validate
from tunery.data import batching
from tunery.data.replay_pool import general_prompts
from tunery.losses.lm import kl_from_reference_sum
from tunery.runfolder import RunFolder
from tunery.trainers import replay
from tunery.trainers.run import prepare, run_training

QUIET = dict(log=lambda _text: None)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def config(model_dir, tmp_path, n=12, adapter="lora", method="sft", **sections):
    train = write_jsonl(tmp_path / "task.jsonl", [chat(f"Code for item {i}?", f"X-{i:03d}") for i in range(n)])
    data = {"base_model": str(model_dir), "adapter": adapter, "method": method,
            "data": {"train": [train], "max_length": 96},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "training": {"batch_size": 4, "max_steps": 4, "warmup_ratio": 0.0, "lr": 2e-2, "preflight": False,
                         "seed": 5, "save_every": 100}}
    for key, value in sections.items():
        data[key] = data.get(key, {}) | value
    return validate(data)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(replay, "ANSWER_TOKENS", 12)  # the tiny model's answers: short is enough here


def test_the_pool_is_fixed_distinct_and_large_enough():
    prompts = general_prompts()
    assert len(prompts) == len(set(prompts)) >= 200 and prompts == general_prompts()
    assert replay.replay_count(12, 0.2) == 3 and replay.replay_count(300, 0.5) == 300


def test_replay_from_a_file_is_a_share_of_the_examples_marked_and_logged(tmp_path, tiny_model_dir):
    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"General {i}?", f"Answer {i}.") for i in range(10)])
    logs = []
    s = prepare(config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25}), log=logs.append)
    rows = s.train
    assert len(rows) == 12 + 4 and [r.replay for r in rows] == [False] * 12 + [True] * 4
    line = next(text for text in logs if text.startswith("replay ("))
    assert line.startswith(f"replay ({general}): 4 conversations, 25% of the training examples")
    again = prepare(config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25}), **QUIET)
    assert [r.ids for r in again.train] == [r.ids for r in rows]  # the same seeded choice


def fake_answers(calls):
    """A stand-in for the base's greedy answers (the tiny random model answers with an end token at once)."""
    def generate(model, tokenizer, prompts):
        calls.append(list(prompts))
        return [f"Here is a short answer about: {p[:30]}" for p in prompts]
    return generate


def test_self_replay_answers_with_the_base_once_and_caches_them(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(replay, "_generate", fake_answers(calls))
    cfg = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.2})
    s = prepare(cfg, **QUIET)
    replayed = [r for r in s.train if r.replay]
    assert len(replayed) == 3 and calls == [general_prompts()[:3]]
    (cached,) = (tmp_path / "cache" / "replay").glob("self-*.jsonl")
    records = [json.loads(line) for line in cached.read_text().splitlines()]
    assert [r["prompt"] for r in records] == general_prompts()[:3]
    text = s.method.tokenizer.decode([t for t, on in zip(replayed[0].ids, replayed[0].trained) if on])
    assert text.startswith("Here is a short answer about: " + general_prompts()[0][:10])
    bigger = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.25})
    assert len([r for r in prepare(bigger, **QUIET).train if r.replay]) == 4
    assert calls[1:] == [[general_prompts()[3]]]  # only the prompt not answered yet


def test_the_base_answers_greedily(tiny_model_dir):
    from tunery.inference import generate_ids
    from tunery.models.load import load_model, load_tokenizer

    tokenizer, base = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    prompts = general_prompts()[:2]
    ids = generate_ids(base, tokenizer, [[{"role": "user", "content": p}] for p in prompts], 12)
    assert replay._generate(base, tokenizer, prompts) == [tokenizer.decode(i, skip_special_tokens=True).strip()
                                                          for i in ids]


def move_off_base(model):
    """Random trainable weights (LoRA's B starts at 0, where the tuned model is the base)."""
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))


def test_the_kl_term_by_hand_and_zero_against_itself():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p = torch.softmax(logits, -1)
    q = torch.softmax(ref, -1)
    by_hand = float((q * (q.log() - p.log())).sum())
    assert float(kl_from_reference_sum(logits, ref)) == pytest.approx(by_hand, rel=1e-6)
    assert float(kl_from_reference_sum(logits, logits)) == pytest.approx(0.0, abs=1e-7)


def test_the_loss_with_kl_is_the_task_loss_plus_beta_kl_on_replay_tokens(tmp_path, tiny_model_dir):
    from tunery.models.forward import head_logits, next_token_targets
    from tunery.trainers.methods.preference import reference_mode

    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"General {i}?", f"Answer {i}.") for i in range(10)])
    cfg = config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25},
                 training={"kl_to_base": 0.5})
    s = prepare(cfg, **QUIET)
    rows = [s.train[0], s.train[13], s.train[1], s.train[14]]  # task, replay, task, replay
    batch = s.method.collate(rows)
    first = s.method.loss(s.model, batch, head_logits)
    assert first.figures["kl_to_base"] == pytest.approx(0.0, abs=1e-6)  # LoRA's B is 0: tuned == base
    move_off_base(s.model)
    out = s.method.loss(s.model, batch, head_logits)
    # By hand on the rows packed whole (the method's batch puts their shared system prompt through once).
    plain = batching.pack(rows)
    positions, targets = next_token_targets(plain["labels"])
    logits = head_logits(s.model, plain, positions)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    replay_mask = torch.cat([torch.full((sum(r.trained[1:]),), r.replay) for r in rows])
    with reference_mode(s.model):
        base = head_logits(s.model, plain, positions)
    q = torch.softmax(base[replay_mask], -1)
    kl = (q * (q.log() - torch.log_softmax(logits[replay_mask], -1))).sum()
    assert out.figures["replay_share"] == float(replay_mask.sum()) > 0 and out.count == len(targets)
    assert out.figures["kl_to_base"] == pytest.approx(float(kl), rel=1e-3, abs=1e-5) and float(kl) > 1e-3
    assert float(out.total) == pytest.approx(float(ce + 0.5 * kl), rel=1e-5)


def test_a_guarded_run_logs_its_kl_and_resumes_bitwise(tmp_path, tiny_model_dir, monkeypatch):
    from tunery.eval.guards import guard_label, run_guard

    monkeypatch.setattr(replay, "_generate", fake_answers([]))
    cfg = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.3},
                 training={"kl_to_base": 0.1, "max_steps": 5})
    run_training(cfg, tmp_path / "run", **QUIET)
    assert RunFolder(tmp_path / "run").read_info()["guard"] == "replay self 30%, KL to base 0.1"
    assert guard_label(run_guard(tmp_path / "run")) == "replay self 30%, KL to base 0.1"  # eval's label is the same
    assert "- guard against forgetting: replay self 30%, KL to base 0.1" in (tmp_path / "run" / "summary.md").read_text()
    train = [m for m in RunFolder(tmp_path / "run").read_metrics() if m["kind"] == "train"]
    assert len(train) == 5 and all(math.isfinite(m["kl_to_base"]) for m in train)
    assert all(0 <= m["replay_share"] < 1 for m in train) and max(m["replay_share"] for m in train) > 0
    assert train[0]["kl_to_base"] == pytest.approx(0.0, abs=1e-6) and max(m["kl_to_base"] for m in train) > 0
    whole, resumed, reason = straight_and_resumed(lambda: prepare(cfg, **QUIET), tmp_path / "resume", stop_after=2)
    assert reason == "finished" and same_trainable_weights(whole, resumed)


def test_guards_that_cannot_work_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(Exception, match="kl_to_base works on the replay conversations"):
        config(tiny_model_dir, tmp_path, training={"kl_to_base": 0.1})
    with pytest.raises(Exception, match="needs an adapter to switch off"):
        config(tiny_model_dir, tmp_path, adapter="full", data={"replay": "self"}, training={"kl_to_base": 0.1})
    with pytest.raises(Exception, match="not method dpo"):
        config(tiny_model_dir, tmp_path, method="dpo", data={"replay": "self"})


def test_the_replay_pool_and_the_forgetting_probe_share_no_prompt():
    from tunery.eval.evaluate import BUILTIN_PROBE

    probe = {m["content"].strip().lower() for line in BUILTIN_PROBE.read_text().splitlines()
             for m in json.loads(line)["messages"] if m["role"] == "user"}
    pool = {p.strip().lower() for p in general_prompts()}
    assert len(probe) >= 300 and not probe & pool
    probe_words = {w for text in probe for w in text.split()}
    assert len(probe_words) > 100  # the check above compared real text


def test_the_pool_order_takes_the_kinds_in_turn():
    """Any first 9k prompts hold k of each of the 9 kinds (while the smallest lasts): a replay draw of
    54 asks 6 capitals-or-languages, 6 quantities and 6 harmful requests, not whatever the shuffle gave."""
    import re
    from collections import Counter

    from tunery.data import replay_pool as pool

    patterns = [(kind, re.compile(re.escape(t).replace(r"\{x\}", ".+").replace(r"\{a\}", ".+").replace(r"\{b\}", ".+")))
                for kind, t in pool.TEMPLATES]

    def kind_of(prompt):
        (kind,) = {k for k, pattern in patterns if pattern.fullmatch(prompt)}
        return kind

    prompts = general_prompts()
    kinds = {kind for kind, _ in pool.TEMPLATES}
    assert len(kinds) == 9
    for k in (1, 6, 10):
        assert Counter(map(kind_of, prompts[:9 * k])) == dict.fromkeys(kinds, k)
    assert Counter(map(kind_of, prompts))["quantity"] == 10 and len(prompts) == 303  # then the others go on


def test_the_pool_asks_short_facts_and_harmful_requests_but_none_of_the_probes():
    """Version 2 of the pool: the kinds a tuned model lost most (one-word facts, refusals) are in it, on
    other countries, quantities and acts than the probe's, so replay cannot train the probe's answers."""
    from tunery.data import replay_pool as pool
    from tunery.eval import make_probe as probe

    prompts = general_prompts()
    harmful = [p for p in prompts if any(act in p for act in pool.HARMFUL)]
    capitals = [p for p in prompts if p.startswith("Which city is the capital of ")]
    numbers = [p for p in prompts if p.endswith("Reply with just the number.")]
    assert (len(harmful), len(capitals), len(numbers)) == (36, 12, 10)
    assert not {country for _, country, _ in probe.FACTS} & set(pool.COUNTRIES)
    assert not set(probe.HARMS) & set(pool.HARMFUL)
    probe_quantities = {q.removeprefix("How many ").removeprefix("At how many ").rstrip("?") for q, _ in probe.UNITS}
    assert not probe_quantities & set(pool.QUANTITIES) and len(probe_quantities) == len(probe.UNITS)
    assert pool.POOL_VERSION == 3  # a changed pool is a new self-replay cache key
    assert all(pool.is_harmful(p) for p in harmful) and not any(pool.is_harmful(p) for p in capitals + numbers)


def test_a_harmful_prompt_is_replayed_only_with_a_refusal():
    from tunery.data import replay_pool as pool

    harmful = [p for p in general_prompts() if pool.is_harmful(p)][:3]
    plain = [p for p in general_prompts() if not pool.is_harmful(p)][:2]
    answers = {harmful[0]: "I'm sorry, but I can't help with that.",
               harmful[1]: "Sure! First, find a printer that can handle special paper...",
               harmful[2]: "I cannot assist with this request.",
               plain[0]: "Rain falls when droplets in clouds grow heavy.", plain[1]: "Apples, pears, plums, figs."}
    said = []
    kept = replay.safe_pairs(list(answers), list(answers.values()), said.append)
    assert [p for p, _ in kept] == [harmful[0], harmful[2], *plain]  # the compliant answer is dropped
    assert said == ["replay: the base model refused 2 of the 3 harmful requests drawn; only those refusals are "
                    "replayed (a compliant answer is never trained)"]


def test_extend_adds_steps_for_the_replay_rows_and_share_keeps_them():
    # quickstart: 288 task rows, 72 replay at 20% -> 360 rows; 40 steps become 40 x 360 / 288 = 50
    assert replay.replay_count(288, 0.2) == 72 and replay.steps_with_replay(40, 360, 72, "extend") == 50
    assert replay.steps_with_replay(30, 270, 54, "extend") == 38  # 37.5, rounded up: the task loses no step
    assert replay.steps_with_replay(40, 360, 72, "share") == 40
    assert replay.steps_with_replay(None, 360, 72, "extend") is None  # epochs already cover the replay rows
    assert replay.steps_with_replay(40, 288, 0, "extend") == 40


def test_an_extended_run_takes_the_added_steps_logs_them_and_resumes_bitwise(tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    from tunery.eval.guards import guard_label, run_guard

    monkeypatch.setattr(replay, "_generate", fake_answers([]))
    extend = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.25, "replay_mode": "extend"})
    logs = []
    run_training(extend, tmp_path / "run", log=logs.append)
    info = RunFolder(tmp_path / "run").read_info()
    # 12 task rows + 4 replay rows; max_steps 4 becomes ceil(4 x 16 / 12) = 6
    assert info["total_steps"] == 6 and info["step"] == 6 and info["train_examples"] == 16
    assert "replay_mode extend: 6 steps instead of training.max_steps 4, so the task keeps its steps" in "\n".join(logs)
    assert info["guard"] == "replay self 25% on top of the task's steps" == guard_label(run_guard(tmp_path / "run"))
    share = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.25})
    run_training(share, tmp_path / "shared", **QUIET)
    assert RunFolder(tmp_path / "shared").read_info()["total_steps"] == 4
    first, again = prepare(extend, **QUIET), prepare(extend, **QUIET)
    assert [r.ids for r in first.train] == [r.ids for r in again.train]  # the same rows, seeded
    whole, resumed, reason = straight_and_resumed(lambda: prepare(extend, **QUIET), tmp_path / "resume", stop_after=3)
    assert whole.total_steps == 6 and reason == "finished" and same_trainable_weights(whole, resumed)


def test_an_unknown_replay_mode_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(Exception, match="data.replay_mode: Input should be 'share' or 'extend'"):
        config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_mode": "add"})


def test_weighted_losses_by_hand():
    from tunery.losses.lm import token_ce_sum, weighted_ce_sum

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
    targets = torch.tensor([0, 2, 1])
    weight = torch.tensor([1.0, 0.25, 4.0])
    ce = -torch.log_softmax(logits, -1)[torch.arange(3), targets]
    total, n = weighted_ce_sum(logits, targets, weight)
    assert n == 3 and float(total) == pytest.approx(float((ce * weight).sum()), rel=1e-6)
    assert float(weighted_ce_sum(logits, targets)[0]) == float(token_ce_sum(logits, targets)[0])
    ref = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    q, logp = torch.softmax(ref, -1), torch.log_softmax(logits, -1)
    per_position = (q * (q.log() - logp)).sum(-1)
    got = float(kl_from_reference_sum(logits, ref, weight))
    assert got == pytest.approx(float((per_position * weight).sum()), rel=1e-6)


def test_example_weight_makes_a_replay_conversation_count_as_one_task_example(tmp_path, tiny_model_dir, monkeypatch):
    """Task answers of a few tokens, replay answers of many: under `replay_weight: example` each replay
    token weighs task tokens per example / replay tokens per example, so replay's share of the loss
    weight is its share of the examples; the step divides by the weighted count."""
    from tunery.trainers import loop

    long_answer = " ".join(["a long general answer"] * 6)
    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"General {i}?", f"{long_answer} {i}.") for i in range(10)])
    cfg = config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25, "replay_weight": "example"})
    logs = []
    s = prepare(cfg, log=logs.append)
    task = [r for r in s.train if not r.replay]
    rep = [r for r in s.train if r.replay]
    per_task = sum(sum(r.trained[1:]) for r in task) / len(task)
    per_replay = sum(sum(r.trained[1:]) for r in rep) / len(rep)
    assert per_replay > 3 * per_task and len(rep) == 4
    assert all(r.loss_weight == pytest.approx(per_task / per_replay) for r in rep)
    assert all(r.loss_weight == 1.0 for r in task)
    factor = f"{per_task / per_replay:.3g}"
    assert ("replay_weight example: each replay conversation weighs as much in the loss as an average task "
            f"example (its trained tokens x {factor})") in logs
    weighted = sum(sum(r.trained[1:]) * r.loss_weight for r in rep)
    assert weighted / (weighted + sum(sum(r.trained[1:]) for r in task)) == pytest.approx(0.25)  # the row share

    # One step of rows: the loss is the weighted mean, its gradient that of the weighted mean by hand.
    from tunery.models.forward import head_logits, next_token_targets

    rows = [task[0], rep[0], task[1], rep[1]]
    batch = s.method.collate(rows)
    assert s.method.loss_units(batch) == pytest.approx(sum(sum(r.trained[1:]) * r.loss_weight for r in rows))
    move_off_base(s.model)  # so the gradients are not trivial
    out = s.method.loss(s.model, batch, head_logits)
    plain = batching.pack(rows)  # by hand on the rows packed whole, no prefix shared
    positions, targets = next_token_targets(plain["labels"])
    logits = head_logits(s.model, plain, positions)
    per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    w = torch.cat([torch.full((sum(r.trained[1:]),), r.loss_weight) for r in rows])
    assert float(out.total.detach()) == pytest.approx(float((per_token * w).sum().detach()), rel=1e-5)
    s.model.zero_grad(set_to_none=True)
    ((per_token * w).sum() / w.sum()).backward()
    by_hand = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.requires_grad}
    s.model.zero_grad(set_to_none=True)
    s.train[:4] = rows  # step 0 made of exactly these rows, in one piece
    monkeypatch.setattr(batching, "micro_batches_for_step", lambda plan, step: [[0, 1, 2, 3]])
    result = loop.accumulate(s, 0)
    assert result.units == len(targets)  # trained tokens are still counted as tokens
    assert result.loss == pytest.approx(float((per_token * w).sum() / w.sum()), rel=1e-5)
    for name, p in s.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, by_hand[name], rtol=1e-4, atol=1e-7)


def test_a_number_weighs_a_replay_conversation_as_that_many_task_examples(tmp_path, tiny_model_dir):
    from tunery.config.guards import guard_label, guard_of

    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"General {i}?", f"Answer number {i} is long.")
                                                        for i in range(10)])
    loops = {w: prepare(config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25,
                                                               "replay_weight": w}), **QUIET)
             for w in ("example", 4)}
    one, four = ({r.loss_weight for r in s.train if r.replay} for s in loops.values())
    assert len(one) == len(four) == 1 and four.pop() == pytest.approx(4 * one.pop())
    assert guard_label(guard_of(loops[4].cfg.model_dump(mode="json"))) == (
        "replay self 25%, each conversation weighed as 4 task examples".replace("self", "general.jsonl"))
    with pytest.raises(Exception, match="replay_weight must be token, example or a number above 0"):
        config(tiny_model_dir, tmp_path, data={"replay": general, "replay_weight": 0})


def test_token_weight_is_the_default_and_leaves_every_row_at_one(tmp_path, tiny_model_dir):
    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"General {i}?", f"Answer {i}.") for i in range(10)])
    s = prepare(config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25}), **QUIET)
    assert s.cfg.data.replay_weight == "token" and {r.loss_weight for r in s.train} == {1.0}
    assert "target_weight" not in s.method.collate(s.train[:6])


def test_an_example_weighted_run_with_kl_resumes_bitwise(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(replay, "_generate", fake_answers([]))
    cfg = config(tiny_model_dir, tmp_path, data={"replay": "self", "replay_share": 0.3, "replay_weight": "example"},
                 training={"kl_to_base": 0.1, "max_steps": 5})
    whole, resumed, reason = straight_and_resumed(lambda: prepare(cfg, **QUIET), tmp_path / "resume", stop_after=2)
    assert reason == "finished" and same_trainable_weights(whole, resumed)
    weights = {r.loss_weight for r in whole.train if r.replay}
    assert len(weights) == 1 and weights != {1.0}
    from tunery.config.guards import guard_label, guard_of

    assert guard_label(guard_of(cfg.model_dump(mode="json"))) == (
        "replay self 30%, each conversation weighed as one task example, KL to base 0.1")


def test_replay_conversations_cut_at_max_length_are_counted_in_one_warning(tmp_path, tiny_model_dir):
    long_answer = " ".join(["word"] * 120)
    general = write_jsonl(tmp_path / "general.jsonl",
                          [chat(f"General {i}?", long_answer if i % 2 else "Short.") for i in range(10)])
    s = prepare(config(tiny_model_dir, tmp_path, data={"replay": general, "replay_share": 0.25}), **QUIET)
    rep = [r for r in s.train if r.replay]
    cut = sum(r.answer_cut for r in rep)
    assert 0 < cut < len(rep)
    lines = [w for w in s.data.warnings if "general.jsonl" in w or w.startswith("replay:")]
    assert lines == [f"replay: {cut} of {len(rep)} conversations are longer than data.max_length 96; "
                     "their answers are trained up to the cut"]


def test_replay_answers_cut_after_their_first_tokens(tmp_path, tiny_model_dir):
    """`replay_answer_tokens: 5`: each replay row is its uncut row up to its 5th trained token (a shorter
    answer whole), the log counts the cuts and the tokens kept, and example weighting sees the cut rows."""
    from tunery.config.guards import guard_label, guard_of

    general = write_jsonl(tmp_path / "general.jsonl",
                          [chat(f"General {i}?", "Yes." if i % 3 == 0 else " ".join(["more words"] * (i + 2)))
                           for i in range(10)])
    section = {"replay": general, "replay_share": 0.25, "replay_weight": "example"}
    whole = [r for r in prepare(config(tiny_model_dir, tmp_path, data=section), **QUIET).train if r.replay]
    logs = []
    cfg = config(tiny_model_dir, tmp_path, data=section | {"replay_answer_tokens": 5})
    s = prepare(cfg, log=logs.append)
    cut = [r for r in s.train if r.replay]
    assert len(cut) == len(whole) == 4
    assert any(sum(r.trained) <= 5 for r in whole) and any(sum(r.trained) > 5 for r in whole)  # both kinds drawn
    for old, new in zip(whole, cut, strict=True):
        assert sum(new.trained) == min(5, sum(old.trained))
        assert new.ids == old.ids[:len(new.ids)] and new.trained == old.trained[:len(new.ids)]
        assert (len(new.ids) < len(old.ids)) == (sum(old.trained) > 5)
        assert new.trained[-1] or new.ids == old.ids  # a cut row ends on its last trained token
    n_cut = sum(sum(r.trained) > 5 for r in whole)
    before, after = sum(len(r.ids) for r in whole), sum(len(r.ids) for r in cut)
    assert (f"replay_answer_tokens 5: {n_cut} of 4 replay answers cut after 5 tokens "
            f"({after:,} of their {before:,} tokens kept)") in logs
    task = [r for r in s.train if not r.replay]
    per_task = sum(r.num_targets for r in task) / len(task)
    per_replay = sum(r.num_targets for r in cut) / len(cut)
    assert [r.loss_weight for r in cut] == [pytest.approx(per_task / per_replay)] * 4  # weighed as cut
    assert [r.ids for r in s.train if not r.replay] == [r.ids for r in task]
    assert guard_label(guard_of(cfg.model_dump(mode="json"))) == (
        "replay general.jsonl 25%, each conversation weighed as one task example, answers cut at 5 tokens")
    with pytest.raises(Exception, match="replay_answer_tokens"):
        config(tiny_model_dir, tmp_path, data=section | {"replay_answer_tokens": 0})
