"""Helpers for data tests: one-turn chat records and JSONL files written from records or raw lines."""

from __future__ import annotations

import json


def chat(question, answer):
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path, lines):
    """Write `lines` (records as JSON, strings as they are) one per line; returns the path as a string."""
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return str(path)
