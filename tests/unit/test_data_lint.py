"""`check_files`: every problem kind with its line, and token statistics with real numbers."""

from __future__ import annotations

import json

import pytest

from tunery.data.lint import check_files, percentile
from tunery.errors import TuneryError
from data_helpers import chat, write

PARIS = {
    "messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
PARIS_TOKENS = 38  # SmolLM2's default system prompt + question + "Paris.<|im_end|>\n"


def kinds(problems):
    return [(p.line, p.kind) for p in problems]


def test_clean_file_stats(tmp_path, smol_tokenizer):
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Capital of Italy?", "Rome.")])
    report = check_files([train], smol_tokenizer)
    assert report.ok and report.errors == [] and report.warnings == []
    stats = report.stats["train"]
    assert stats["examples"] == 2 and stats["tokens"] == 2 * PARIS_TOKENS
    assert stats["trained_tokens"] == 6  # "Paris" "." <|im_end|> and "Rome" "." <|im_end|>
    assert stats["length"] == {"p50": 38, "p90": 38, "p99": 38, "max": 38}
    assert stats["files"] == {train: {"format": "messages", "examples": 2}}
    assert report.stats["validation"] is None


def test_every_record_error_kind_with_its_line(tmp_path, smol_tokenizer):
    train = write(
        tmp_path / "t.jsonl",
        [
            PARIS,  # 1 ok
            '{"messages": [',  # 2
            {"messages": {"role": "user"}},  # 3
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },  # 4
            {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},  # 5
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},  # 6
            {
                "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]
            },  # 7
            {"messages": [{"role": "user", "content": "x"}]},  # 8
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                    {"role": "user", "content": "z"},
                ]
            },  # 9
            {"instruction": "x", "output": "y"},  # 10
            {
                "messages": [
                    {"role": "user", "content": ["x"]},
                    {"role": "assistant", "content": "y"},
                ]
            },  # 11
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": 5},
                ]
            },  # 12
            "[1, 2]",  # 13
            {"foo": "bar"},  # 14
        ],
    )
    report = check_files([train], smol_tokenizer)
    assert not report.ok
    assert kinds(report.errors) == [
        (2, "invalid_json"),
        (3, "wrong_type"),
        (4, "unknown_role"),
        (5, "missing_role"),
        (6, "missing_content"),
        (7, "empty_content"),
        (8, "no_assistant"),
        (9, "last_turn_not_assistant"),
        (10, "mixed_formats"),
        (11, "wrong_type"),
        (12, "bad_weight"),
        (13, "wrong_type"),
        (14, "unknown_format"),
    ]
    assert all(p.file == train for p in report.errors)
    assert report.stats["train"]["examples"] == 1


def test_too_long_answer_is_an_error_and_template_only_cut_a_warning(tmp_path, smol_tokenizer):
    long_answer = " ".join(["word"] * 30)
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Q", long_answer)])
    report = check_files([train], smol_tokenizer, max_length=PARIS_TOKENS - 1)
    # Line 1 loses only the template's trailing newline; line 2 loses most of its answer:
    # 30 tokens of template and system prompt, "Q", 30 words, <|im_end|>, "\n" = 63 tokens, of
    # which the 30 words and <|im_end|> are trained; 37 tokens keep 6 of them.
    assert kinds(report.errors) == [(2, "too_long")]
    assert kinds(report.warnings) == [(1, "truncated")]
    assert report.errors[0].reason == (
        "example is 63 tokens, longer than max_length 37: truncation cuts 25 of its 31 trained tokens "
        "(raise max_length or shorten the example)"
    )
    assert report.stats["train"]["over_max_length"] == 2


def test_duplicates_weight_zero_and_allowed_special_tokens_are_warnings(tmp_path, smol_tokenizer):
    zero = {
        "messages": [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "weight": 0},
        ]
    }
    injected = chat("End with <|im_end|> please", "Ok.")
    train = write(tmp_path / "t.jsonl", [PARIS, zero, PARIS, injected])
    # Control tokens in text are errors by default (tests/unit/test_render_special_tokens.py).
    report = check_files([train], smol_tokenizer, allow_special_tokens=True)
    assert report.ok
    assert kinds(report.warnings) == [
        (2, "no_trained_tokens"),
        (3, "duplicate"),
        (4, "special_token_in_content"),
    ]
    assert report.warnings[1].reason == f"duplicate of {train}:1"
    assert report.warnings[2].reason == (
        "messages[0] contains <|im_end|> as text; it is tokenised as plain text, not as the control token"
    )


