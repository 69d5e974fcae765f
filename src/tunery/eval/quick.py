"""Exact match of generated answers against references, for one or more models on a held-out file.

The held-out file is in `messages` format: in each record the last assistant message is the reference
and the conversation before it is the prompt. Matching is strict on purpose (a format is either kept
or not); only whitespace at the ends of the text and Windows line ends are forgiven.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery.errors import TuneryError


def normalize(text: str) -> str:
    """The text as compared: `\\r\\n` made `\\n`, ends stripped; inner whitespace is kept (it is format)."""
    return text.replace("\r\n", "\n").strip()


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two texts are equal after `normalize`."""
    return normalize(prediction) == normalize(reference)


def score(predictions: list[str], references: list[str]) -> dict:
    """{'exact_match': share in [0, 1], 'correct': int, 'count': int} over paired texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    correct = sum(exact_match(p, r) for p, r in zip(predictions, references))
    count = len(references)
    return {"exact_match": correct / count if count else 0.0, "correct": correct, "count": count}


def split_record(record: dict, where: str) -> tuple[list[dict], str]:
    """(prompt conversation, reference answer) of one `messages` record."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise TuneryError(f"{where}: not a `messages` record", fix='write {"messages": [...]} per line')
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise TuneryError(f"{where}: needs a prompt followed by an assistant message as the reference")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    return prompt, messages[last]["content"]


def read_heldout(path: str | Path) -> tuple[list[list[dict]], list[str]]:
    """Prompts and references of every record of a `messages` JSONL file."""
    prompts: list[list[dict]] = []
    references: list[str] = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuneryError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
            prompt, reference = split_record(record, f"{path}:{number}")
            prompts.append(prompt)
            references.append(reference)
    if not references:
        raise TuneryError(f"{path} holds no records")
    return prompts, references


def score_target(
    target: str, prompts: list[list[dict]], references: list[str], max_new_tokens: int,
    n_examples: int = 3,
) -> dict:
    """Load one run folder or base model, answer every prompt greedily, and score the answers."""
    from tunery.inference import generate_batch, load_for_inference

    model, tokenizer = load_for_inference(target)
    answers = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    row = {"target": str(target), **score(answers, references)}
    row["examples"] = [
        {"prompt": p[-1]["content"], "reference": r, "answer": a}
        for p, r, a in list(zip(prompts, references, answers))[:n_examples]
    ]
    row["answers"] = answers
    return row


def exact_match_table(targets: list[str], data_path: str | Path, max_new_tokens: int) -> list[dict]:
    """One row per target: exact_match, correct, count, the first example outputs and all answers."""
    prompts, references = read_heldout(data_path)
    return [score_target(t, prompts, references, max_new_tokens) for t in targets]


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows of `exact_match_table`."""
    width = max([len("model")] + [len(r["target"]) for r in rows])
    lines = [f"{'model':<{width}}  exact match", f"{'-' * width}  -----------"]
    for r in rows:
        lines.append(f"{r['target']:<{width}}  {r['exact_match']:6.1%} ({r['correct']}/{r['count']})")
    return "\n".join(lines)
