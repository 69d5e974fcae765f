"""A run trained with `data.retrieval` and `eval.choices: auto`, end to end on the tiny model: the run
folder keeps its index and its label set, and `generate`, `chat` and `eval` answer the way training did."""

from __future__ import annotations

import json

import pytest

from eval_helpers import write_jsonl
from tunery.config.load import load_config
from tunery.constrain import ANSWERS_FILE
from tunery.data.retrieval_aug import INDEX_FILE, load_index, query_of
from tunery.trainers.run import run_training

SYSTEM = "Route the customer message to a team."
MESSAGES = [("My card was charged twice this month.", "billing"), ("Please refund my last order.", "refunds"),
            ("I lost my card on the train.", "cards"), ("Why is there a fee on my bill?", "billing"),
            ("Refund the broken kettle please.", "refunds"), ("My new card has not arrived.", "cards"),
            ("The invoice shows the wrong amount.", "billing"), ("I want my money back for the shoes.", "refunds"),
            ("Block my stolen card now.", "cards"), ("Charged twice for one ticket.", "billing")]
HELDOUT = [("I was charged twice for my order.", "billing"), ("My card is lost.", "cards"),
           ("Give me a refund for the lamp.", "refunds"), ("The fee on my bill is wrong.", "billing")]
LABELS = ["billing", "cards", "refunds"]


def record(text: str, label: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                         {"role": "assistant", "content": label}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("routing")
    write_jsonl(folder / "train.jsonl", [record(*m) for m in MESSAGES])
    write_jsonl(folder / "heldout.jsonl", [record(*m) for m in HELDOUT])
    (folder / "run.yaml").write_text(
        f"base_model: {tiny_model_dir}\n"
        "data: {train: [train.jsonl], val_split: 0.2, max_length: 256, retrieval: {k: 2, method: bm25}}\n"
        "lora: {rank: 4, alpha: 8, dropout: 0.0}\n"
        "training: {max_steps: 2, batch_size: 2, lr: 1.0e-3, threads: 1}\n"
        "eval: {graders: [exact], choices: auto, sample: 2, max_new_tokens: 8, probe: null}\n")
    cfg = load_config(folder / "run.yaml").config
    lines = []
    run_training(cfg, folder / "runs" / "routing", log=lines.append)
    return folder, folder / "runs" / "routing", lines


def test_the_run_folder_keeps_the_index_of_its_training_split_and_its_labels(trained):
    folder, run, lines = trained
    index = json.loads((run / INDEX_FILE).read_text())
    assert (index["method"], index["k"], len(index["documents"])) == ("bm25", 2, 8)  # 10 minus 2 held out
    assert {d["turns"][0]["content"] for d in index["documents"]} < {m[0] for m in MESSAGES}
    assert json.loads((run / ANSWERS_FILE).read_text()) == {"choices": LABELS}
    assert any("nearest training examples (bm25)" in line for line in lines)
    graded = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["n"] for m in graded if m["kind"] == "grader"], "graders scored during training"


def test_generate_retrieves_from_the_run_index_and_answers_a_label(trained, capsys, monkeypatch):
    from tunery.cli import chat

    _, run, _ = trained
    seen = []
    original = chat.generate_batch

    def spy(model, tokenizer, conversations, **options):
        seen.extend(conversations)
        assert options["constraint"].choices == LABELS  # the run's label set
        return original(model, tokenizer, conversations, **options)

    monkeypatch.setattr(chat, "generate_batch", spy)
    assert chat.run_generate(str(run), ["My card was charged twice."], None, 8, 0.0, 0, True) == 0
    answers = json.loads(capsys.readouterr().out)
    assert answers[0]["answer"] in LABELS
    index = load_index(run)
    expected = index.augment([{"role": "user", "content": "My card was charged twice."}])
    assert seen == [expected] and len(expected) == 5  # two shots (user, assistant) and the question


def test_chat_keeps_the_real_history_and_retrieves_for_each_answer(trained):
    from tunery.cli.chat import ChatSession
    from tunery.inference import answer_setup, load_for_inference

    _, run, _ = trained
    model, tokenizer = load_for_inference(run)
    session = ChatSession(model, tokenizer, None, 8, 0.0, *answer_setup(run))
    answer = session.reply("Refund my order", stream=False)
    assert answer in LABELS
    assert session.history == [{"role": "user", "content": "Refund my order"},
                               {"role": "assistant", "content": answer}]


def test_eval_rows_for_retrieval_trained_runs_and_the_unconstrained_invalid_count(trained):
    from tunery.cli.evaluation import format_details
    from tunery.eval.evaluate import EvalOptions, evaluate
    from tunery.eval.report_html import signals_section

    folder, run, _ = trained
    opts = EvalOptions(baselines=("rag", "tuned+rag"), probe=None, max_new_tokens=8, batch_size=4)
    result = evaluate([str(run)], str(folder / "heldout.jsonl"), opts, log=lambda _: None)
    names = [r["system"]["name"] for r in result["systems"]]
    assert names == ["tuned, retrieval-trained (bm25, k=2)", "tuned without retrieval",
                     "tuned + retrieval (bm25, k=3)", "base retrieval (bm25, k=3)"]
    index = load_index(run)
    trained_row = result["systems"][0]
    for item, answer in zip(HELDOUT, trained_row["per_example"]):
        query = query_of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": item[0]}])
        assert answer["shots"] == [index.documents[i]["where"] for i in index.neighbours(query)[::-1]]
    assert trained_row["per_example"][0]["shots"], "the run's own index gave shots"
    for row in result["systems"]:
        assert all(a["answer"] in LABELS for a in row["per_example"]), row["system"]["name"]
        c = row["constraint"]
        assert c["n"] == 4 and c["label"] == "one of 3 choices"
        invalid = sum(a["unconstrained"] not in LABELS for a in row["per_example"])
        assert c["invalid_unconstrained"] == invalid and c["invalid_share"] == invalid / 4
        line = (f"constrained to one of 3 choices: {row['system']['name']} unconstrained would have given "
                f"{invalid} invalid answer(s) of 4 ({invalid / 4:.0%})")
        assert line in format_details(result)
        assert f"unconstrained would have given <b>{invalid}</b> invalid answer(s) of 4" in signals_section(result)
