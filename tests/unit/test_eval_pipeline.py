"""`evaluate` end to end on the tiny model with canned answers: the table, intervals, tests, best system,
forgetting, leakage and overfitting signals, and the report holding exactly eval.json's numbers."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from eval_helpers import SYSTEM, booking, canned_generation, is_tuned, make_run_folder, reference_of, write_jsonl
from tunery.eval.evaluate import EvalOptions, evaluate
from tunery.eval.report_html import write_outputs
from tunery.runfolder import RunFolder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    return make_run_folder(tmp_path_factory.mktemp("evalrun"), tiny_model_dir)


def tuned_right_base_wrong(model, prompt):
    # The tuned model answers every booking; the base answers only when examples are in the prompt
    # (few-shot and retrieval), and then gets the city wrong half the time.
    if is_tuned(model):
        return reference_of(prompt)
    if len(prompt) > 2:
        answer = json.loads(reference_of(prompt))
        return json.dumps(answer | {"city": "Paris"}) if answer["nights"] % 2 else json.dumps(answer)
    return "Sure! I can help with that booking."


def probe_answer(model, prompt):
    # The tuned model "forgets" numbers: it answers -1 where the base answers the reference.
    text = prompt[-1]["content"]
    if "Answer with just the number" in text:
        return "-1" if is_tuned(model) else _probe_reference(text)
    return "I am not sure."


def _probe_reference(text):
    from tunery.eval.evaluate import BUILTIN_PROBE

    for line in BUILTIN_PROBE.read_text().splitlines():
        record = json.loads(line)
        if record["messages"][0]["content"] == text:
            return record["messages"][1]["content"]
    raise AssertionError(text)


@pytest.fixture(scope="module")
def result(run_dir, tiny_model_dir):
    patch = pytest.MonkeyPatch()

    def answer(model, prompt):
        return probe_answer(model, prompt) if prompt[0]["role"] != "system" else tuned_right_base_wrong(model, prompt)

    patch.setattr("tunery.eval.measure.generate_timed", canned_generation(answer))
    try:
        data = run_dir.parent.parent / "heldout.jsonl"
        yield evaluate([str(run_dir)], str(data), EvalOptions(seed=0), log=lambda _m: None)
    finally:
        patch.undo()


def row(result, name):
    return next(r for r in result["systems"] if r["system"]["name"] == name)


def test_table_rows_scores_and_best(result):
    names = [r["system"]["name"] for r in result["systems"]]
    assert names == ["tuned", "base zero-shot", "base few-shot (k=3)", "base retrieval (bm25, k=3)"]
    assert result["graders"] == ["exact", "json", "json_match"]  # references are JSON: chosen automatically
    assert result["n_examples"] == 4 and result["pool_size"] == 8
    tuned, zero, few = row(result, "tuned"), row(result, "base zero-shot"), row(result, "base few-shot (k=3)")
    assert tuned["scores"]["exact"]["mean"] == 1.0 and zero["scores"]["exact"]["mean"] == 0.0
    assert zero["scores"]["json"]["mean"] == 0.0 and few["scores"]["json"]["mean"] == 1.0
    # Held-out people: Ida (3 nights, odd: wrong city), Jon (9, odd), Kai (2), Lia (4) -> 2 of 4 right.
    assert few["scores"]["exact"]["mean"] == 0.5
    assert tuned["latency_s"] == 0.5 and tuned["tokens_generated"] == 20 and tuned["tokens_per_s"] == 10.0
    assert result["best"] == "tuned"
    zero_test = next(c for c in result["comparisons"] if c["b"] == "base zero-shot")
    assert (zero_test["test"], zero_test["p"], zero_test["wins_a"]) == ("mcnemar_exact", 2 / 16, 4)
    assert not zero_test["significant"]  # 4 of 4 is not enough evidence at 5%: said, not hidden


def test_losses_are_real_numbers_per_system(result):
    for r in result["systems"]:
        assert r["loss"]["tokens"] > 4 * 10  # each reference is a JSON line of 15+ tokens plus <|im_end|>
        assert 5.0 < r["loss"]["loss"] < 20.0  # a random 2-layer model over a 49k vocabulary (ln 49152 = 10.8)
    assert row(result, "tuned")["loss"]["tokens"] == row(result, "base zero-shot")["loss"]["tokens"]


def test_shots_recorded_and_retrieval_picks_similar_examples(result):
    few = row(result, "base few-shot (k=3)")["per_example"]
    assert len({tuple(e["shots"]) for e in few}) == 1 and len(few[0]["shots"]) == 3  # the same 3 for all
    rag = row(result, "base retrieval (bm25, k=3)")["per_example"]
    assert all(len(e["shots"]) == 3 for e in rag)
    # "Kai Stone ... 2 nights" shares "2 nights" with Ben Kato and Hal Roth: the most similar go last.
    assert {s.rsplit(":", 1)[1] for s in rag[2]["shots"][1:]} == {"2", "8"}


def test_forgetting_probe_before_and_after(result, run_dir):
    f = result["forgetting"][str(run_dir)]
    assert f["n"] == 300 and f["probe"] == "builtin"
    # 61 items end with "Answer with just the number" (all 50 arithmetic items and 11 facts): the base
    # answers them, the tuned model does not.
    assert f["before"]["mean"] == pytest.approx(61 / 300) and f["after"]["mean"] == 0.0
    assert (f["lost"], f["gained"], f["test"]["p"]) == (61, 0, 2 / 2**61)
    kinds = f["by_kind"]
    assert list(kinds) == ["instruction", "fact", "arithmetic", "format", "refusal", "multi_turn"]
    assert (kinds["arithmetic"]["before"]["mean"], kinds["arithmetic"]["after"]["mean"], kinds["arithmetic"]["lost"]) == (1.0, 0.0, 50)
    assert (kinds["fact"]["before"]["mean"], kinds["fact"]["lost"], kinds["fact"]["test"]["p"]) == (11 / 50, 11, 2 / 2**11)
    assert all(kinds[k]["before"]["mean"] == kinds[k]["after"]["mean"] == 0.0 for k in ("instruction", "format", "refusal"))
    assert f["guard"] is None and f["guard_label"] == ""
    assert f"{run_dir}: the general-ability probe fell from 20% to 0% (61 items lost; most in fact 22% to 0%, " \
           "arithmetic 100% to 0%): the tuning cost general ability" in result["warnings"]
    assert "cost general ability" in result["summary"]


def test_signals_overfitting_and_no_leak(result, run_dir):
    over = result["overfitting"][str(run_dir)]
    assert [p["step"] for p in over["points"]] == [2, 4, 6, 8]
    assert over["points"][1]["train_loss"] == pytest.approx((1.4 + 1.2) / 2)
    assert "rose from 1.000 (step 4) to 1.300 (step 8)" in over["warning"]
    assert result["leakage"]["exact"] == 0 and result["leakage"]["near"] == 0


def test_summary_names_the_approach_with_its_figures(result):
    # 4 of 4 against few-shot's 2 of 4 is the best score, but not yet significant: the sentence says so.
    assert result["summary"] == (
        "The evidence leans to fine-tuning: tuned 100% (95% CI 100%-100%) exact on 4 examples against "
        "base few-shot (k=3) 50% (95% CI 0%-100%), but the difference is not significant (McNemar p=0.5); "
        "evaluate more examples to be sure; but it cost general ability: the probe fell from 20% to 0% "
        "(McNemar p=8.7e-19), most in fact 22% to 0% (McNemar p=0.00098), arithmetic 100% to 0% (McNemar "
        "p=1.8e-15); to keep it, train with data.replay: self (replay_share 0.15, replay_mode extend, "
        "replay_weight 4, replay_answer_tokens 16: docs/forgetting.md) or training.kl_to_base.")


class Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values, self.images, self.tables = {}, [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-value" in attrs:
            self.values[attrs["data-key"]] = float(attrs["data-value"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "table" and "id" in attrs:
            self.tables.add(attrs["id"])


def test_report_holds_the_numbers_of_eval_json(result, run_dir):
    json_path, html_path = write_outputs(result, run_dir, {str(run_dir): RunFolder(run_dir).read_metrics()})
    saved = json.loads(json_path.read_text())
    cells = Cells()
    cells.feed(html_path.read_text())
    assert {"comparison", "significance", "forgetting"} <= cells.tables
    expected = {}
    for i, r in enumerate(saved["systems"]):
        for label in saved["graders"]:
            expected[f"systems.{i}.scores.{label}.mean"] = r["scores"][label]["mean"]
        expected |= {f"systems.{i}.loss.loss": r["loss"]["loss"], f"systems.{i}.latency_s": r["latency_s"],
                     f"systems.{i}.tokens_generated": r["tokens_generated"]}
    for i, c in enumerate(saved["comparisons"]):
        expected |= {f"comparisons.{i}.diff": c["diff"], f"comparisons.{i}.p": c["p"]}
    f = saved["forgetting"][str(run_dir)]
    expected |= {f"forgetting.{run_dir}.before.mean": f["before"]["mean"], f"forgetting.{run_dir}.after.mean": f["after"]["mean"]}
    for kind, k in f["by_kind"].items():
        key = f"forgetting.{run_dir}.by_kind.{kind}"
        expected |= {f"{key}.before.mean": k["before"]["mean"], f"{key}.after.mean": k["after"]["mean"],
                     f"{key}.test.p": k["test"]["p"]}
    assert {k: cells.values.get(k) for k in expected} == pytest.approx(expected)
    assert len(cells.images) == 3 and all(src.startswith("data:image/png;base64,iVBOR") for src in cells.images)
    assert saved["summary"] in html_path.read_text().replace("&#x27;", "'")
    assert not re.search(r"(src|href)=\"(http|//)", html_path.read_text())  # nothing to fetch: opens offline


def test_pool_duplicates_are_never_shown_as_shots(run_dir, tmp_path, monkeypatch):
    # The evaluated example is also in the training file: it must not be put in its own prompt.
    data = write_jsonl(tmp_path / "leaky.jsonl", [booking("Ana Costa", "Lima", 3)])
    seen = []
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(lambda m, p: seen.append(p) or "x"))
    out = evaluate([str(run_dir)], str(data), EvalOptions(probe=None, baselines=("rag",), k=8), log=lambda _m: None)
    rag = row(out, "base retrieval (bm25, k=8)")
    assert len(rag["per_example"][0]["shots"]) == 7 and not any(s.endswith(":1") for s in rag["per_example"][0]["shots"])
    assert out["leakage"]["exact"] == 1 and "also appear in the training data" in out["warnings"][0]
    assert [m["role"] for m in seen[-1]][:2] == ["system", "user"] and seen[-1][0]["content"] == SYSTEM


def test_the_runs_eval_graders_are_the_default_and_cli_graders_win(run_dir, tmp_path, monkeypatch):
    import shutil

    import yaml

    copy = tmp_path / "runs" / "configured"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["eval"]["graders"] = ["json", "max_words:3"]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(lambda m, p: '{"a": 1}'))
    data = str(run_dir.parent.parent / "heldout.jsonl")
    quiet = dict(log=lambda _m: None)
    out = evaluate([str(copy)], data, EvalOptions(probe=None, baselines=()), **quiet)
    assert out["graders"] == ["json", "max_words:3"] and out["systems"][0]["scores"]["json"]["mean"] == 1.0
    out = evaluate([str(copy)], data, EvalOptions(probe=None, baselines=(), graders=["exact"]), **quiet)
    assert out["graders"] == ["exact"]


def test_a_merged_run_scores_the_same_loss_as_the_adapter_on_its_base(run_dir):
    from tunery.eval.evaluate import load_target, read_run_target
    from tunery.eval.items import read_eval_items
    from tunery.eval.measure import answer_loss
    from tunery.inference import load_run

    items = read_eval_items(str(run_dir.parent.parent / "heldout.jsonl"))
    prompts, refs = [i.prompt for i in items], [i.reference for i in items]
    merged, tokenizer = load_target(str(run_dir), {str(run_dir): read_run_target(run_dir)})
    adapter, _ = load_run(run_dir)
    assert not hasattr(merged, "peft_config") and hasattr(adapter, "peft_config")
    got, want = answer_loss(merged, tokenizer, prompts, refs), answer_loss(adapter, tokenizer, prompts, refs)
    assert got["tokens"] == want["tokens"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_a_moved_run_without_its_training_file_gets_zero_shot_rows_only(run_dir, tmp_path, monkeypatch):
    import shutil

    import yaml

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"]["train"] = [str(tmp_path / "gone.jsonl")]
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(lambda m, p: "x"))
    said = []
    out = evaluate([str(moved)], str(run_dir.parent.parent / "heldout.jsonl"), EvalOptions(probe=None), log=said.append)
    assert [r["system"]["name"] for r in out["systems"]] == ["tuned", "base zero-shot"]
    assert any("gone.jsonl is not here" in line for line in said) and out["leakage"]["checked"] is False


def test_a_guarded_run_is_labelled_and_a_probe_without_kinds_is_not_split(run_dir, tmp_path, monkeypatch):
    # The guard keys are not in this branch's schema yet, so the run folder's config cannot hold them:
    # the reader of config.yaml is replaced by what it returns for `data.replay: self` (tested on a
    # real config.yaml in test_eval_probe.py).
    from tunery.cli.evaluation import format_details, format_table
    from tunery.eval.guards import guard_of

    guard = guard_of({"data": {"replay": "self", "replay_share": 0.2}, "training": {"kl_to_base": 0.1}})
    monkeypatch.setattr("tunery.eval.guards.run_guard", lambda path: guard if path == str(run_dir) else None)
    probe = write_jsonl(tmp_path / "mine.jsonl", [
        {"messages": [{"role": "user", "content": f"What is {n} + 1? Answer with just the number."},
                      {"role": "assistant", "content": str(n + 1)}], "graders": ["numeric"]} for n in range(4)])
    def answer(model, prompt):  # the base adds 1 right, the tuned model forgot how
        text = prompt[-1]["content"]
        if not text.endswith("just the number."):
            return "x"
        return "-1" if is_tuned(model) else str(int(text.split()[2]) + 1)

    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(answer))
    out = evaluate([str(run_dir)], str(run_dir.parent.parent / "heldout.jsonl"),
                   EvalOptions(probe=str(probe), baselines=("zero",)), log=lambda _m: None)
    f = out["forgetting"][str(run_dir)]
    assert (f["guard_label"], f["by_kind"], f["before"]["mean"], f["after"]["mean"]) == ("replay self 20%, KL to base 0.1", {}, 1.0, 0.0)
    assert [r["system"].get("guard") for r in out["systems"]] == ["replay self 20%, KL to base 0.1", None]
    assert format_table(out).splitlines()[2].startswith("tuned (with guard: replay self 20%, KL to base 0.1)  ")
    assert (f"forgetting probe (4 items) {run_dir}: base 100.0% / after 0.0% (with guard: replay self 20%, KL to base 0.1) "
            "(-100.0%, p=0.125; 4 lost, 0 gained)") in format_details(out).splitlines()
