"""`check_files`: lint datasets before any compute is spent.

Every bad record of every file is reported at once, with file, line and reason, plus the token
statistics that decide `max_length` and batch size. Errors stop training; warnings do not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunery.config import defaults
from tunery.data.control_tokens import ControlTokens, control_token_problems
from tunery.data.dataset import gc_paused, load_file, method_problems, progress
from tunery.data.dedup import NEAR_THRESHOLD, duplicate_groups
from tunery.data.messages import Example
from tunery.data.problems import Problem
from tunery.data.windows import count_windows
from tunery.data.render import TRAIN_ON, render_examples, truncate
from tunery.data.sources import DEFAULT_INCLUDE, expand
from tunery.errors import TuneryError

# An example this many times longer than the median pads its whole batch to its length.
LONG_TAIL_FACTOR = 4
# Below this many examples a median says little, so long tails are not reported.
LONG_TAIL_MIN_EXAMPLES = 5
METHODS = ("sft", "cpt", "auto", "dpo", "orpo", "reward", "kto", "rl")
PREFERENCE_METHODS = ("dpo", "orpo", "reward", "kto", "rl")


@dataclass
class LintReport:
    """Errors and warnings (each a located `Problem`) and token statistics."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings do not count)."""
        return not self.errors

    def to_json(self) -> dict:
        """A JSON-ready dict: ok, errors and warnings (file, line, reason, severity, kind), stats."""
        return {
            "ok": self.ok,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "stats": self.stats,
        }

    def format_text(self) -> str:
        """Human-readable report: one ``file:line: reason`` line per problem, then statistics."""
        lines: list[str] = []
        for title, problems in (("Errors", self.errors), ("Warnings", self.warnings)):
            if problems:
                lines.append(f"{title} ({len(problems)}):")
                lines.extend(p.format() for p in problems)
                lines.append("")
        for split in ("train", "validation"):
            if self.stats.get(split) and "records" in self.stats[split]:  # preference, feedback or prompt records
                s = self.stats[split]
                lines.append(f"{split}: {s['records']} records; {s['what']} p50 {s['tokens_p50']}, p90 {s['tokens_p90']}, "
                             f"max {s['tokens_max']} (max_length {self.stats['max_length']})")
            elif self.stats.get(split):
                lines.extend(_format_stats(split, self.stats[split], self.stats["max_length"]))
        counts = f"{_plural(len(self.errors), 'error')}, {_plural(len(self.warnings), 'warning')}"
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {counts}")
        return "\n".join(lines)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _format_stats(split: str, stats: dict, max_length: int) -> list[str]:
    files = ", ".join(
        f"{path} ({info['format'] or 'unknown format'}, {_plural(info['examples'], 'example')}"
        + (f" from {_plural(info['files'], 'file')})" if "files" in info else ")")
        for path, info in stats["files"].items()
    )
    length = stats["length"]
    tokens, trained = stats["tokens"], stats["trained_tokens"]
    share = 100.0 * trained / tokens if tokens else 0.0
    lines = [
        f"{split}: {files}",
        f"  {_plural(stats['examples'], 'example')}, {tokens} tokens, {trained} trained ({share:.1f}%)",
        f"  length p50 {length['p50']}, p90 {length['p90']}, p99 {length['p99']}, "
        f"max {length['max']} (max_length {max_length}; {stats['over_max_length']} longer)",
    ]
    windows = stats.get("windows")
    if windows:
        how = (f"split into {_plural(windows['windows'], 'window')}" if windows["long_texts"] == "split"
               else "cut at max_length")
        lines.append(f"  raw text: {_plural(windows['documents'], 'document')}, {windows['longer']} longer than "
                     f"max_length ({how}); {windows['trained_tokens']} tokens trained, "
                     f"{windows['dropped_tokens']} dropped")
    if "duplicates" in stats:
        lines.append("  " + _format_duplicates(stats["duplicates"]))
    return lines


