"""The one watch over a run: validation loss, graders scored during training, the best step and the
patience of early stopping.

The loop tells the watch what it measured (`on_validation`, `on_grader`); the watch records it in
metrics.jsonl, moves the best step, counts evaluations since the best, and says when patience ran out.
What it watches is `eval.early_stopping_on`: the validation loss (lower is better) or the first
grader's score (higher is better, by more than `eval.min_delta`). Best figures and the patience count
live in the loop's state, which every checkpoint saves, so a resumed run stops where an uninterrupted
one would.

Graders answer a seeded sample of the validation examples the loop already loaded (or `eval.data`),
greedily, with the current weights.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from tunery.config.defaults import EVAL_BATCH_SIZE, VALIDATION_SHARE
from tunery.config.schema import TrainConfig
from tunery.data.messages import Example
from tunery.errors import TuneryError
from tunery.graders import Failures, Grader, parse_graders, score_batch


@dataclass
class GraderItem:
    """One example answered during training: its prompt (chat dicts), reference answer, and its record
    as read from the file (graders such as code_tests read fields of it, e.g. `tests`)."""

    prompt: list[dict]
    reference: str
    record: dict = field(default_factory=dict)
    where: str = ""


def as_grader_item(example: Example) -> GraderItem:
    """The prompt before the last assistant turn, and that turn as the reference."""
    messages = example.messages or []
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        raise TuneryError(f"{example.location}: graders need an assistant turn to compare against")
    prompt = [{"role": m.role, "content": m.content} for m in messages[:last]]
    return GraderItem(prompt, messages[last].content, where=example.location)


def records_of(examples: list[Example]) -> list[dict]:
    """Each example's record as read from its file (every field), in order: examples keep only their
    messages, and graders may read other fields."""
    from tunery.data.readers import read_records

    by_file: dict[str, dict] = {}
    for example in examples:
        if example.source not in by_file:
            by_file[example.source] = dict(read_records(example.source)[0])
    return [r if isinstance(r := by_file[e.source].get(e.line), dict) else {} for e in examples]


def grader_sample(cfg: TrainConfig, val_examples: list[Example]) -> list[GraderItem]:
    """`eval.sample` examples of `eval.data` (or of the validation examples), drawn once with the
    training seed, in their file order."""
    if cfg.eval.data:
        from tunery.data.dataset import load_examples
        from tunery.data.problems import raise_if_errors

        examples, problems = load_examples(cfg.eval.data, cfg.data.format)
        raise_if_errors(problems)
    else:
        examples = val_examples
    examples = [e for e in examples if e.messages is not None]
    items = [as_grader_item(e) for e in examples]
    if len(items) > cfg.eval.sample:
        keep = sorted(random.Random(cfg.training.seed).sample(range(len(items)), cfg.eval.sample))
        items, examples = [items[i] for i in keep], [examples[i] for i in keep]
    for item, record in zip(items, records_of(examples)):
        item.record = record
    return items


def default_eval_every(total_steps: int, validation_cost: float) -> int:
    """Steps between validations when the config names none: a tenth of the run, or evenly fewer
    validations where ten would spend more than `VALIDATION_SHARE` of the steps on them
    (`validation_cost`: one validation's cost in steps; 0 when not known).

    A 6-step run with 8 long validation examples and 4 a step would otherwise validate after every
    step and spend 40% of its time there; it validates once, at the end."""
    every = max(1, total_steps // 10)
    if validation_cost > 0:
        allowed = max(1, math.floor(total_steps * VALIDATION_SHARE / validation_cost + 1e-9))
        every = max(every, math.ceil(total_steps / allowed))
    return every


@dataclass
class Watch:
    """Validation, graders, best step and patience for one run."""

    cfg: TrainConfig
    total_steps: int
    eval_every: int
    graders: list[Grader] = field(default_factory=list)
    items: list[GraderItem] = field(default_factory=list)
    failures: Failures = field(default_factory=Failures)  # each grader's first failure is logged once
    constraint: object | None = None  # tunery.constrain.Constraint of eval.choices / eval.json_schema
    note: str | None = None  # why validation is less often than a tenth of the run, for the log

    @classmethod
    def for_run(cls, cfg: TrainConfig, total_steps: int, val_examples: list[Example], data=None,
                validation_cost: float = 0.0) -> "Watch":
        """`validation_cost`: what one validation costs, in optimizer steps (0: not known)."""
        eval_every = cfg.training.eval_every or default_eval_every(total_steps, validation_cost)
        watch = cls._for_run(cfg, total_steps, eval_every, val_examples, data)
        if not cfg.training.eval_every and eval_every > default_eval_every(total_steps, 0.0):  # cost moved it
            watch.note = (f"validation every {eval_every} steps: a pass over the validation set costs about "
                          f"{validation_cost:.2g} steps (set training.eval_every to validate more often)")
        return watch

    @classmethod
    def _for_run(cls, cfg: TrainConfig, total_steps: int, eval_every: int, val_examples: list[Example],
                 data) -> "Watch":
        if not cfg.eval.graders:
            return cls(cfg, total_steps, eval_every)
        items = grader_sample(cfg, val_examples)
        if cfg.eval.data and data is not None and data.retrieval is not None:
            from tunery.data.retrieval_aug import RetrievalIndex

            index = RetrievalIndex.from_json(data.retrieval)  # eval.data is answered as the run will answer
            for item in items:
                item.prompt = index.augment(item.prompt)
        if not items:
            raise TuneryError(
                "eval.graders is set but there are no examples to score during training",
                why="graders answer validation examples, and this run has none",
                fix="set data.validation, data.val_split or eval.data",
            )
        graders = parse_graders(cfg.eval.graders)
        for grader, name in [(g, name) for g in graders for name in g.reads]:
            lacking = next((i.where for i in items if i.record.get(name) in (None, "", [])), None)
            if lacking:  # said before training starts, not as zeros at every scoring
                raise TuneryError(f"{lacking}: grader {grader.label} in eval.graders reads the record field "
                                  f"'{name}', which it lacks", fix="add it to every record scored during training")
        from tunery.constrain import resolve

        constraint = resolve(cfg.eval.choices, cfg.eval.json_schema, data.labels if data is not None else None)
        return cls(cfg, total_steps, eval_every, graders, items, constraint=constraint)

    @property
    def watches_grader(self) -> bool:
        return self.cfg.eval.early_stopping_on == "grader"

    def validation_due(self, step: int) -> bool:
        """Validation runs every `eval_every` steps and at the last step (1-based, after the update)."""
        return step % self.eval_every == 0 or step == self.total_steps

    def grader_due(self, step: int) -> bool:
        """Graders are scored every `eval.every` steps (or at each validation) and at the last step."""
        if not self.items:
            return False
        every = self.cfg.eval.every or self.eval_every
        return step % every == 0 or step == self.total_steps

    def on_validation(self, st, val: float, figures: dict, run, say) -> bool:
        """Record a validation loss (and the method's figures); True when early stopping says stop."""
        improved = st.best_val is None or val < st.best_val
        if improved:
            st.best_val = val
        run.append_metrics({"kind": "eval", "step": st.step, "val_loss": val, **figures, "best": improved})
        say(f"step {st.step}: validation loss {val:.4f}" + (" (best)" if improved else ""))
        return not self.watches_grader and self._count_toward_patience(st, improved)

    def on_grader(self, st, scores: dict, run, say) -> bool:
        """Record a grader scoring; True when early stopping (watching the grader) says stop."""
        score = scores["score"]
        improved = st.best_score is None or score > st.best_score + self.cfg.eval.min_delta
        if improved:
            st.best_score = score
        run.append_metrics({"kind": "grader", "step": st.step, **scores, "best": improved})
        label = self.graders[0].label
        say(f"step {st.step}: {label} {score:.3f} on {scores['n']} examples" + (" (best)" if improved else ""))
        return self.watches_grader and self._count_toward_patience(st, improved)

    def _count_toward_patience(self, st, improved: bool) -> bool:
        """Move the best step or the count of evaluations since it; True when patience ran out."""
        if improved:
            st.best_step, st.evals_since_best = st.step, 0
        else:
            st.evals_since_best += 1
        patience = self.cfg.training.early_stopping_patience
        return patience is not None and st.evals_since_best >= patience

    def score(self, model, tokenizer) -> dict:
        """Answer the sample greedily with the current weights and score it:
        {"score": first grader's mean, label: mean, ..., "n": count}.

        Every process answers the same sample: the weights are identical after the gradients are
        combined, so the scores and the stopping decision are too, without another collective (and a
        sharded model runs the same forward passes in step, which FSDP's all-gathers need)."""
        from tunery.inference import generate_batch

        was_training = model.training
        model.eval()
        try:
            answers = generate_batch(model, tokenizer, [i.prompt for i in self.items],
                                     max_new_tokens=self.cfg.eval.max_new_tokens,
                                     batch_size=EVAL_BATCH_SIZE, **self._constrained())
        finally:
            model.train(was_training)
        n = len(self.items)
        refs, records = [i.reference for i in self.items], [i.record for i in self.items]
        where = [i.where for i in self.items]
        means = {g.label: sum(score_batch(g, answers, refs, records, where, self.failures)) / n for g in self.graders}
        return {"score": means[self.graders[0].label], **means, "n": n}

    def _constrained(self) -> dict:
        """generate_batch's constraint option, when eval.choices or eval.json_schema sets one."""
        return {"constraint": self.constraint} if self.constraint is not None else {}

    def describe_best(self, st, since: bool = False) -> str:
        """'best validation loss 0.1234 at step 8' (or the grader's score when early stopping watches it)."""
        if self.watches_grader and st.best_score is not None:
            best = f"best {self.graders[0].label} {st.best_score:.3f} at step {st.best_step}"
            what = "grader score"
        else:
            best = (f"best validation loss {st.best_val:.4f} at step {st.best_step}"
                    if st.best_val is not None else "no validation loss")
            what = "validation loss"
        return f"no better {what} in {st.evals_since_best} evaluations ({best})" if since else best
