"""Each record format converts to the same `Example`, and each malformed record gives located problems."""

from __future__ import annotations

import pytest

from tunery.data.formats import convert_records, detect_format, to_example
from tunery.data.messages import Example, Message

U, A, S = "user", "assistant", "system"


def convert(record, fmt):
    example, problems = to_example(record, fmt, "f.jsonl", 4)
    return example, [(p.kind, p.reason) for p in problems]


@pytest.mark.parametrize(
    "record, fmt",
    [
        ({"messages": [{"role": U, "content": "Q"}, {"role": A, "content": "Ans"}]}, "messages"),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "Ans"}]},
            "sharegpt",
        ),
        ({"instruction": "Q", "output": "Ans"}, "alpaca"),
        ({"instruction": "Q", "input": "", "output": "Ans"}, "alpaca"),
        ({"prompt": "Q", "completion": "Ans"}, "prompt_completion"),
        (
            {
                "prompt": [{"role": U, "content": "Q"}],
                "completion": [{"role": A, "content": "Ans"}],
            },
            "prompt_completion",
        ),
    ],
)
def test_every_conversation_format_gives_the_same_messages(record, fmt):
    assert detect_format(record) == fmt
    example, problems = convert(record, fmt)
    assert problems == []
    assert example == Example("f.jsonl", 4, messages=[Message(U, "Q"), Message(A, "Ans")])


def test_alpaca_input_and_system():
    example, _ = convert(
        {"system": "Be kind.", "instruction": "Translate", "input": "chat", "output": "cat"},
        "alpaca",
    )
    assert example.messages == [
        Message(S, "Be kind."),
        Message(U, "Translate\n\nchat"),
        Message(A, "cat"),
    ]


def test_sharegpt_roles_map_to_chat_roles():
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "user", "value": "Q"},
            {"from": "assistant", "value": "A1"},
            {"from": "human", "value": "Q2"},
            {"from": "gpt", "value": "A2"},
        ]
    }
    example, problems = convert(record, "sharegpt")
    assert problems == []
    assert [m.role for m in example.messages] == [S, U, A, U, A]


def test_messages_weight_is_kept():
    record = {
        "messages": [
            {"role": U, "content": "Q"},
            {"role": A, "content": "x", "weight": 0},
            {"role": U, "content": "Q2"},
            {"role": A, "content": "y", "weight": 1},
        ]
    }
    example, _ = convert(record, "messages")
    assert [m.weight for m in example.messages] == [None, 0, None, 1]


def test_text_record():
    example, problems = convert({"text": "Once upon a time."}, "text")
    assert problems == [] and example.text == "Once upon a time." and example.messages is None


def test_every_problem_of_a_record_is_reported():
    record = {
        "messages": [
            {"role": "usr", "content": "Q"},
            {"content": "no role"},
            {"role": U},
            {"role": U, "content": 3},
            {"role": A, "content": "   "},
            "not an object",
            {"role": U, "content": "ok", "weight": 1},
            {"role": A, "content": "ok", "weight": 2},
        ]
    }
    example, problems = convert(record, "messages")
    assert example is None
    assert problems == [
        (
            "unknown_role",
            "messages[0]: unknown role 'usr' (expected one of system, user, assistant)",
        ),
        ("missing_role", "messages[1]: missing 'role'"),
        ("missing_content", "messages[2]: missing 'content'"),
        ("wrong_type", "messages[3]: 'content' must be a string, got a number"),
        ("empty_content", "messages[4]: 'content' is empty"),
        ("wrong_type", "messages[5] must be an object, got a string"),
        (
            "bad_weight",
            "messages[6]: 'weight' is only allowed on assistant messages (role is user)",
        ),
        ("bad_weight", "messages[7]: 'weight' must be 0 or 1, got 2"),
    ]


