"""Generation graders inside a training run: what the training loop calls (it stays in trainers/).

The loop needs these, each a small function here:

- `eval_sample(cfg)`: once at setup, the seeded sample of examples to answer (the validation files,
  the same `val_split` hold-out the trainer makes, or `eval.data`);
- `due(cfg, step, total, eval_every)`: whether this step scores the graders;
- `score_sample(model, tokenizer, items, graders)`: answer the sample greedily and score it, leaving
  the model in the mode it was in;
- `metrics_record`: the metrics.jsonl line, which the report plots next to the loss.
Best score, patience and the best step live in the loop's state (`trainers/sft.py`), so that a resumed
run stops where an uninterrupted one would.
"""

from __future__ import annotations

import random

from tunery.eval.items import EvalItem, as_dicts, load_conversations, read_eval_items, split_example
from tunery.graders import Grader, parse_graders


def eval_sample(cfg) -> list[EvalItem]:
    """The examples scored during training: `cfg.eval.sample` of them, drawn once with the training seed.

    Without `eval.data` they come from the validation files, or from the trainer's own `val_split`
    hold-out (`split_validation` with the same seed, so no training example is scored).
    """
    from tunery.data.dataset import split_validation

    if cfg.eval.data:
        items = [item for path in cfg.eval.data for item in read_eval_items(path)]
    else:
        examples = [e for f in cfg.data.validation for e in load_conversations(f, cfg.data.format)]
        if not examples and cfg.data.val_split > 0:
            train = [e for f in cfg.data.train for e in load_conversations(f, cfg.data.format)]
            examples = split_validation(train, cfg.data.val_split, cfg.training.seed)[1]
        items = []
        for e in examples:
            prompt, reference = split_example(e)
            items.append(EvalItem(e.location, as_dicts(prompt), reference.content, e))
    if len(items) <= cfg.eval.sample:
        return items
    keep = sorted(random.Random(cfg.training.seed).sample(range(len(items)), cfg.eval.sample))
    return [items[i] for i in keep]


def graders_of(cfg) -> list[Grader]:
    """The configured graders (validated when the config was loaded)."""
    return parse_graders(cfg.eval.graders)


def due(cfg, step: int, total_steps: int, eval_every: int) -> bool:
    """True when step `step` (1-based, after the update) scores the graders: every `eval.every` steps
    (or at each validation) and always at the last step."""
    if not cfg.eval.graders:
        return False
    every = cfg.eval.every or eval_every
    return step % every == 0 or step == total_steps


def score_sample(model, tokenizer, items: list[EvalItem], graders: list[Grader], max_new_tokens: int = 64,
                 batch_size: int = 8) -> dict:
    """Greedy answers to `items`, scored: {"score": first grader's mean, label: mean, ..., "n": count}."""
    from tunery.inference import generate_batch

    was_training = model.training
    model.eval()
    try:
        answers = generate_batch(model, tokenizer, [i.prompt for i in items], max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    finally:
        model.train(was_training)
    means = {g.label: sum(g.score(a, i.reference) for a, i in zip(answers, items)) / max(len(items), 1)
             for g in graders}
    return {"score": means[graders[0].label] if graders else None, **means, "n": len(items)}


def metrics_record(step: int, scores: dict) -> dict:
    """The metrics.jsonl line of one scoring (kind "grader"; `score` is the watched grader's mean)."""
    return {"kind": "grader", "step": step, **scores}
