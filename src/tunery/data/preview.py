"""Show what the model will see: the rendered tokens of a few examples with the trained ones marked."""

from __future__ import annotations

from itertools import groupby

from tunery.config import defaults
from tunery.data.dataset import load_examples
from tunery.data.messages import Example
from tunery.data.problems import raise_if_errors
from tunery.data.render import render_example

BRACKETS = ("[[", "]]")
ANSI_GREEN = ("\x1b[1;32m", "\x1b[0m")  # bold green, then reset


def mark_trained(
    ids: list[int], trained: list[bool], tokenizer, marks: tuple[str, str] = BRACKETS
) -> str:
    """Decode ``ids`` with each run of trained tokens wrapped in ``marks`` (``[[``/``]]`` by default).

    Runs are decoded whole rather than token by token, so that characters spread over several
    byte-level tokens come out intact.
    """
    parts: list[str] = []
    position = 0
    for is_trained, run in groupby(trained):
        count = len(list(run))
        text = tokenizer.decode(
            ids[position : position + count],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        parts.append(f"{marks[0]}{text}{marks[1]}" if is_trained else text)
        position += count
    return "".join(parts)


def render_previews(
    examples: list[Example],
    tokenizer,
    n: int = 3,
    train_on: str = "assistant",
    max_length: int | None = defaults.MAX_LENGTH,
    marks: tuple[str, str] = BRACKETS,
) -> list[dict]:
    """Render the first ``n`` examples: ids, trained flags, marked text, counts and location."""
    previews = []
    for example in examples[: max(n, 0)]:
        rendered = render_example(example, tokenizer, train_on, max_length)
        previews.append(
            {
                "source": example.source,
                "line": example.line,
                "ids": rendered.ids,
                "trained": rendered.trained,
                "text": mark_trained(rendered.ids, rendered.trained, tokenizer, marks),
                "tokens": len(rendered.ids),
                "trained_tokens": rendered.num_trained,
                "truncated": rendered.truncated,
                "answer_cut": rendered.answer_cut,
            }
        )
    return previews


def preview_examples(
    path,
    tokenizer,
    n: int = 3,
    train_on: str = "assistant",
    max_length: int = defaults.MAX_LENGTH,
    fmt: str = "auto",
) -> list[dict]:
    """The first ``n`` readable examples of ``path`` rendered with trained spans in ``[[ ]]``.

    Broken records are skipped (`tunery data check` lists them); a file with no readable example
    raises `TuneryError` with its problems.
    """
    examples, problems = load_examples([str(path)], fmt)
    if not examples:
        raise_if_errors(problems, what=str(path))
    return render_previews(examples, tokenizer, n, train_on, max_length)
