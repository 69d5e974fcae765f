"""The built-in forgetting probe: its file, its generator, its graders, the per-kind summary, the advice
it leads to and the label of a run trained with a guard against forgetting."""

from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from tunery.errors import TuneryError
from tunery.eval import aggregate, make_probe
from tunery.eval.evaluate import BUILTIN_PROBE, EvalOptions, _answers_by_cap, _probe_items
from tunery.graders import parse_graders

KINDS = {"instruction", "fact", "arithmetic", "format", "refusal", "multi_turn"}
WRONG = ["", "I don't know."]
COMPLIANT = "Sure, here are the steps: first, get the materials you need."  # wrong for a refusal item


def records() -> list[dict]:
    return [json.loads(line) for line in BUILTIN_PROBE.read_text(encoding="utf-8").splitlines()]


def test_the_probe_has_300_items_of_six_kinds_with_at_least_40_each():
    found = records()
    counts = Counter(r["kind"] for r in found)
    assert len(found) >= 300 and set(counts) == KINDS and min(counts.values()) >= 40
    assert len({json.dumps(r["messages"]) for r in found}) == len(found)  # no item twice
    multi = [r for r in found if r["kind"] == "multi_turn"]
    assert all(sum(m["role"] == "user" for m in r["messages"]) >= 2 for r in multi)
    assert {r["max_new_tokens"] for r in found} <= set(range(8, 33))


def test_every_grader_passes_its_reference_and_fails_wrong_answers():
    for record in records():
        graders = parse_graders(record["graders"])
        reference = record["messages"][-1]["content"]
        assert all(g.score(reference, reference, record) == 1.0 for g in graders), record
        for wrong in WRONG + ([COMPLIANT] if record["kind"] == "refusal" else []):
            assert min(g.score(wrong, reference, record) for g in graders) == 0.0, (record, wrong)


def test_refusals_pass_refusing_answers_only():
    refusal = next(r for r in records() if r["kind"] == "refusal")
    grader = parse_graders(refusal["graders"])[0]
    for said in ["I'm sorry, but I can't help with that.", "I cannot assist with this request.",
                 "I’m afraid I can’t do that.", "I won't help with that."]:
        assert grader.score(said) == 1.0, said
    for said in ["To do that, you need a few things.", "Step 1: find the password."]:
        assert grader.score(said) == 0.0, said


def test_the_generator_writes_the_shipped_file_byte_for_byte(tmp_path, monkeypatch, capsys):
    assert make_probe.render(make_probe.build()) == BUILTIN_PROBE.read_text(encoding="utf-8")
    assert make_probe.main(["--check"]) == 0
    edited = tmp_path / "probe.jsonl"
    edited.write_text(BUILTIN_PROBE.read_text(encoding="utf-8").replace("Paris", "Lyon", 1), encoding="utf-8")
    monkeypatch.setattr(make_probe, "PROBE_FILE", edited)
    assert make_probe.main(["--check"]) == 1
    assert make_probe.main([]) == 0 and edited.read_text(encoding="utf-8") == BUILTIN_PROBE.read_text(encoding="utf-8")


def test_answers_are_generated_per_cap_and_returned_in_item_order(monkeypatch):
    calls = []

    def fake(model, tokenizer, prompts, max_new_tokens, temperature=0.0, seed=0, batch_size=8):
        calls.append((max_new_tokens, [p[-1]["content"] for p in prompts]))
        return [{"answer": p[-1]["content"] + f"/{max_new_tokens}", "tokens": 1, "seconds": 0.1} for p in prompts]

    monkeypatch.setattr("tunery.eval.measure.generate_timed", fake)
    items = [SimpleNamespace(id=str(n), record={"max_new_tokens": cap} if cap else {}) for n, cap in
             enumerate([16, None, 12, 16])]
    prompts = [[{"role": "user", "content": f"q{n}"}] for n in range(4)]
    answers = _answers_by_cap(None, None, items, prompts, 32, EvalOptions())
    assert calls == [(12, ["q2"]), (16, ["q0", "q3"]), (32, ["q1"])]
    assert [a["answer"] for a in answers] == ["q0/16", "q1/32", "q2/12", "q3/16"]


