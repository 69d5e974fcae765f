"""`tunery eval`, `compare` and `advise` as a user runs them (subprocesses, tiny model, real generation),
and report.html opened in headless Chromium: table, plots and a screenshot."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_tunery
from eval_helpers import blue_pixels, make_run_folder, report_dom, write_jsonl


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    """A tiny run evaluated once through the CLI with a 3-item probe file of the user's own."""
    folder = tmp_path_factory.mktemp("evalcli")
    run = make_run_folder(folder, tiny_model_dir)
    probe = write_jsonl(folder / "probe.jsonl", [
        {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
         "graders": ["contains:Paris"]},
        {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}], "graders": ["numeric"]},
        {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}],
         "graders": [{"type": "regex", "value": "^yes$"}]},
    ])
    out = run_tunery("eval", str(run), "--data", "heldout.jsonl", "--max-new-tokens", "3", "--probe", str(probe),
                     "--graders", "json_match,exact", "--json", cwd=folder)
    return run, json.loads(out.stdout)


def test_eval_json_on_stdout_and_in_the_run_folder(evaluated):
    run, printed = evaluated
    assert json.loads((run / "eval.json").read_text()) == printed
    assert (run / "report.html").stat().st_size > 10_000  # three PNGs inline
    assert printed["graders"] == ["json_match", "exact"] and printed["n_examples"] == 4
    assert [r["system"]["name"] for r in printed["systems"]] == [
        "tuned", "base zero-shot", "base few-shot (k=3)", "base retrieval (bm25, k=3)"]
    for row in printed["systems"]:
        assert all(1 <= e["tokens"] <= 3 for e in row["per_example"])  # real greedy answers, capped at 3 tokens
        assert row["tokens_generated"] == sum(e["tokens"] for e in row["per_example"])
        assert row["latency_s"] > 0 and row["loss"]["tokens"] > 40
    forgetting = printed["forgetting"][str(run)]
    assert forgetting["n"] == 3 and forgetting["probe"].endswith("probe.jsonl")
    few = printed["systems"][2]["per_example"]
    assert all(s.startswith(str(run.parent.parent / "train.jsonl")) for s in few[0]["shots"])


def test_text_output_compare_and_advise(evaluated, tmp_path, tiny_model_dir):
    run, _ = evaluated
    folder = run.parent.parent
    text = run_tunery("eval", str(run), "--data", "heldout.jsonl", "--max-new-tokens", "2", "--probe", "none",
                      "--baselines", "zero", "--out", str(tmp_path / "out"), cwd=folder).stdout
    lines = text.splitlines()
    assert lines[0].split() == ["system", "exact", "json", "json_match", "loss", "s/answer", "tokens"]
    assert [line.split()[0] for line in lines[2:4]] == ["tuned", "base"]
    assert f"wrote {tmp_path / 'out' / 'eval.json'}" in text
    other = make_run_folder(tmp_path, tiny_model_dir, name="other", seed=1)
    compared = run_tunery("compare", str(run), str(other), cwd=folder).stdout
    assert any(line.startswith("* output.name") for line in compared.splitlines())
    advice = json.loads(run_tunery("advise", "--data", "train.jsonl", "--model", str(tiny_model_dir), "--limit", "2",
                                   "--max-new-tokens", "2", "--json", cwd=folder).stdout)
    assert advice["n_examples"] == 2 and advice["pool_size"] == 6 and advice["forgetting"] == {}
    assert advice["summary"].endswith(".") and advice["summary"].startswith(("The evidence", "No approach"))
    bad = run_tunery("eval", str(run), "--data", "heldout.jsonl", "--graders", "exat", cwd=folder, check=False)
    assert bad.returncode == 2 and "unknown grader 'exat': did you mean exact?" in bad.stderr


def test_report_renders_in_headless_chromium_with_table_and_plots(evaluated, tmp_path):
    run, printed = evaluated
    dom, dom_text, shot = report_dom(run / "report.html", tmp_path)
    assert {"comparison", "significance", "forgetting"} <= set(dom.tables)
    assert dom.rows == 1 + len(printed["systems"])  # header + one row per system
    assert len(dom.images) == 3 and all(src.startswith("data:image/png;base64,") for src in dom.images)
    assert printed["summary"].split(":")[0] in dom_text
    size, blue = blue_pixels(shot)
    assert size == (3200, 1200) and blue > 200
