"""From files named in a config to rendered training and validation examples.

`build_datasets` is what the trainer calls. It refuses to start on broken data: every problem of
every file is listed in one error, so that one edit fixes them all.
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.data.control_tokens import ControlTokens, control_token_problems
from tunery.data.dedup import drop_from_splits
from tunery.data.formats import convert_records
from tunery.data.messages import Example
from tunery.data.problems import Problem, raise_if_errors
from tunery.data.readers import DOCUMENT_SUFFIXES, read_records
from tunery.data.render import Datasets, Rendered, render_examples, truncate
from tunery.data.sources import DEFAULT_INCLUDE, expand
from tunery.data.windows import split_windows
from tunery.errors import TuneryError

if TYPE_CHECKING:
    from tunery.config.schema import TrainConfig


def load_examples(
    paths: list[str], fmt: str = "auto", include=DEFAULT_INCLUDE, exclude=()
) -> tuple[list[Example], list[Problem]]:
    """Read and convert every record of ``paths``; returns the good examples and every problem.

    ``fmt`` forces a format for all files; ``auto`` detects it per file from the records' keys. A
    folder stands for its files that match ``include`` and not ``exclude`` (`tunery.data.sources`).
    """
    examples: list[Example] = []
    problems: list[Problem] = []
    for path in paths:
        sources, found = expand(str(path), include, exclude)
        problems.extend(found)
        for source in sources:
            converted, found, _ = load_file(source.path, fmt, source.document)
            examples.extend(converted)
            problems.extend(found)
    return examples, problems


def load_file(
    path: str, fmt: str = "auto", document: bool = False
) -> tuple[list[Example], list[Problem], str | None]:
    """One file's examples, problems, and the format used (None when none could be told). A
    document (``.txt``, ``.md``, or ``document``) is one raw-text example, whatever ``fmt`` says."""
    document = document or Path(path).suffix.lower() in DOCUMENT_SUFFIXES
    records, problems = read_records(path, document)
    if not records:
        if not problems:
            problems.append(Problem(path, 0, "the file holds no records", kind="empty_file"))
        return [], problems, None
    examples, found, used = convert_records(path, records, "text" if document else fmt)
    return examples, problems + found, used


def method_problems(examples: list[Example], method: str) -> list[Problem]:
    """SFT learns from answers, so raw text records are an error there (CPT takes both)."""
    if method == "cpt":
        return []
    return [
        Problem(
            e.source,
            e.line,
            "raw text record, but method sft trains on conversations; "
            "use method: cpt for raw text, or convert it to messages",
            kind="text_needs_cpt",
        )
        for e in examples
        if e.messages is None
    ]


def split_validation(
    examples: list[Example], share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out ``round(share * n)`` examples (at least 1, and never all) chosen by a generator
    seeded with ``seed``, so the same config always gives the same split. Order is kept."""
    import torch

    if share <= 0 or len(examples) < 2:
        return examples, []
    count = min(len(examples) - 1, max(1, round(share * len(examples))))
    generator = torch.Generator().manual_seed(seed)
    held = set(torch.randperm(len(examples), generator=generator)[:count].tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector for the block. Reading and rendering a dataset allocates
    millions of small objects (records, token lists, offsets) that hold no reference cycles, so its
    full passes free nothing, yet they cost about 15% of `tunery data check`'s time on 20,000
    records (more on larger files, each pass being longer). Reference counting still frees memory."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def progress(items, desc: str, total: int | None = None):
    """``items`` wrapped in a progress bar on a terminal only (logs and captured output stay clean),
    and only when there are enough of them (``total``, else ``len(items)``) to take a noticeable time."""
    total = len(items) if total is None else total
    if not sys.stderr.isatty() or total < 500:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="ex", total=total, leave=False, file=sys.stderr)


def render_all(
    examples: list[Example], tokenizer, train_on: str, max_length: int, long_texts: str = "split",
    overlap: int = 0,
) -> tuple[list[Rendered], list[str], list[Problem]]:
    """Render each example; drop (with a warning) those left with no trained token.

    A conversation is cut at ``max_length``; a raw text longer than that is split into windows that
    train every token once (``long_texts="split"``, `tunery.data.windows`) or cut (``"cut"``).
    Returns (rendered rows, warnings, problems); a problem is an example the template cannot render.
    """
    rendered: list[Rendered] = []
    warnings: list[str] = []
    problems: list[Problem] = []
    texts_cut = texts_split = 0
    split = long_texts == "split"
    results = render_examples(examples, tokenizer, train_on, None if split else max_length)
    for example, item in progress(zip(examples, results), "tokenizing", len(examples)):
        if isinstance(item, TuneryError):
            reason = item.what.removeprefix(f"{example.location}: ")
            reason += f" ({item.why})" if item.why else ""
            problems.append(Problem(example.source, example.line, reason, kind="render_error"))
            continue
        if split and example.messages is None:
            windows = split_windows(item, max_length, overlap)
            texts_split += len(windows) > 1
            rendered.extend(windows)
            continue
        if split:
            item = truncate(item.ids, item.trained, max_length)
        if item.num_trained == 0:
            why = (
                f"every trained token lies beyond max_length {max_length}"
                if item.answer_cut
                else "it has no trained token (every assistant turn has weight 0?)"
            )
            warnings.append(f"{example.location}: dropped: {why}")
            continue
        if item.answer_cut and example.messages is None:
            texts_cut += 1
        elif item.answer_cut:
            warnings.append(
                f"{example.location}: cut at max_length {max_length}: part of the answer is lost"
            )
        rendered.append(item)
    if texts_cut:
        # One line, not one per document: long documents are common in a pre-training corpus.
        warnings.append(
            f"{texts_cut} raw text example(s) are longer than max_length {max_length}; "
            "only their first max_length tokens are trained (data.long_texts: split keeps the rest)"
        )
    if texts_split:
        warnings.append(f"{texts_split} raw text example(s) are longer than max_length {max_length}: split "
                        "into windows that train every token once")
    return rendered, warnings, problems