@pytest.mark.parametrize(
    "record, fmt, kind, reason",
    [
        (
            {"messages": "hello"},
            "messages",
            "wrong_type",
            "'messages' must be a list of messages, got a string",
        ),
        ({"messages": []}, "messages", "empty_conversation", "the conversation has no messages"),
        (
            {"messages": [{"role": U, "content": "Q"}]},
            "messages",
            "no_assistant",
            "no assistant message: there is nothing to train on",
        ),
        (
            {
                "messages": [
                    {"role": U, "content": "Q"},
                    {"role": A, "content": "A"},
                    {"role": U, "content": "Q2"},
                ]
            },
            "messages",
            "last_turn_not_assistant",
            "the conversation ends on a user turn; the last message must be the assistant's answer "
            "(drop the trailing message or add the answer)",
        ),
        (
            {"conversations": [{"from": "bot", "value": "A"}]},
            "sharegpt",
            "unknown_role",
            "conversations[0]: unknown role 'bot' (expected one of system, human, user, gpt, assistant)",
        ),
        (
            {"conversations": [{"from": "human"}]},
            "sharegpt",
            "missing_content",
            "conversations[0]: missing 'value'",
        ),
        ({"instruction": "Q"}, "alpaca", "missing_key", "missing 'output'"),
        ({"instruction": "Q", "output": ""}, "alpaca", "empty_content", "'output' is empty"),
        (
            {"instruction": ["Q"], "output": "A"},
            "alpaca",
            "wrong_type",
            "'instruction' must be a string, got a list",
        ),
        (
            {"prompt": "Q", "completion": None},
            "prompt_completion",
            "missing_key",
            "missing 'completion'",
        ),
        ({"text": 5}, "text", "wrong_type", "'text' must be a string, got a number"),
        ({"text": ""}, "text", "empty_content", "'text' is empty"),
        ([1, 2], "messages", "wrong_type", "a record must be a JSON object, got a list"),
    ],
)
def test_record_problems(record, fmt, kind, reason):
    example, problems = convert(record, fmt)
    assert example is None
    assert problems == [(kind, reason)]


def test_mixed_formats_in_one_file_flag_the_minority():
    records = [
        (1, {"messages": [{"role": U, "content": "Q"}, {"role": A, "content": "A"}]}),
        (2, {"instruction": "Q", "output": "A"}),
        (3, {"messages": [{"role": U, "content": "Q2"}, {"role": A, "content": "A2"}]}),
        (4, {"foo": 1}),
    ]
    examples, problems, used = convert_records("f.jsonl", records)
    assert used == "messages"
    assert [e.line for e in examples] == [1, 3]
    assert [(p.line, p.kind) for p in problems] == [(2, "mixed_formats"), (4, "unknown_format")]
    assert problems[0].reason.startswith(
        "mixed formats: this record is alpaca (keys: instruction, output) but 2 of 4"
    )
    assert problems[1].reason.startswith("unknown record format (keys: foo)")


def test_forced_format_parses_every_record_as_it():
    records = [(1, {"prompt": "Q", "completion": "A"}), (2, {"text": "raw"})]
    examples, problems, used = convert_records("f.jsonl", records, fmt="prompt_completion")
    assert used == "prompt_completion" and [e.line for e in examples] == [1]
    assert [(p.line, p.kind, p.reason) for p in problems] == [
        (2, "missing_key", "missing 'prompt'"),
        (2, "missing_key", "missing 'completion'"),
    ]


def test_preference_data_is_refused_with_a_reason():
    records = [(1, {"prompt": "Q", "chosen": "good", "rejected": "bad"})]
    examples, problems, used = convert_records("f.jsonl", records)
    assert examples == [] and used == "preference"
    assert [(p.line, p.kind) for p in problems] == [(0, "unsupported_format")]


def test_unknown_forced_format():
    _, problems, _ = convert_records("f.jsonl", [(1, {"text": "x"})], fmt="chatml")
    assert problems[0].kind == "unknown_format" and "unknown format 'chatml'" in problems[0].reason
