"""The new graders inside `tunery eval` (records reach the graders, code_tests and python graders score
canned answers, failures and the sandbox go into eval.json) and the release gate (`--gate`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from eval_helpers import canned_generation, is_tuned, make_run_folder, write_jsonl
from tunery.errors import TuneryError
from tunery.eval.evaluate import EvalOptions, evaluate
from tunery.eval.items import read_eval_items

TASKS = [("add", "a + b", "assert add(2, 3) == 5"), ("sub", "a - b", "assert sub(5, 3) == 2"),
         ("mul", "a * b", "assert mul(4, 3) == 12"), ("div", "a / b", "assert div(6, 3) == 2")]
USER_GRADER = "def mentions_name(completion, record):\n    return float(record['name'] in completion)\n"


def coding_record(name: str, body: str, tests: str) -> dict:
    code = f"def {name}(a, b):\n    return {body}\n"
    return {"messages": [{"role": "user", "content": f"Write {name}(a, b)."},
                         {"role": "assistant", "content": f"```python\n{code}```"}],
            "tests": tests, "name": name}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    return make_run_folder(tmp_path_factory.mktemp("gradersrun"), tiny_model_dir)


@pytest.fixture
def tasks(tmp_path):
    return write_jsonl(tmp_path / "tasks.jsonl", [coding_record(*t) for t in TASKS])


def tuned_codes_right(model, prompt):
    # The tuned run answers every task right; the base model gets the operator wrong for half of them.
    name = prompt[-1]["content"].split("(")[0].removeprefix("Write ")
    body = dict((n, b) for n, b, _ in TASKS)[name]
    if not is_tuned(model) and name in ("sub", "div"):
        body = "a + b"
    return f"Here you go:\n```python\ndef {name}(a, b):\n    return {body}\n```"


def test_eval_items_keep_every_field_of_their_record(tasks):
    items = read_eval_items(str(tasks))
    assert items[0].record["tests"] == "assert add(2, 3) == 5" and items[0].record["name"] == "add"
    assert items[0].record["messages"][0]["content"] == "Write add(a, b)."
    assert items[0].reference.startswith("```python\ndef add")


def test_code_tests_and_python_graders_score_the_rows_and_the_gate_reads_the_first(run_dir, tasks, tmp_path,
                                                                                  monkeypatch):
    (tmp_path / "mine.py").write_text(USER_GRADER)
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(tuned_codes_right))
    said = []
    opts = EvalOptions(probe=None, baselines=("zero",), graders=["code_tests:5", f"python:{tmp_path}/mine.py:mentions_name",
                                                                 "0.5*code_tests:5+0.5*exact"],
                       gates=["code_tests:5>=0.9", "python:mentions_name>=1", "exat>=0.1"])
    out = evaluate([str(run_dir)], str(tasks), opts, log=said.append)
    tuned, base = out["systems"]
    assert out["graders"] == ["code_tests:5", "python:mentions_name", "0.5*code_tests:5+0.5*exact"]
    assert [e["scores"]["code_tests:5"] for e in tuned["per_example"]] == [1.0, 1.0, 1.0, 1.0]
    assert [e["scores"]["code_tests:5"] for e in base["per_example"]] == [1.0, 0.0, 1.0, 0.0]
    assert base["scores"]["0.5*code_tests:5+0.5*exact"]["mean"] == 0.25  # never exact: the chatter differs
    assert tuned["scores"]["python:mentions_name"]["mean"] == 1.0
    assert out["sandbox"]["audit"] == "on" and any(line.startswith("code_tests sandbox: netns") for line in said)
    assert any("--gate names 'exat', which is not among the graders" in line for line in said)
    gate = out["gate"]
    assert gate["system"] == "tuned" and gate["passed"] is False
    assert [(c["grader"], c["mean"], c["passed"]) for c in gate["checks"]] == [
        ("code_tests:5", 1.0, True), ("python:mentions_name", 1.0, True), ("exat", None, False)]
    assert gate["failures"] == ["exat: not scored"] and out["grader_failures"] == {}


def test_a_grader_failing_on_records_reports_once_and_a_missing_field_stops_before_generating(run_dir, tasks,
                                                                                              tmp_path, monkeypatch):
    (tmp_path / "picky.py").write_text("def picky(completion, record):\n    return {'add': 1, 'sub': 0}[record['name']]\n")
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(tuned_codes_right))
    said = []
    opts = EvalOptions(probe=None, baselines=("zero",), graders=[f"python:{tmp_path}/picky.py:picky"])
    out = evaluate([str(run_dir)], str(tasks), opts, log=said.append)
    assert [e["scores"]["python:picky"] for e in out["systems"][0]["per_example"]] == [1.0, 0.0, 0.0, 0.0]
    failures = out["grader_failures"]["python:picky"]
    assert failures["count"] == 4 and failures["first"].startswith(f"{tasks}:3: python:") and "KeyError: 'mul'" in failures["first"]
    assert len([line for line in said if "grader python:picky failed" in line]) == 1
    assert any(w.startswith("grader python:picky could not score 4 answer(s), which scored 0; the first: ")
               for w in out["warnings"])

    no_tests = write_jsonl(tmp_path / "no_tests.jsonl", [coding_record(*TASKS[0]), {**coding_record(*TASKS[1]), "tests": None}])
    called = []
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(lambda m, p: called.append(p) or "x"))
    with pytest.raises(TuneryError, match=r"no_tests.jsonl:2: grader code_tests reads the record field 'tests'"):
        evaluate([str(run_dir)], str(no_tests), EvalOptions(probe=None, graders=["code_tests"]), log=said.append)
    assert called == []


def invoke_eval(run_dir, tasks, *args):
    from tunery.cli.main import app

    return CliRunner().invoke(app, ["eval", str(run_dir), "--data", str(tasks), "--probe", "none", "--baselines", "zero",
                                    "--graders", "code_tests:5", "--out", str(tasks.parent / "out"), *args])


def test_cli_gate_exit_code_lines_and_eval_json(run_dir, tasks, monkeypatch):
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(tuned_codes_right))
    passed = invoke_eval(run_dir, tasks, "--gate", "code_tests:5>=0.9")
    assert passed.exit_code == 0, passed.output
    assert "PASS  code_tests:5 >= 0.9: 1.000 (tuned)" in passed.output and "gate passed" in passed.output
    saved = json.loads((tasks.parent / "out" / "eval.json").read_text())
    assert saved["gate"]["passed"] is True and saved["gate"]["checks"][0]["mean"] == 1.0

    monkeypatch.setattr("tunery.eval.measure.generate_timed",
                        canned_generation(lambda m, p: "def nothing(): pass"))
    failed = invoke_eval(run_dir, tasks, "--gate", "code_tests:5>=0.5", "--gate", "json>=0.1")
    assert failed.exit_code == 1, failed.output
    assert "FAIL  code_tests:5 >= 0.5: 0.000 (tuned)" in failed.output
    assert "FAIL  json >= 0.1: not scored (tuned)" in failed.output and "gate FAILED" in failed.output
    saved = json.loads((tasks.parent / "out" / "eval.json").read_text())
    assert saved["gate"]["failures"] == ["code_tests:5: 0.000 < 0.500", "json: not scored"]

    as_json = invoke_eval(run_dir, tasks, "--gate", "code_tests:5>=0.5", "--json")
    assert as_json.exit_code == 1
    no_gate = invoke_eval(run_dir, tasks)
    assert no_gate.exit_code == 0 and "PASS" not in no_gate.output and "gate passed" not in no_gate.output


def test_a_malformed_gate_is_refused_before_any_work(run_dir, tasks, monkeypatch):
    called = []
    monkeypatch.setattr("tunery.eval.measure.generate_timed", canned_generation(lambda m, p: called.append(p) or "x"))
    result = invoke_eval(run_dir, tasks, "--gate", "code_tests:5>0.5")
    assert result.exit_code != 0 and called == []
    assert "is not LABEL>=NUMBER" in str(result.exception) + result.output
