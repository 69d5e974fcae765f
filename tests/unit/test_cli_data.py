"""`tunery data check` and `tunery data preview` through the real command line (typer's runner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunery.cli.main import app
from data_helpers import chat, write

runner = CliRunner()
PARIS = {
    "messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}


@pytest.fixture(autouse=True)
def _tokenizer_cached(smol_tokenizer):
    """Converting the embedded model happens once per session, not inside a timed CLI call."""


# Each bad line, the kind of problem it has, and the start of the reason shown for it.
BAD_LINES = [
    ('{"messages": [', "invalid_json", "invalid JSON: Expecting value"),
    ({"messages": "hi"}, "wrong_type", "'messages' must be a list of messages, got a string"),
    (
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "unknown_role",
        "messages[0]: unknown role 'bot'",
    ),
    (
        {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},
        "missing_role",
        "messages[0]: missing 'role'",
    ),
    (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
        "missing_content",
        "messages[0]: missing 'content'",
    ),
    (
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]},
        "empty_content",
        "messages[0]: 'content' is empty",
    ),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_assistant", "no assistant message"),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"},
                {"role": "user", "content": "z"},
            ]
        },
        "last_turn_not_assistant",
        "the conversation ends on a user turn",
    ),
    (
        {"prompt": "x", "completion": "y"},
        "mixed_formats",
        "mixed formats: this record is prompt_completion",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y", "weight": "0"},
            ]
        },
        "bad_weight",
        "messages[1]: 'weight' must be 0 or 1, got '0'",
    ),
    ({"hello": "x"}, "unknown_format", "unknown record format (keys: hello)"),
    (
        chat("Q", " ".join(["word"] * 40)),
        "too_long",
        "example is 73 tokens, longer than max_length 64",
    ),
]


def test_check_reports_every_error_kind_with_its_line(tmp_path):
    lines = [PARIS, PARIS, PARIS] + [line for line, _, _ in BAD_LINES]
    train = write(tmp_path / "train.jsonl", lines)
    result = runner.invoke(app, ["data", "check", train, "--max-length", "64"])
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    for offset, (_, _, reason) in enumerate(BAD_LINES):
        line = 4 + offset
        assert any(text.startswith(f"{train}:{line}: {reason}") for text in out), (
            line,
            reason,
            out,
        )
    assert f"{train}:2: duplicate of {train}:1" in out
    assert out[-1] == f"FAILED: {len(BAD_LINES)} errors, 2 warnings"


def test_check_json_has_kinds_and_lines_only_on_stdout(tmp_path):
    lines = [PARIS, PARIS, PARIS] + [line for line, _, _ in BAD_LINES]
    train = write(tmp_path / "train.jsonl", lines)
    result = runner.invoke(app, ["data", "check", train, "--max-length", "64", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [(e["line"], e["kind"]) for e in report["errors"]] == [
        (4 + offset, kind) for offset, (_, kind, _) in enumerate(BAD_LINES)
    ]
    assert [(w["line"], w["kind"]) for w in report["warnings"]] == [
        (2, "duplicate"),
        (3, "duplicate"),
    ]
    assert report["ok"] is False and report["stats"]["train"]["examples"] == 4


def test_check_clean_data_exits_zero_with_stats(tmp_path):
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Capital of Italy?", "Rome.")])
    val = write(tmp_path / "v.jsonl", [chat("Capital of Spain?", "Madrid.")])
    result = runner.invoke(app, ["data", "check", train, "--validation", val])
    assert result.exit_code == 0, result.output
    assert "  2 examples, 76 tokens, 6 trained (7.9%)" in result.stdout
    assert result.stdout.splitlines()[-1] == "OK: 0 errors, 0 warnings"


def test_check_overlap_and_missing_validation_file(tmp_path):
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Q", "A")])
    val = write(tmp_path / "v.jsonl", [PARIS])
    missing = str(tmp_path / "nope.jsonl")
    result = runner.invoke(app, ["data", "check", train, "-v", val, "-v", missing, "--json"])
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert [(e["file"], e["line"], e["kind"]) for e in errors] == [
        (val, 1, "train_val_overlap"),
        (missing, 0, "file_not_found"),
    ]


def test_check_raw_text_is_linted_as_cpt(tmp_path):
    corpus = write(tmp_path / "c.jsonl", [{"text": "one two three"}, {"text": "four"}])
    result = runner.invoke(app, ["data", "check", corpus, "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["stats"]
    assert (
        stats["method"] == "cpt"
        and stats["train"]["trained_tokens"] == stats["train"]["tokens"] == 6
    )


def test_check_forced_format_and_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,completion\nCapital of France?,Paris.\nQ,\n", encoding="utf-8")
    result = runner.invoke(
        app, ["data", "check", str(path), "--format", "prompt_completion", "--json"]
    )
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert [(e["line"], e["kind"], e["reason"]) for e in errors] == [
        (3, "missing_key", "missing 'completion'")
    ]


def test_preview_text_and_json(tmp_path):
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Two?", "2")])
    result = runner.invoke(app, ["data", "preview", train, "-n", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"--- {train}:1: 38 tokens, 3 trained ---\n")
    assert "<|im_start|>assistant\n[[Paris.<|im_end|>]]\n" in result.stdout
    as_json = runner.invoke(app, ["data", "preview", train, "--json", "--train-on", "all"])
    previews = json.loads(as_json.stdout)
    assert len(previews) == 2 and all(all(p["trained"]) for p in previews)
    assert previews[1]["line"] == 2 and len(previews[1]["ids"]) == previews[1]["tokens"]


def test_preview_skips_broken_records_and_exits_one(tmp_path):
    train = write(tmp_path / "t.jsonl", ["{nope", PARIS])
    result = runner.invoke(app, ["data", "preview", train])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"--- {train}:2: 38 tokens")
    assert "1 record(s) of" in result.stderr and "tunery data check" in result.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    train = write(tmp_path / "t.jsonl", [PARIS])
    result = runner.invoke(app, ["data", "check", train, "--model", "./no/such/model"])
    assert "model not found: './no/such/model'" in str(result.exception)


def test_method_option_decides_whether_raw_text_is_allowed(tmp_path):
    path = write(tmp_path / "text.jsonl", [{"text": "Plain prose for continued pre-training."}])
    as_cpt = runner.invoke(app, ["data", "check", path, "--method", "cpt", "--json"])
    assert as_cpt.exit_code == 0, as_cpt.output
    assert json.loads(as_cpt.stdout)["stats"]["method"] == "cpt"
    as_sft = runner.invoke(app, ["data", "check", path, "--method", "sft", "--json"])
    assert as_sft.exit_code == 1
    kinds = [e["kind"] for e in json.loads(as_sft.stdout)["errors"]]
    assert kinds == ["text_needs_cpt"]