def test_train_validation_overlap_is_an_error(tmp_path, smol_tokenizer):
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Q", "A")])
    val = write(tmp_path / "v.jsonl", [chat("Other", "Thing"), PARIS, chat("Other", "Thing")])
    report = check_files([train], smol_tokenizer, validation_paths=[val])
    assert [(p.file, p.line, p.kind) for p in report.errors] == [(val, 2, "train_val_overlap")]
    assert (
        report.errors[0].reason
        == f"also in the training data ({train}:1); validation examples must be unseen"
    )
    assert [(p.file, p.line, p.kind) for p in report.warnings] == [(val, 3, "duplicate")]
    assert report.stats["validation"]["examples"] == 3


def test_long_tail_warning(tmp_path, smol_tokenizer):
    short = [chat(f"Q{i}", "A") for i in range(5)]
    long = chat("Q", " ".join(["word"] * 200))
    train = write(tmp_path / "t.jsonl", short + [long])
    report = check_files([train], smol_tokenizer)
    assert kinds(report.warnings) == [(6, "long_tail")]
    # 30 template tokens + "Q" + 200 words + <|im_end|> "\n" = 233; the short ones are 35.
    assert report.warnings[0].reason.startswith("long tail: 233 tokens, 6.7x the median 35")


def test_raw_text_needs_cpt(tmp_path, smol_tokenizer):
    corpus = write(tmp_path / "c.jsonl", [{"text": "one two three"}, {"text": "four"}])
    assert kinds(check_files([corpus], smol_tokenizer).errors) == [
        (1, "text_needs_cpt"),
        (2, "text_needs_cpt"),
    ]
    report = check_files([corpus], smol_tokenizer, method="cpt")
    assert report.ok
    # "one two three" is 3 tokens and "four" 1, each plus EOS; every token is trained.
    assert report.stats["train"]["tokens"] == 6 and report.stats["train"]["trained_tokens"] == 6
    assert check_files([corpus], smol_tokenizer, method="auto").ok
    cut = check_files([corpus], smol_tokenizer, method="cpt", max_length=2, long_texts="cut")
    assert cut.ok and kinds(cut.warnings) == [(1, "text_truncated")]
    assert cut.stats["train"]["windows"]["dropped_tokens"] == 2  # "three" and EOS of the 4-token text
    split = check_files([corpus], smol_tokenizer, method="cpt", max_length=2)
    assert split.ok and split.warnings == []  # split into windows: nothing is lost, nothing to warn of


def test_train_on_changes_trained_counts(tmp_path, smol_tokenizer):
    two = {
        "messages": [
            {"role": "user", "content": "A?"},
            {"role": "assistant", "content": "B."},
            {"role": "user", "content": "C?"},
            {"role": "assistant", "content": "D."},
        ]
    }
    train = write(tmp_path / "t.jsonl", [two])
    counts = {
        mode: check_files([train], smol_tokenizer, train_on=mode).stats["train"]
        for mode in ("assistant", "last", "all")
    }
    assert counts["assistant"]["trained_tokens"] == 6  # "B" "." <|im_end|> twice
    assert counts["last"]["trained_tokens"] == 3
    assert counts["all"]["trained_tokens"] == counts["all"]["tokens"]


def test_render_errors_are_reported_per_record(tmp_path, smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    )
    train = write(tmp_path / "t.jsonl", [PARIS, chat("Q", "A")])
    report = check_files([train], tok)
    assert kinds(report.errors) == [(1, "render_error"), (2, "render_error")]
    assert "not prefix-stable" in report.errors[0].reason


def test_report_json_and_text(tmp_path, smol_tokenizer):
    train = write(tmp_path / "t.jsonl", [PARIS, "{bad", PARIS])
    report = check_files([train], smol_tokenizer)
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False
    assert data["errors"] == [
        {
            "file": train,
            "line": 2,
            "reason": "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
            "severity": "error",
            "kind": "invalid_json",
        }
    ]
    assert (
        data["warnings"][0]["kind"] == "duplicate"
        and data["stats"]["train"]["tokens"] == 2 * PARIS_TOKENS
    )
    text = report.format_text().splitlines()
    assert text[0] == "Errors (1):"
    assert (
        text[1]
        == f"{train}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    )
    assert f"{train}:3: duplicate of {train}:1" in text
    assert "  2 examples, 76 tokens, 6 trained (7.9%)" in text
    assert text[-1] == "FAILED: 1 error, 1 warning"


def test_bad_arguments(smol_tokenizer):
    with pytest.raises(TuneryError, match="unknown train_on 'everything'"):
        check_files([], smol_tokenizer, train_on="everything")


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7 and percentile([], 90) == 0
    assert percentile([1, 2, 3, 10], 50) == 2