def _format_duplicates(counts: dict) -> str:
    if not counts["exact_groups"] + counts["near_groups"]:
        return f"duplicate documents: none (exact, or near at Jaccard >= {counts['near_threshold']})"
    exact = f"{_plural(counts['exact_groups'], 'exact group')} ({counts['exact_extra']} beyond the first of each)"
    near = f"{_plural(counts['near_groups'], 'near group')} ({counts['near_extra']} beyond the first of each)"
    return f"duplicate documents: {exact}, {near}; data.drop_duplicates: exact | near drops them"


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _at(example: Example, reason: str, kind: str, severity: str = "warning") -> Problem:
    return Problem(example.source, example.line, reason, severity, kind)


def _length_problems(
    example: Example, full_ids: list[int], trained: list[bool], max_length: int, long_texts: str = "split"
) -> list[Problem]:
    length = len(full_ids)
    if length <= max_length or example.messages is None and long_texts == "split":
        return []  # a long raw text is split into windows: nothing is lost (see the window statistics)
    lost = sum(trained) - truncate(full_ids, trained, max_length).num_trained
    if example.messages is None:
        reason = (
            f"text is {length} tokens, longer than max_length {max_length}: "
            f"the last {length - max_length} are dropped (data.long_texts: split keeps them)"
        )
        return [_at(example, reason, "text_truncated")]
    head = f"example is {length} tokens, longer than max_length {max_length}"
    if lost:
        reason = (
            f"{head}: truncation cuts {lost} of its {sum(trained)} trained tokens "
            "(raise max_length or shorten the example)"
        )
        return [_at(example, reason, "too_long", "error")]
    return [_at(example, f"{head}; only untrained tokens are cut", "truncated")]


Measured = tuple[Example, int, int]  # an example, its token count, its trained token count


def _render_checks(
    examples: list[Example], tokenizer, train_on: str, max_length: int, allow_special_tokens: bool,
    long_texts: str = "split",
) -> tuple[list[Measured], list[Problem]]:
    """Render every example in full; returns what was measured and the problems found."""
    measured: list[Measured] = []
    problems: list[Problem] = []
    controls = ControlTokens.of(tokenizer)
    results = render_examples(examples, tokenizer, train_on, max_length=None)
    for example, rendered in progress(zip(examples, results), "checking", len(examples)):
        problems += control_token_problems(example, controls, allow_special_tokens)
        if isinstance(rendered, TuneryError):
            reason = rendered.what.removeprefix(f"{example.location}: ")
            reason += f" ({rendered.why})" if rendered.why else ""
            problems.append(_at(example, reason, "render_error", "error"))
            continue
        measured.append((example, len(rendered.ids), rendered.num_trained))
        if rendered.num_trained == 0:
            reason = "no trained token (every assistant turn has weight 0); the example is dropped"
            problems.append(_at(example, reason, "no_trained_tokens"))
        problems += _length_problems(example, rendered.ids, rendered.trained, max_length, long_texts)
    return measured, problems


def _duplicates(examples: list[Example]) -> list[Problem]:
    first: dict[tuple, Example] = {}
    problems = []
    for example in examples:
        earlier = first.setdefault(example.key(), example)
        if earlier is not example:
            problems.append(_at(example, f"duplicate of {earlier.location}", "duplicate"))
    return problems


def _overlap(train: list[Example], validation: list[Example]) -> list[Problem]:
    # An error, not a warning: validation loss picks the kept checkpoint and stops training early,
    # so an example seen in training makes both choices on a number that flatters the model.
    # `tunery train` only warns about it (the records are well formed); this check is the gate.
    seen: dict[tuple, Example] = {}
    for example in train:
        seen.setdefault(example.key(), example)
    return [
        _at(
            e,
            f"also in the training data ({seen[e.key()].location}); validation examples must be unseen",
            "train_val_overlap",
            "error",
        )
        for e in validation
        if e.key() in seen
    ]


