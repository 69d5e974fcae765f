"""End to end on the real embedded SmolLM2-135M-Instruct: a short quickstart run trained here, then
`tunery eval` against base zero-shot, few-shot and retrieval on 8 held-out examples, with the built-in
forgetting probe, and the report opened in headless Chromium."""

from __future__ import annotations

import json

import pytest

from cli_helpers import REPO, run_tunery
from eval_helpers import blue_pixels, report_dom

pytestmark = pytest.mark.e2e
QUICK = REPO / "examples" / "quickstart"


@pytest.fixture(scope="module")
def quickstart_eval(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qs-eval")
    (folder / "train.jsonl").write_text("".join(open(QUICK / "train.jsonl").readlines()[:24]))
    (folder / "heldout.jsonl").write_text("".join(open(QUICK / "heldout.jsonl").readlines()[:8]))
    (folder / "qs.yaml").write_text(
        "base_model: smollm2-135m-instruct\n"
        "data: {train: [train.jsonl], val_split: 0.25, max_length: 256}\n"
        "training: {max_steps: 6, batch_size: 4, lr: 1.0e-3, eval_every: 3, seed: 42}\n")
    run_tunery("train", "qs.yaml", cwd=folder, timeout=900)
    run = folder / "runs" / "qs"
    out = run_tunery("eval", str(run), "--data", "heldout.jsonl", "--max-new-tokens", "40", "--json",
                     cwd=folder, timeout=900)
    return run, json.loads(out.stdout)


def row(result, name):
    return next(r for r in result["systems"] if r["system"]["name"] == name)


def test_tuned_against_its_baselines_on_the_same_examples(quickstart_eval):
    run, result = quickstart_eval
    assert result["graders"] == ["exact", "json", "json_match"] and result["n_examples"] == 8
    assert [r["system"]["name"] for r in result["systems"]] == [
        "tuned", "base zero-shot", "base few-shot (k=3)", "base retrieval (bm25, k=3)"]
    assert result["pool_size"] == 24 and result["pool_files"][0].endswith("train.jsonl")
    tuned, base = row(result, "tuned"), row(result, "base zero-shot")
    # Six LoRA steps already make the reference answers far more likely than under the base model.
    assert tuned["loss"]["loss"] < base["loss"]["loss"] / 2
    # Six steps teach the format (the same six steps give exact JSON answers in test_e2e_embedded): the
    # tuned model writes more valid JSON and more correct bookings than the base, strictly.
    scores = {name: {g: r["scores"][g]["mean"] for g in ("exact", "json", "json_match")}
              for name, r in (("tuned", tuned), ("base", base))}
    assert scores["tuned"]["json"] > scores["base"]["json"], scores
    assert scores["tuned"]["json_match"] > scores["base"]["json_match"], scores
    assert base["scores"]["exact"]["mean"] == 0.0  # the base model never writes the exact compact JSON
    for r in result["systems"]:
        assert all(0 < e["tokens"] <= 40 for e in r["per_example"]) and r["tokens_per_s"] > 0
    rag = row(result, "base retrieval (bm25, k=3)")
    assert all(len(e["shots"]) == 3 for e in rag["per_example"])
    assert result["best"] in {r["system"]["name"] for r in result["systems"]}
    assert result["summary"].startswith(("The evidence", "No approach"))


def test_forgetting_probe_and_signals(quickstart_eval):
    run, result = quickstart_eval
    probe = result["forgetting"][str(run)]
    assert probe["n"] == 300 and 0.3 <= probe["before"]["mean"] <= 0.6  # the base passes about 40%
    assert set(probe["by_kind"]) == {"instruction", "fact", "arithmetic", "format", "refusal", "multi_turn"}
    assert probe["lost"] + probe["gained"] == len(probe["changed"])
    assert [p["step"] for p in result["overfitting"][str(run)]["points"]] == [3, 6]
    assert result["leakage"]["checked"] and result["leakage"]["exact"] == 0


def test_the_report_renders_with_its_table_and_plots(quickstart_eval, tmp_path):
    run, result = quickstart_eval
    dom, _, shot = report_dom(run / "report.html", tmp_path)
    assert {"comparison", "significance", "forgetting"} <= set(dom.tables) and dom.rows == 5
    assert len(dom.images) == 3
    size, blue = blue_pixels(shot)
    assert size == (3200, 1200) and blue > 500
    assert json.loads((run / "eval.json").read_text())["summary"] == result["summary"]
