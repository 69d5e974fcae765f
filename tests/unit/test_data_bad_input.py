"""Bad input never crashes a reader and never hides other findings: deep nesting, invalid UTF-8, lone
carriage returns and records of no known format are each one located problem, and reading goes on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunery.cli.main import app
from tunery.data.dataset import load_examples
from tunery.data.readers import read_records

CHAT = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]}
CHAT2 = {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}
NO_CONTENT = {"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}
DEEP = "[" * 1000 + "]" * 1000  # a 2 KB line nested 1,000 levels deep
runner = CliRunner()


def located(problems):
    return [(p.line, p.kind) for p in problems]


def test_deep_nesting_is_one_bad_record_in_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{json.dumps(CHAT)}\n{DEEP}\n{json.dumps(CHAT2)}\n", encoding="utf-8")
    examples, problems = load_examples([str(path)])
    assert [e.line for e in examples] == [1, 3]
    assert located(problems) == [(2, "nested_too_deep")]
    assert problems[0].reason.startswith("invalid JSON: nested 1000 levels deep")


def test_deep_nesting_in_a_json_array_keeps_the_other_records(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(f"[{json.dumps(CHAT)},\n {DEEP},\n {json.dumps(CHAT2)}]", encoding="utf-8")
    examples, problems = load_examples([str(path)])
    assert [e.line for e in examples] == [1, 3]
    assert located(problems) == [(2, "nested_too_deep")]


def test_bad_json_element_in_an_array_hides_nothing_after_it(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        f'[{json.dumps(CHAT)},\n {{"messages": }},\n {json.dumps(NO_CONTENT)},\n {json.dumps(CHAT2)}]',
        encoding="utf-8",
    )
    examples, problems = load_examples([str(path)])
    assert [e.line for e in examples] == [1, 4]
    assert located(problems) == [(2, "invalid_json"), (3, "missing_content")]
    assert problems[0].reason == "invalid JSON: Expecting value (file line 2, column 15)"


def test_deep_nesting_in_a_csv_cell(tmp_path):
    cell = json.dumps(CHAT["messages"]).replace('"', '""')
    path = tmp_path / "t.csv"
    path.write_text(f'messages\n"{cell}"\n"{DEEP}"\n"{cell}"\n', encoding="utf-8")
    examples, problems = load_examples([str(path)])
    assert [e.line for e in examples] == [2, 4]
    assert located(problems) == [(3, "nested_too_deep")]


def test_deep_nesting_in_a_parquet_cell(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "t.parquet")
    cells = [json.dumps(CHAT["messages"]), DEEP, json.dumps(CHAT2["messages"])]
    pq.write_table(pa.table({"messages": cells}), path)
    examples, problems = load_examples([path])
    assert [e.line for e in examples] == [1, 3]
    assert located(problems) == [(2, "nested_too_deep")]


def test_data_check_json_reports_deep_nesting_instead_of_crashing(tmp_path, smol_tokenizer):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{json.dumps(CHAT)}\n{DEEP}\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [(e["line"], e["kind"]) for e in report["errors"]] == [(2, "nested_too_deep")]
    assert report["stats"]["train"]["examples"] == 1


def test_invalid_utf8_is_one_line_and_the_rest_is_checked(tmp_path):
    first = json.dumps(CHAT).encode() + b"\n"
    bad = b'{"text": "caf\xe9"}\n'
    path = tmp_path / "t.jsonl"
    path.write_bytes(first + bad + json.dumps(NO_CONTENT).encode() + b"\n" + json.dumps(CHAT2).encode())
    examples, problems = load_examples([str(path)])
    assert [e.line for e in examples] == [1, 4]
    assert located(problems) == [(2, "encoding"), (3, "missing_content")]
    offset = len(first) + bad.index(b"\xe9")
    assert problems[0].reason == (
        f"line is not UTF-8 text: invalid continuation byte at byte {offset} of the file (column 14)"
    )


def test_invalid_utf8_in_a_csv_row_and_a_json_element(tmp_path):
    csv_path = tmp_path / "t.csv"
    head = b"prompt,completion\nQ1,A1\n"
    csv_path.write_bytes(head + b"Q\xff,A\nQ3,\n")
    json_path = tmp_path / "t.json"
    json_head = ("[" + json.dumps(CHAT) + ",\n").encode()
    json_path.write_bytes(json_head + b'{"text": "\xc3("},\n' + json.dumps(CHAT2).encode() + b"]")
    examples, problems = load_examples([str(csv_path), str(json_path)])
    assert [(p.file, p.line, p.kind) for p in problems] == [
        (str(csv_path), 3, "encoding"),
        (str(csv_path), 4, "missing_key"),
        (str(json_path), 2, "encoding"),
    ]
    assert f"at byte {len(head) + 1} of the file" in problems[0].reason
    assert f"at byte {len(json_head) + 10} of the file" in problems[2].reason
    assert [(e.source, e.line) for e in examples] == [
        (str(csv_path), 2), (str(json_path), 1), (str(json_path), 3)
    ]


def test_a_lone_cr_inside_a_jsonl_line_is_whitespace_not_a_line_end(tmp_path):
    path = tmp_path / "t.jsonl"
    with_cr = json.dumps(CHAT).replace('"messages": ', '"messages":\r ')
    path.write_text(f"{with_cr}\n{{bad json\n{json.dumps(CHAT2)}\r\n", encoding="utf-8", newline="")
    records, problems = read_records(str(path))
    assert [line for line, _ in records] == [1, 3]
    assert records[0][1] == CHAT and records[1][1] == CHAT2
    assert located(problems) == [(2, "invalid_json")]


def test_records_of_no_known_format_say_so(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"foo": 1}\n{"bar": 2, "baz": 3}\n', encoding="utf-8")
    _, problems = load_examples([str(path)])
    expected = "expected messages, conversations, instruction/output, prompt/completion or text"
    assert [(p.line, p.kind, p.reason) for p in problems] == [
        (1, "unknown_format", f"unknown record format (keys: foo); {expected}"),
        (2, "unknown_format", f"unknown record format (keys: bar, baz); {expected}"),
    ]


def test_csv_with_wrong_columns_is_one_problem_at_the_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\nQ1,A1\nQ2,A2\n", encoding="utf-8")
    _, problems = load_examples([str(path)])
    assert [(p.line, p.kind, p.reason) for p in problems] == [
        (
            1,
            "unknown_format",
            "unknown record format: the columns are answer, question; expected messages, "
            "conversations, instruction/output, prompt/completion or text",
        )
    ]


def test_lone_surrogates_and_huge_numbers_are_located_problems(tmp_path, smol_tokenizer):
    # JSON may escape half of a surrogate pair ("\udc80"): Python decodes it to a string that no
    # tokenizer accepts. A number of 5,000 digits makes json.loads raise ValueError.
    lone = '{"messages": [{"role": "user", "content": "Q\\udc80"}, {"role": "assistant", "content": "A"}]}'
    huge = '{"messages": [{"role": "user", "content": "Q", "weight": ' + "1" * 5000 + "}]}"
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([json.dumps(CHAT), lone, huge, json.dumps(CHAT2)]) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 1, result.output
    errors = json.loads(result.stdout)["errors"]
    assert [(e["line"], e["kind"]) for e in errors] == [(2, "invalid_text"), (3, "invalid_json")]
    assert errors[0]["reason"] == (
        "messages[0]: 'content' holds a lone surrogate '\\udc80' (half of a UTF-16 pair), which is not text"
    )
    assert errors[1]["reason"] == "invalid JSON: a number is too long to read (over 4300 digits)"