def test_a_probe_record_with_a_bad_cap_is_refused_before_any_model_loads(tmp_path):
    probe = tmp_path / "mine.jsonl"
    probe.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                                 "graders": ["numeric"], "max_new_tokens": 0}) + "\n")
    with pytest.raises(TuneryError, match="max_new_tokens must be a whole number of at least 1"):
        _probe_items(EvalOptions(probe=str(probe)))


def _item(n: int, kind: str | None):
    return SimpleNamespace(id=f"p:{n}", prompt=[{"role": "user", "content": f"q{n}"}],
                           record={"kind": kind} if kind else {})


def _row(scores: list[float]) -> dict:
    return {"per_example": [{"answer": str(s), "scores": {"own": s}} for s in scores], "loss": None}


def test_forgetting_is_summarised_per_kind():
    # 10 fact items: 9 pass before, 1 after (8 lost); 10 arithmetic items: 5 before, 6 after (1 gained).
    items = [_item(n, "fact") for n in range(10)] + [_item(n, "arithmetic") for n in range(10, 20)]
    before = [1.0] * 9 + [0.0] + [1.0] * 5 + [0.0] * 5
    after = [1.0] + [0.0] * 9 + [1.0] * 6 + [0.0] * 4
    f = aggregate.forgetting_summary(_row(before), _row(after), items, seed=0)
    assert (f["n"], f["lost"], f["gained"]) == (20, 8, 1)
    assert f["before"]["mean"] == pytest.approx(14 / 20) and f["after"]["mean"] == pytest.approx(7 / 20)
    fact, arith = f["by_kind"]["fact"], f["by_kind"]["arithmetic"]
    assert list(f["by_kind"]) == ["fact", "arithmetic"]
    assert (fact["n"], fact["before"]["mean"], fact["after"]["mean"], fact["lost"], fact["gained"]) == (10, 0.9, 0.1, 8, 0)
    assert fact["test"]["test"] == "mcnemar_exact" and fact["test"]["p"] == pytest.approx(2 / 2**8)
    assert fact["test"]["diff"] == pytest.approx(-0.8) and fact["test"]["significant"]
    assert fact["before"]["low"] <= 0.9 <= fact["before"]["high"] and fact["after"]["n"] == 10
    assert (arith["before"]["mean"], arith["after"]["mean"], arith["lost"], arith["gained"]) == (0.5, 0.6, 0, 1)
    assert arith["test"]["p"] == 1.0 and not arith["test"]["significant"]
    assert aggregate.significant_drops(f) == ["all", "fact"]
    assert [c["kind"] for c in f["changed"]] == ["fact"] * 8 + ["arithmetic"]


def test_a_probe_without_kinds_is_not_split():
    items = [_item(n, None) for n in range(4)]
    f = aggregate.forgetting_summary(_row([1, 1, 0, 0]), _row([0, 1, 0, 1]), items)
    assert f["by_kind"] == {} and (f["lost"], f["gained"]) == (1, 1)


def _forgetting(by_kind: dict, overall_p: float, guard: str = "") -> dict:
    def entry(before, after, p):
        return {"before": {"mean": before}, "after": {"mean": after},
                "test": {"test": "mcnemar_exact", "p": p, "diff": after - before, "significant": p < 0.05}}
    return {**entry(0.5, 0.4, overall_p), "by_kind": {k: entry(*v) for k, v in by_kind.items()}, "guard_label": guard}


def test_advice_names_the_kinds_that_fell_and_the_guards():
    from tunery.eval.advise import forgetting_clause

    kinds = {"refusal": (0.8, 0.2, 0.0039), "fact": (0.7, 0.6, 0.5), "format": (0.6, 0.1, 0.012)}
    assert forgetting_clause(_forgetting(kinds, 0.2)) == (
        "; but it cost general ability in refusal 80% to 20% (McNemar p=0.0039), format 60% to 10% (McNemar "
        "p=0.012) on the probe; to keep it, train with data.replay: self (replay_share 0.15, replay_mode "
        "extend, replay_weight 4, replay_answer_tokens 16: docs/forgetting.md) or training.kl_to_base")
    assert forgetting_clause(_forgetting(kinds, 0.01)).startswith(
        "; but it cost general ability: the probe fell from 50% to 40% (McNemar p=0.01), most in refusal 80% to 20%")
    guarded = forgetting_clause(_forgetting(kinds, 0.2, "replay self 20%"))
    assert guarded.endswith("even with its guard (replay self 20%): raise the replay share or weight, or the KL weight")
    assert forgetting_clause(_forgetting({"fact": (0.7, 0.6, 0.5)}, 0.3)) == ""


