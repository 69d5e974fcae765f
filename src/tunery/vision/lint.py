"""`tunery data check` on image records: every bad image and record by file and line, before any
compute is spent.

Per record: what `records` refuses (unknown parts, images in answers, web addresses, bad data URLs),
each image that is missing, unreadable, truncated, oversized, animated or of an unsupported format
(`images`), a count of images that differs from the image placeholders the model's template writes (a
text part that spells `<image>` itself, or a template that drops images of some turns: the model would
get features without tokens or tokens without features), and, through the processor, the length in
tokens with the images expanded (a cut through an image is an error, a cut answer a warning).
"""

from __future__ import annotations

from pathlib import Path

from tunery.data.lint import LintReport, percentile
from tunery.data.problems import Problem
from tunery.errors import TuneryError
from tunery.vision.images import MAX_PIXELS, ImageProblem, open_image
from tunery.vision.records import VisionExample, has_image_parts, to_vision_example


def is_vision_data(paths: list[str]) -> bool:
    """Do the files hold image records (any record with an image part, or a captions table)?"""
    from tunery.data.readers import read_records

    for path in paths:
        if Path(path).is_file() and b"image" in Path(path).read_bytes():  # most text files end here, unparsed
            records, _ = read_records(path)
            if any(has_image_parts(record) for _line, record in records):
                return True
    return False


def placeholder_of(processor) -> str | None:
    """The text a template writes for one image (before the processor expands it)."""
    return getattr(processor, "image_token", None)


def _image_problems(example: VisionExample, max_pixels: int) -> list[Problem]:
    problems = []
    for index, ref in enumerate(example.images, 1):
        try:
            open_image(ref, max_pixels)
        except ImageProblem as exc:
            problems.append(Problem(example.source, example.line, f"image {index}: {exc.reason}", "error", exc.kind))
    return problems


def _count_problem(example: VisionExample, processor) -> Problem | None:
    from tunery.vision.render import template_text

    placeholder = placeholder_of(processor)
    if not placeholder:
        return None
    written = template_text(processor, example.messages).count(placeholder)
    if written == len(example.images):
        return None
    return Problem(example.source, example.line,
                   f"the record has {len(example.images)} image(s) but the model's template writes {written} image "
                   f"placeholder(s) ({placeholder}): a text part may spell {placeholder} itself, or the template "
                   "drops images of some turns", "error", "image_count_mismatch")


def _token_checks(example: VisionExample, processor, train_on: str, max_length: int, max_pixels: int,
                  lengths: list[int]) -> list[Problem]:
    from tunery.vision.render import render_vision

    try:
        row = render_vision(example, processor, train_on, None, max_pixels)
    except TuneryError as exc:
        return [Problem(example.source, example.line, exc.what.split(": ", 1)[-1], "error", "render_failed")]
    lengths.append(len(row.ids))
    if len(row.ids) <= max_length:
        return []
    try:
        cut = render_vision(example, processor, train_on, max_length, max_pixels)
    except TuneryError:
        return [Problem(example.source, example.line, f"{len(row.ids)} tokens with its images expanded: max_length "
                        f"{max_length} would cut through an image", "error", "image_cut")]
    if cut.answer_cut:
        return [Problem(example.source, example.line, f"{len(row.ids)} tokens with its images expanded: max_length "
                        f"{max_length} cuts its answer", "warning", "answer_cut")]
    return []


def check_vision_files(paths: list[str], processor=None, train_on: str = "assistant", max_length: int = 2048,
                       max_pixels: int = MAX_PIXELS, no_processor_why: str = "") -> LintReport:
    """Lint image records (see the module's note). Without a processor only the records and images are
    checked (a warning says so, and why: `no_processor_why`)."""
    from tunery.data.readers import read_records

    problems: list[Problem] = []
    lengths: list[int] = []
    records = images = 0
    for path in paths:
        rows, found = read_records(path)
        problems += found
        for line, record in rows:
            records += 1
            example, bad = to_vision_example(path, line, record)
            problems += bad
            if example is None:
                continue
            images += len(example.images)
            image_problems = _image_problems(example, max_pixels)
            problems += image_problems
            if processor is None or image_problems:
                continue
            mismatch = _count_problem(example, processor)
            problems += [mismatch] if mismatch else _token_checks(example, processor, train_on, max_length,
                                                                  max_pixels, lengths)
    if processor is None:
        problems.append(Problem(paths[0], 0, "no processor for this model: image-token counts and lengths were not "
                                "checked (pass --model with a vision-language model)" + (f": {no_processor_why}" if no_processor_why
                                                                          else ""), "warning", "no_processor"))
    lengths.sort()
    stats = {"max_length": max_length, "train_on": train_on, "method": "vision", "validation": None,
             "train": {"records": records, "what": f"{images} images; tokens with images expanded",
                       "tokens_p50": percentile(lengths, 50), "tokens_p90": percentile(lengths, 90),
                       "tokens_max": lengths[-1] if lengths else 0}}
    return LintReport(errors=[p for p in problems if p.severity == "error"],
                      warnings=[p for p in problems if p.severity == "warning"], stats=stats)
