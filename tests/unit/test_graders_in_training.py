"""The new graders in a training config's `eval.graders`: the watch reads each sampled record, runs
code_tests on the answers, and a grader that fails on a record costs that record only."""

from __future__ import annotations

import pytest

from tunery.config.load import validate
from tunery.errors import TuneryError
from tunery.trainers.watch import Watch

from eval_helpers import write_jsonl
from test_graders_in_eval import TASKS, coding_record


def watch_for(tmp_path, records, graders):
    data = write_jsonl(tmp_path / "tasks.jsonl", records)
    cfg = validate({"data": {"train": ["t.jsonl"]}, "eval": {"graders": graders, "data": [str(data)], "sample": 4}})
    return Watch.for_run(cfg, 10, [])


def test_code_tests_scores_answers_during_training_with_each_sampled_record(tmp_path, monkeypatch):
    (tmp_path / "picky.py").write_text("def picky(completion, record):\n    return {'add': 1.0}[record['name']]\n")
    watch = watch_for(tmp_path, [coding_record(*t) for t in TASKS],
                      ["code_tests:5", [{"type": "code_tests", "value": 5, "weight": 1}, {"type": "exact", "weight": 1}],
                       f"python:{tmp_path}/picky.py:picky"])
    assert [i.record["name"] for i in watch.items] == ["add", "sub", "mul", "div"] and all(i.record["tests"].startswith("assert") for i in watch.items)
    assert all(i.where.startswith(str(tmp_path / "tasks.jsonl") + ":") for i in watch.items)

    def answers(model, tokenizer, prompts, max_new_tokens, batch_size):
        # Right code for the first prompt, wrong for the others.
        names = [p[-1]["content"].split("(")[0].removeprefix("Write ") for p in prompts]
        return [f"def {n}(a, b):\n    return {'a + b' if i else dict((t[0], t[1]) for t in TASKS)[n]}\n"
                for i, n in enumerate(names)]

    monkeypatch.setattr("tunery.inference.generate_batch", answers)

    class Model:
        training = True

        def eval(self):
            pass

        def train(self, mode):
            pass

    said = []
    watch.failures.log = said.append
    scores = watch.score(Model(), None)
    assert scores == {"score": 0.25, "code_tests:5": 0.25, "1*code_tests:5+1*exact": 0.125, "python:picky": 0.25,
                      "n": 4}
    assert len(said) == 1 and f"grader python:picky failed on {tmp_path / 'tasks.jsonl'}:2" in said[0]
    assert watch.failures.to_json()["python:picky"]["count"] == 3


def test_a_sampled_record_without_tests_stops_training_before_it_starts(tmp_path):
    records = [coding_record(*t) for t in TASKS[:2]] + [{**coding_record(*TASKS[2]), "tests": ""}]
    with pytest.raises(TuneryError, match=r"tasks.jsonl:3: grader code_tests in eval.graders reads the record field 'tests'"):
        watch_for(tmp_path, records, ["exact", "code_tests"])