def test_a_significant_drop_in_one_kind_is_warned_about():
    from tunery.eval.evaluate import _warnings

    probe = _forgetting({"refusal": (0.8, 0.2, 0.0039), "fact": (0.7, 0.6, 0.5)}, 0.2) | {"lost": 9, "gained": 2}
    result = {"leakage": {"warning": None}, "overfitting": {}, "forgetting": {"runs/q": probe}, "n_examples": 40}
    assert _warnings(result) == ["runs/q: the probe fell significantly in refusal 80% to 20%: the tuning cost that ability"]


def _run_folder(tmp_path, config: str):
    folder = tmp_path / "runs" / "guarded"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config)
    return folder


def test_a_runs_guard_is_read_from_its_config_and_labelled(tmp_path):
    from tunery.eval.guards import guard_label, run_guard

    both = _run_folder(tmp_path / "a", "base_model: m\ndata:\n  train: [t.jsonl]\n  replay: self\n  replay_share: 0.2\n"
                       "training:\n  kl_to_base: 0.1\n  lr: 0.0001\n")
    assert run_guard(both) == {"replay": "self", "replay_share": 0.2, "kl_to_base": 0.1}
    assert guard_label(run_guard(both)) == "replay self 20%, KL to base 0.1"
    replay_file = _run_folder(tmp_path / "b", "data: {train: [t.jsonl], replay: general.jsonl, replay_share: 0.05}\n")
    assert guard_label(run_guard(replay_file)) == "replay general.jsonl 5%"
    kl_only = _run_folder(tmp_path / "c", "data: {train: [t.jsonl], replay: null}\ntraining: {kl_to_base: 0.05}\n")
    assert guard_label(run_guard(kl_only)) == "KL to base 0.05"
    none = _run_folder(tmp_path / "d", "data: {train: [t.jsonl]}\ntraining: {kl_to_base: 0.0}\n")
    assert run_guard(none) is None and guard_label(None) == ""
    assert run_guard(tmp_path / "nowhere") is None


def test_the_guard_and_the_kinds_are_printed_and_in_the_report():
    from tunery.cli.evaluation import format_forgetting, row_label
    from tunery.eval.report_html import forgetting_section

    items = [_item(n, "fact") for n in range(10)] + [_item(n, "refusal") for n in range(10, 14)]
    f = aggregate.forgetting_summary(_row([1.0] * 9 + [0.0] * 5), _row([1.0] + [0.0] * 13), items)
    f |= {"probe": "builtin", "guard": {"replay": "self", "replay_share": 0.2, "kl_to_base": 0.1},
          "guard_label": "replay self 20%, KL to base 0.1"}
    lines = format_forgetting("runs/g", f)
    assert lines[0] == ("forgetting probe (14 items) runs/g: base 64.3% / after 7.1% (with guard: replay self 20%, "
                        "KL to base 0.1) (-57.1%, p=0.00781; 8 lost, 0 gained)")
    assert re.match(r"\s+fact\s+10\s+90\.0% \[.*\]\s+10\.0% \[.*\]\s+-80\.0%\s+0\.00781\s+8\s+0 \*$", lines[2])
    assert re.match(r"\s+refusal\s+4\s+0\.0% \[.*\]\s+0\.0% \[.*\]\s+\+0\.0%\s+1\s+0\s+0$", lines[3])
    assert lines[-1] == "  (* a significant drop: p < 0.05)"
    assert row_label({"name": "tuned", "guard": "replay self 20%, KL to base 0.1"}) == "tuned (with guard: replay self 20%, KL to base 0.1)"
    html = forgetting_section({"forgetting": {"runs/g": f}})
    assert "runs/g: base / after (with guard: replay self 20%, KL to base 0.1), per kind of probe item" in html
    assert 'data-key="forgetting.runs/g.by_kind.fact.after.mean" data-value="0.1"' in html
    assert '<tr class="diff"><td>fact</td>' in html and '<tr><td>refusal</td>' in html
