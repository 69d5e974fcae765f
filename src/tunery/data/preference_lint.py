"""`tunery data check --method dpo|orpo|reward|kto|rl`: lint preference, feedback and prompt records.

Every record problem of every file at once, with file and line (a side empty, the same answer twice,
prompts that differ between the two sides of a pair, a missing label, a prompt that does not end on a
user turn, control tokens spelled in text), then what `max_length` would do to each answer (cut or
drop it), duplicates, and token statistics of the answers.
"""

from __future__ import annotations

from collections import Counter

from tunery.data.messages import Example
from tunery.data.preference import forged_turns, load_records
from tunery.data.problems import Problem
from tunery.data.render import render_examples

KINDS = {"dpo": "pairs", "orpo": "pairs", "reward": "pairs", "kto": "feedback", "rl": "prompts"}


def _conversations(example, kind: str) -> list[tuple[str, Example]]:
    """(side name, conversation) of a record: both sides of a pair, the answer of feedback, the prompt."""
    if kind == "pairs":
        return [(side, example.conversation(side)) for side in ("chosen", "rejected")]
    if kind == "feedback":
        return [("completion", example.conversation())]
    return [("prompt", Example(example.source, example.line, messages=example.prompt))]


def _length_problems(examples: list, kind: str, tokenizer, max_length: int) -> tuple[list[Problem], list[int]]:
    """Answers `max_length` would cut (a warning) or leave with nothing trained (an error); answer lengths."""
    if kind == "prompts":
        sides = [(e, name, c) for e in examples for name, c in _conversations(e, kind)]
        lengths = [len(tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in c.messages],
                                                    add_generation_prompt=True, tokenize=True)) for _, _, c in sides]
        return [Problem(e.source, e.line, f"the prompt is {n} tokens, longer than max_length {max_length}",
                        "warning", "long_prompt") for (e, _, _), n in zip(sides, lengths) if n > max_length], lengths
    sides = [(e, name, c) for e in examples for name, c in _conversations(e, kind)]
    problems, lengths = [], []
    for (example, name, _), rendered in zip(sides, render_examples([c for _, _, c in sides], tokenizer, "last", None)):
        if isinstance(rendered, Exception):
            problems.append(Problem(example.source, example.line, rendered.what, kind="render_error"))
            continue
        lengths.append(rendered.num_trained)
        if len(rendered.ids) > max_length:
            first_trained = rendered.trained.index(True) if rendered.num_trained else len(rendered.ids)
            dropped = first_trained >= max_length
            problems.append(Problem(
                example.source, example.line,
                f"'{name}' is {len(rendered.ids)} tokens with its prompt: max_length {max_length} "
                + ("leaves none of the answer (the record is dropped)" if dropped else "cuts part of the answer"),
                "error" if dropped else "warning", "answer_dropped" if dropped else "answer_cut"))
    return problems, lengths


def _duplicates(examples: list, kind: str) -> list[Problem]:
    keys = Counter()
    found = []
    for e in examples:
        key = tuple((m.role, m.content) for _, c in _conversations(e, kind) for m in c.messages)
        keys[key] += 1
        if keys[key] == 2:
            found.append(Problem(e.source, e.line, "a duplicate of an earlier record", "warning", "duplicate"))
    return found


def check_preference_files(train_paths, tokenizer, method: str, validation_paths=(), max_length: int = 1024,
                           allow_special_tokens: bool = False):
    """The `LintReport` of preference (dpo, orpo, reward), feedback (kto) or prompt (rl) files."""
    from tunery.data.lint import LintReport

    kind = KINDS[method]
    problems, stats = [], {"max_length": max_length, "method": method, "train": None, "validation": None}
    for split, paths in (("train", train_paths), ("validation", validation_paths)):
        if not paths:
            continue
        examples, found = load_records([str(p) for p in paths], kind)
        conversations = [c for e in examples for _, c in _conversations(e, kind)]
        lengths_problems, lengths = _length_problems(examples, kind, tokenizer, max_length)
        problems += found + forged_turns(tokenizer, conversations, allow_special_tokens) + lengths_problems + _duplicates(examples, kind)
        stats[split] = _stats(examples, lengths, kind)
    order = {str(p): i for i, p in enumerate([*train_paths, *validation_paths])}
    problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
    return LintReport(errors=[p for p in problems if p.severity == "error"],
                      warnings=[p for p in problems if p.severity == "warning"], stats=stats)


def _stats(examples: list, lengths: list[int], kind: str) -> dict:
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

    stats = {"records": len(examples), "tokens_p50": pct(0.5), "tokens_p90": pct(0.9),
             "tokens_max": ordered[-1] if ordered else 0, "what": "prompt tokens" if kind == "prompts" else "answer tokens"}
    if kind == "feedback":
        stats["desirable"] = sum(1 for e in examples if e.desirable)
    return stats