def _long_tails(measured: list[Measured]) -> list[Problem]:
    if len(measured) < LONG_TAIL_MIN_EXAMPLES:
        return []
    median = percentile(sorted(n for _, n, _ in measured), 50)
    return [
        _at(
            e,
            f"long tail: {n} tokens, {n / median:.1f}x the median {median}; "
            "it pads its whole batch to that length",
            "long_tail",
        )
        for e, n, _ in measured
        if n > LONG_TAIL_FACTOR * median
    ]


def _window_stats(measured: list[Measured], max_length: int, long_texts: str, overlap: int) -> dict | None:
    """Raw texts: documents, how many are split, windows, and tokens trained vs dropped."""
    lengths = [n for example, n, _ in measured if example.messages is None]
    if not lengths:
        return None
    count = count_windows(lengths, max_length, overlap, long_texts == "split")
    return {"long_texts": long_texts, "window_overlap": overlap} | dict(zip(
        ("documents", "longer", "windows", "tokens", "trained_tokens", "dropped_tokens"), count.astuple()))


def _split_stats(files: dict, measured: list[Measured], max_length: int) -> dict:
    ordered = sorted(n for _, n, _ in measured)
    return {
        "files": files,
        "examples": len(measured),
        "tokens": sum(ordered),
        "trained_tokens": sum(t for _, _, t in measured),
        "length": {
            "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99),
            "max": ordered[-1] if ordered else 0,
        },
        "over_max_length": sum(n > max_length for n in ordered),
    }


@dataclass
class _Split:
    """One side (train or validation) as read: examples, read problems, per-entry format/count, and
    every file in reading order (a folder's files after the folder)."""

    examples: list[Example]
    problems: list[Problem]
    files: dict[str, dict]
    order: list[str] = field(default_factory=list)


def _load_split(paths: Iterable[str], fmt: str, include=DEFAULT_INCLUDE, exclude=()) -> _Split:
    split = _Split([], [], {})
    for path in map(str, paths):
        sources, problems = expand(path, include, exclude)
        formats, count = [], 0
        split.order.append(path)
        for source in sources:
            examples, found, used = load_file(source.path, fmt, source.document)
            formats.append(used)
            count += len(examples)
            split.examples += examples
            problems += found
            split.order.append(source.path)
        split.files[path] = _entry_info(path, formats, count, len(sources))
        split.problems += problems
    return split


def _entry_info(path: str, formats: list[str | None], examples: int, files: int) -> dict:
    """format and example count of one entry; a folder also says how many files it stood for."""
    if not Path(path).is_dir():
        return {"format": formats[0] if formats else None, "examples": examples}
    known = sorted({f for f in formats if f is not None})
    return {"format": "+".join(known) or None, "examples": examples, "files": files}


def _check_split(split: _Split, tokenizer, method: str, train_on: str, max_length: int, allow: bool,
                 threshold: float = NEAR_THRESHOLD, long_texts: str = "split", overlap: int = 0):
    """Every problem of one split and its statistics."""
    measured, found = _render_checks(split.examples, tokenizer, train_on, max_length, allow, long_texts)
    problems = split.problems + method_problems(split.examples, method) + found
    conversations = [e for e in split.examples if e.messages is not None]
    documents = [e for e in split.examples if e.messages is None]
    groups, duplicates = _document_duplicates(documents, threshold)
    problems += _duplicates(conversations) + groups + _long_tails(measured)
    stats = _split_stats(split.files, measured, max_length)
    if documents:
        stats["duplicates"] = duplicates
    windows = _window_stats(measured, max_length, long_texts, overlap)
    return problems, stats | ({"windows": windows} if windows else {})


def _document_duplicates(documents: list[Example], threshold: float) -> tuple[list[Problem], dict]:
    """One warning per group of duplicate raw-text documents, at its first member, naming every
    member; and the counts for the statistics."""
    groups = duplicate_groups([e.text for e in documents], "near", threshold)
    problems = []
    counts = {"exact_groups": 0, "exact_extra": 0, "near_groups": 0, "near_extra": 0,
              "near_threshold": threshold}
    for group in groups:
        members = [documents[i] for i in group.members]
        counts[f"{group.kind}_groups"] += 1
        counts[f"{group.kind}_extra"] += len(members) - 1
        what = ("exact duplicates (the same text after normalising whitespace and case)" if group.kind == "exact"
                else f"near duplicates (estimated word 5-gram Jaccard >= {threshold})")
        modes = "exact or near" if group.kind == "exact" else "near"
        reason = (f"{len(members)} {what}: {', '.join(e.location for e in members)}; "
                  f"data.drop_duplicates: {modes} keeps only the first")
        problems.append(_at(members[0], reason, "duplicate" if group.kind == "exact" else "near_duplicate"))
    return problems, counts


