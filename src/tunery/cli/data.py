"""Bodies of `tunery data check` and `tunery data preview` (wired in cli/main.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunery.config import defaults
from tunery.errors import TuneryError


@dataclass
class SourceOptions:
    """How folders are read and duplicates told (data.include, data.exclude, the near threshold)."""

    include: list[str] = field(default_factory=lambda: list(defaults.INCLUDE))
    exclude: list[str] = field(default_factory=list)
    near_threshold: float = defaults.NEAR_DUPLICATE_THRESHOLD


def run_check(
    files: list[Path],
    model: str,
    validation: list[Path],
    max_length: int,
    train_on: str,
    fmt: str,
    as_json: bool,
    method: str = "auto",
    allow_special_tokens: bool = False,
    sources: SourceOptions | None = None,
    long_texts: str = "split",
    window_overlap: int = 0,
) -> int:
    """Lint ``files`` (and ``validation``) with ``model``'s tokenizer and print the report.

    Returns 0 when there is no error, 1 otherwise. With ``as_json`` stdout holds only the JSON.
    With ``method`` auto, raw-text-only training files are linted as continued pre-training.
    ``allow_special_tokens`` turns control tokens spelled in text from errors into warnings.
    ``sources`` says which files of a folder are read and when documents are near duplicates.
    """
    from tunery.data.lint import check_files
    from tunery.models.load import load_tokenizer
    from tunery.vision.lint import is_vision_data

    if method == "vision" or is_vision_data([str(f) for f in [*files, *validation]]):
        return run_vision_check([*files, *validation], model, max_length, train_on, as_json)
    sources = sources or SourceOptions()
    tokenizer = load_tokenizer(model)
    report = check_files(
        [str(f) for f in files],
        tokenizer,
        validation_paths=[str(v) for v in validation],
        max_length=max_length,
        train_on=train_on,
        fmt=fmt,
        method=method,
        allow_special_tokens=allow_special_tokens,
        include=sources.include,
        exclude=sources.exclude,
        near_threshold=sources.near_threshold,
        long_texts=long_texts,
        window_overlap=window_overlap,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format_text())
    return 0 if report.ok else 1


def run_vision_check(files: list[Path], model: str, max_length: int, train_on: str, as_json: bool) -> int:
    """`tunery data check` on image records (`tunery.vision.lint`), with ``model``'s processor when it
    has one. Returns 0 when there is no error, 1 otherwise."""
    from tunery.vision.lint import check_vision_files
    from tunery.vision.model import load_processor

    try:
        processor, why = load_processor(model), ""
    except TuneryError as exc:
        processor, why = None, exc.what
    report = check_vision_files([str(f) for f in files], processor, train_on, max_length, no_processor_why=why)
    print(json.dumps(report.to_json(), indent=2) if as_json else report.format_text())
    return 0 if report.ok else 1


def run_preview(
    file: Path, model: str, n: int, max_length: int, train_on: str, fmt: str, as_json: bool
) -> int:
    """Print the first ``n`` readable examples of ``file`` with trained tokens marked: green on a
    terminal, ``[[ ]]`` otherwise. Returns 1 when the file has broken records (listed by
    `tunery data check`), else 0."""
    from tunery.data.dataset import load_examples
    from tunery.data.preview import ANSI_GREEN, BRACKETS, render_previews
    from tunery.data.problems import errors_of, raise_if_errors
    from tunery.models.load import load_tokenizer

    examples, problems = load_examples([str(file)], fmt)  # a file, or a folder's documents
    if not examples:
        raise_if_errors(problems, what=str(file))
        raise TuneryError(f"{file} holds no example to preview")
    tokenizer = load_tokenizer(model)
    marks = ANSI_GREEN if sys.stdout.isatty() and not as_json else BRACKETS
    previews = render_previews(examples, tokenizer, n, train_on, max_length, marks)
    if as_json:
        print(json.dumps(previews))
    else:
        for item in previews:
            cut = (
                ", truncated" + (" (answer cut)" if item["answer_cut"] else "")
                if item["truncated"]
                else ""
            )
            print(
                f"--- {item['source']}:{item['line']}: {item['tokens']} tokens, "
                f"{item['trained_tokens']} trained{cut} ---"
            )
            print(item["text"])
        if marks == BRACKETS:
            print("(trained tokens are shown inside [[ ]])")
    errors = errors_of(problems)
    if errors:
        print(
            f"note: {len(errors)} record(s) of {file} have errors and were skipped; "
            f"run `tunery data check {file}` to list them",
            file=sys.stderr,
        )
    return 1 if errors else 0
