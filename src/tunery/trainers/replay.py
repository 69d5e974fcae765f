"""`data.replay`: general conversations mixed into training, so the model keeps what it knew.

With `replay_share` s and n task examples, k = round(n s / (1 - s)) replay conversations are added to the
training rows (so s of the examples are replay; they take their share of every epoch's steps and tokens, and
the log says how much; `replay_answer_tokens` cuts each after its first answer tokens). `replay_mode: share`
keeps `training.max_steps`, so the task gets s fewer of them; `extend` raises it by n+k / n so the task keeps
its steps and replay comes on top. They are rendered like any conversation (their assistant turns trained) and
marked `Rendered.replay`, which is where `training.kl_to_base` holds the model near its base.
The choice of the k is seeded by `training.seed`, so a resumed run has the same rows.

`self`: the base model's own greedy answers to tunery's general prompts (`tunery.data.replay_pool`),
generated with the model as loaded, before any training, and cached in `~/.cache/tunery/replay/`
(keyed by the base model, its chat template, the pool and the answer length; written atomically), so
the answers are made once per base. A file: its conversations, any format `data.train` reads.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tunery.config.guards import guard_label, guard_of
from tunery.data.messages import Example, Message
from tunery.data.render import Datasets

ANSWER_TOKENS = 128  # longest self-replay answer: the base's usual reply to a general prompt fits
BATCH = 16


def guard_text(cfg) -> str | None:
    """The guards a run uses, in words ("replay self 25%, KL to base 0.1"), or None (run.json, summary, eval)."""
    return guard_label(guard_of(cfg.model_dump(mode="json"))) or None


def replay_count(n_task: int, share: float) -> int:
    """Replay conversations that make `share` of the training examples."""
    return max(1, round(n_task * share / (1.0 - share)))


def steps_with_replay(max_steps: int | None, n_rows: int, n_replay: int, mode: str) -> int | None:
    """`training.max_steps` of a run whose `n_rows` training rows hold `n_replay` replay rows: unchanged
    with `replay_mode: share` (replay takes its share of the steps), max_steps x n_rows / task rows
    (rounded up) with `extend`, so the task's rows get as many steps as without replay."""
    if max_steps is None or mode != "extend" or n_replay <= 0 or n_replay >= n_rows:
        return max_steps
    return -(-max_steps * n_rows // (n_rows - n_replay))  # ceil in integers: no float rounding


def run_max_steps(cfg, rows) -> int | None:
    """The max_steps the step plan uses for these training rows (replay marked by `Rendered.replay`)."""
    n_replay = sum(1 for r in rows if getattr(r, "replay", False))
    return steps_with_replay(cfg.training.max_steps, len(rows), n_replay, cfg.data.replay_mode)


def mix_replay(data: Datasets, cfg, tokenizer, model, log: Callable[[str], None]) -> Datasets:
    """`data` with the replay rows appended to its training rows, and a log line saying how many."""
    from tunery.data.dataset import render_all

    wanted = replay_count(len(data.train), cfg.data.replay_share)
    examples = replay_examples(cfg, tokenizer, model, wanted, log)
    rows, warnings, problems = render_all(examples, tokenizer, "assistant", cfg.data.max_length)
    if problems:
        from tunery.data.problems import raise_if_errors

        raise_if_errors(problems, what=f"data.replay ({cfg.data.replay})")
    if cfg.data.replay_answer_tokens is not None:
        rows = cut_answers(rows, cfg.data.replay_answer_tokens, log)
    examples = examples_per_replay(cfg.data.replay_weight)
    weight = examples * example_weight(data.train, rows) if examples is not None else 1.0
    rows = [replace(row, replay=True, loss_weight=weight) for row in rows]
    task_tokens, replay_tokens = sum(len(r.ids) for r in data.train), sum(len(r.ids) for r in rows)
    log(f"replay ({_what(cfg.data.replay)}): {len(rows)} conversations, {len(rows) / (len(rows) + len(data.train)):.0%} "
        f"of the training examples and {replay_tokens / max(task_tokens + replay_tokens, 1):.0%} of their tokens")
    if examples is not None:
        many = "an average task example" if examples == 1 else f"{examples:g} average task examples"
        log(f"replay_weight {cfg.data.replay_weight}: each replay conversation weighs as much in the loss as "
            f"{many} (its trained tokens x {weight:.3g})")
    steps = steps_with_replay(cfg.training.max_steps, len(data.train) + len(rows), len(rows), cfg.data.replay_mode)
    if steps != cfg.training.max_steps:
        log(f"replay_mode extend: {steps} steps instead of training.max_steps {cfg.training.max_steps}, so the "
            f"task keeps its steps and replay is added on top")
    return replace(data, train=data.train + rows, warnings=data.warnings + replay_warnings(rows, warnings, cfg))


def cut_answers(rows, limit: int, log: Callable[[str], None]) -> list:
    """Each replay row cut after its first `limit` trained tokens (`data.replay_answer_tokens`), with a log
    line saying how many were cut and the tokens kept."""
    kept = [cut_after_trained(row, limit) for row in rows]
    cut = sum(1 for old, new in zip(rows, kept) if len(new.ids) < len(old.ids))
    before, after = sum(len(r.ids) for r in rows), sum(len(r.ids) for r in kept)
    log(f"replay_answer_tokens {limit}: {cut} of {len(rows)} replay answers cut after {limit} tokens "
        f"({after:,} of their {before:,} tokens kept)")
    return kept


def cut_after_trained(row, limit: int):
    """`row` up to and including its `limit`-th trained token (unchanged when it trains no more)."""
    seen = 0
    for end, trained in enumerate(row.trained, start=1):
        seen += trained
        if seen == limit:
            return replace(row, ids=row.ids[:end], trained=row.trained[:end]) if end < len(row.ids) else row
    return row


def replay_warnings(rows, warnings: list[str], cfg) -> list[str]:
    """The rendering warnings of replay rows in one line: they are tunery's own conversations (or the
    user's general file), so the count matters, not a line per record."""
    cut = sum(1 for r in rows if r.answer_cut)
    other = [w for w in warnings if "cut at max_length" not in w]
    if cut:
        other.append(f"replay: {cut} of {len(rows)} conversations are longer than data.max_length "
                     f"{cfg.data.max_length}; their answers are trained up to the cut")
    return other


def examples_per_replay(replay_weight) -> float | None:
    """How many average task examples one replay conversation weighs as (`data.replay_weight`), or None
    for `token` (every trained token the same)."""
    if replay_weight == "token":
        return None
    return 1.0 if replay_weight == "example" else float(replay_weight)


def example_weight(task_rows, replay_rows) -> float:
    """The weight of a replay token that makes a replay conversation count as much as an average task
    example: the task's trained tokens per example over replay's (1 when either has none)."""
    task, replay = (sum(r.num_targets for r in rows) for rows in (task_rows, replay_rows))
    if not task or not replay:
        return 1.0
    return (task / len(task_rows)) / (replay / len(replay_rows))


def _what(replay: str) -> str:
    return "the base model's own answers to tunery's general prompts" if replay == "self" else replay


def replay_examples(cfg, tokenizer, model, wanted: int, log) -> list[Example]:
    """`wanted` replay conversations (fewer, with a warning, when the pool or file holds fewer)."""
    if cfg.data.replay == "self":
        from tunery.data.replay_pool import general_prompts

        prompts = general_prompts()
        if wanted > len(prompts):
            log(f"warning: data.replay: self has {len(prompts)} general prompts; {wanted} were asked for "
                f"(replay_share {cfg.data.replay_share}), so replay is {len(prompts)} conversations")
        prompts = prompts[:wanted]
        answers = self_answers(cfg, tokenizer, model, prompts, log)
        kept = safe_pairs(prompts, answers, log)
        return [Example("replay:self", i + 1, [Message("user", p), Message("assistant", a)])
                for i, (p, a) in enumerate(kept) if a.strip()]
    return _from_file(cfg.data.replay, wanted, cfg.training.seed, log)


def safe_pairs(prompts: list[str], answers: list[str], log) -> list[tuple[str, str]]:
    """(prompt, answer) pairs fit to replay: a harmful prompt only with the base model's refusal, never
    with its compliance (replay would teach it)."""
    from tunery.data.replay_pool import is_harmful, refuses

    kept = [(p, a) for p, a in zip(prompts, answers) if not is_harmful(p) or refuses(a)]
    harmful = sum(1 for p in prompts if is_harmful(p))
    if harmful:
        refused = sum(1 for p, _ in kept if is_harmful(p))
        log(f"replay: the base model refused {refused} of the {harmful} harmful requests drawn; only those "
            "refusals are replayed (a compliant answer is never trained)")
    return kept


def _from_file(path: str, wanted: int, seed: int, log) -> list[Example]:
    from tunery.data.dataset import load_examples
    from tunery.data.problems import raise_if_errors

    examples, problems = load_examples([path])
    raise_if_errors(problems, what=f"data.replay ({path})")
    conversations = [e for e in examples if e.messages is not None]
    if len(conversations) < wanted:
        log(f"warning: data.replay {path} holds {len(conversations)} conversations; {wanted} were asked for")
    random.Random(seed).shuffle(conversations)
    return conversations[:wanted]


def self_answers(cfg, tokenizer, model, prompts: list[str], log) -> list[str]:
    """The base model's greedy answers to `prompts`, from the cache or generated (and cached) now."""
    from tunery.atomic import write_text_atomic
    from tunery.models.embedded import cache_root

    path = cache_root() / "replay" / f"self-{_cache_key(cfg, tokenizer)}.jsonl"
    known = _read_cache(path)
    missing = [p for p in prompts if p not in known]
    if missing:
        log(f"replay: the base model answers {len(missing)} general prompts (once; cached in {path})")
        known |= dict(zip(missing, _generate(model, tokenizer, missing)))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in known.items()))
    return [known[p] for p in prompts]


def _cache_key(cfg, tokenizer) -> str:
    from tunery.data.replay_pool import POOL_VERSION
    from tunery.models.load import resolve_model_source

    parts = [resolve_model_source(cfg.base_model), cfg.adapter == "qlora", tokenizer.chat_template, POOL_VERSION,
             ANSWER_TOKENS]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    known = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            known[record["prompt"]] = record["answer"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a damaged line: that answer is generated again
    return known


def _generate(model, tokenizer, prompts: list[str]) -> list[str]:
    from tunery.inference import generate_ids

    was_training = model.training
    model.eval()
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    ids = generate_ids(model, tokenizer, conversations, ANSWER_TOKENS, temperature=0.0, batch_size=BATCH)
    model.train(was_training)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