def check_files(
    train_paths,
    tokenizer,
    *,
    validation_paths=(),
    max_length: int = defaults.MAX_LENGTH,
    train_on: str = "assistant",
    fmt: str = "auto",
    method: str = "sft",
    allow_special_tokens: bool = False,
    include=DEFAULT_INCLUDE,
    exclude=(),
    near_threshold: float = NEAR_THRESHOLD,
    long_texts: str = "split",
    window_overlap: int = 0,
) -> LintReport:
    """Lint training (and validation) files as `tunery train` would read them.

    Reports, each with file and line: unreadable or invalid records, wrong types, unknown roles,
    missing or empty content, conversations with no assistant turn or ending on another turn, mixed
    formats, examples whose answer ``max_length`` would cut, control tokens spelled in text (errors
    unless ``allow_special_tokens``: a record could forge turns with them); duplicates (for raw-text
    documents, groups of exact and near duplicates, see `tunery.data.dedup`), long tails
    (warnings); train/validation overlap (an error, see `_overlap`). A folder stands for its files
    matching ``include`` and not ``exclude`` (`tunery.data.sources`).
    ``method: cpt`` trains every token and accepts raw text; ``auto`` means cpt when every training
    file is raw text (it can serve nothing else), sft otherwise. Statistics are per split; raw texts
    also get window statistics (`long_texts`, `window_overlap`: how `tunery train` splits them).
    """
    if method in PREFERENCE_METHODS:
        from tunery.data.preference_lint import check_preference_files

        with gc_paused():
            return check_preference_files(train_paths, tokenizer, method, validation_paths, max_length,
                                          allow_special_tokens)
    if long_texts not in ("split", "cut"):
        raise TuneryError(f"unknown long_texts '{long_texts}'", fix="long_texts: split or cut")
    if train_on not in TRAIN_ON or method not in METHODS:
        raise TuneryError(
            f"unknown train_on '{train_on}' or method '{method}'",
            fix=f"train_on: {', '.join(TRAIN_ON)}; method: {', '.join(METHODS)}",
        )
    with gc_paused():
        train = _load_split(train_paths, fmt, include, exclude)
        validation = _load_split(validation_paths, fmt, include, exclude) if validation_paths else None
        return _check_splits(train, validation, tokenizer, max_length, train_on, method, allow_special_tokens,
                             near_threshold, (long_texts, window_overlap))


def _check_splits(
    train: _Split, validation: _Split | None, tokenizer, max_length, train_on, method, allow, threshold,
    windows: tuple[str, int] = ("split", 0),
) -> LintReport:
    if method == "auto":
        formats = {info["format"] for info in train.files.values()} - {None}
        method = "cpt" if formats == {"text"} else "sft"
    train_on = "all" if method == "cpt" else train_on
    problems, train_stats = _check_split(train, tokenizer, method, train_on, max_length, allow, threshold, *windows)
    stats = {"max_length": max_length, "train_on": train_on, "method": method}
    stats |= {"train": train_stats, "validation": None}
    if validation is not None:
        found, stats["validation"] = _check_split(
            validation, tokenizer, method, train_on, max_length, allow, threshold, *windows
        )
        problems += found + _overlap(train.examples, validation.examples)
    order = {path: i for i, path in enumerate([*train.order, *(validation.order if validation else [])])}
    problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
    return LintReport(
        errors=[p for p in problems if p.severity == "error"],
        warnings=[p for p in problems if p.severity == "warning"],
        stats=stats,
    )