def _overlap_warning(train: list[Example], validation: list[Example]) -> list[str]:
    # `tunery data check` reports overlap as an error; training only warns, since overlap can be
    # deliberate (a memorisation test) and the records themselves are well formed.
    seen = {e.key() for e in train}
    leaked = [e for e in validation if e.key() in seen]
    if not leaked:
        return []
    return [
        f"{len(leaked)} validation example(s) also appear in the training data (first: "
        f"{leaked[0].location}); validation loss will look better than it is"
    ]


def build_datasets(cfg: TrainConfig, tokenizer, cache_dir: Path | None = None,
                   write_cache: bool = True) -> Datasets:
    """Training and validation examples for a config.

    With `cache_dir`, the rendered rows are read from there when the data files, tokenizer and data
    settings are unchanged (`tunery.data.token_cache`), and written there otherwise (`write_cache`).
    """
    if cache_dir is None:
        return render_datasets(cfg, tokenizer)
    from tunery.data import token_cache

    key = token_cache.cache_key(cfg, tokenizer)
    cached = token_cache.load(cache_dir, key)
    if cached is not None:
        return cached
    result = render_datasets(cfg, tokenizer)
    if write_cache:
        token_cache.save(cache_dir, key, result)
    return result


def render_datasets(cfg: TrainConfig, tokenizer) -> Datasets:
    """Read, check and render the training and validation examples (no cache).

    Reads ``cfg.data.train`` / ``cfg.data.validation`` (absolute paths), with ``cfg.data.format``,
    ``train_on``, ``max_length`` and ``allow_special_tokens`` (control tokens spelled in text are an
    error unless it is set; they are plain text either way). Without validation files,
    ``cfg.data.val_split`` of the training examples are held out, chosen with ``cfg.training.seed``.
    ``method: cpt`` trains every token and takes raw text; ``sft`` needs conversations. Raises one
    `TuneryError` listing every bad record.
    """
    with gc_paused():
        return _render_datasets(cfg, tokenizer)


def _render_datasets(cfg: TrainConfig, tokenizer) -> Datasets:
    data = cfg.data
    train_on = "all" if cfg.method == "cpt" else data.train_on
    train, problems = load_examples(data.train, data.format, data.include, data.exclude)
    validation, found = load_examples(data.validation, data.format, data.include, data.exclude)
    problems += found + method_problems(train + validation, cfg.method)
    if not data.allow_special_tokens:
        controls = ControlTokens.of(tokenizer)
        for example in train + validation:
            problems += control_token_problems(example, controls, allowed=False)
    raise_if_errors(problems)
    train, validation, warnings = drop_from_splits(
        train, validation, data.drop_duplicates, data.near_duplicate_threshold
    )
    if data.validation and data.val_split > 0:
        warnings.append("data.val_split is ignored because validation files are given")
    elif data.val_split > 0:
        train, validation = split_validation(train, data.val_split, cfg.training.seed)
    warnings += _overlap_warning(train, validation)
    labels = final_answers(train) if cfg.eval.choices == "auto" else None
    index = None
    if data.retrieval is not None:
        from tunery.data.retrieval_aug import RetrievalIndex

        index = RetrievalIndex.build(train, data.retrieval.method, data.retrieval.k)
        train = [index.augment_example(e) for e in progress(train, "retrieving", len(train))]
        validation = [index.augment_example(e) for e in validation]
    train_rendered, found_warnings, problems = render_all(
        train, tokenizer, train_on, data.max_length, data.long_texts, data.window_overlap
    )
    val_rendered, more_warnings, more_problems = render_all(
        validation, tokenizer, train_on, data.max_length, data.long_texts, data.window_overlap
    )
    raise_if_errors(problems + more_problems)
    warnings += found_warnings + more_warnings
    if not train_rendered:
        raise TuneryError(
            "no training example is left to train on",
            why="every example was dropped: " + "; ".join(found_warnings[:3]),
            fix="raise data.max_length, or check that assistant turns are not all weight 0",
        )
    return Datasets(train_rendered, val_rendered, warnings, validation,
                    index.to_json() if index is not None else None, labels)


def final_answers(examples: list[Example]) -> list[str]:
    """The distinct last assistant answers of the conversations, sorted (the label set of a
    classification set: what `eval.choices: auto` allows)."""
    found = set()
    for example in examples:
        answers = [m.content for m in example.messages or [] if m.role == "assistant"]
        if answers:
            found.add(answers[-1].strip())
    return sorted(found)
