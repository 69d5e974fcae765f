"""Online reinforcement learning with programmatic or learned rewards: GRPO and RLOO.

Each batch of training prompts is answered `rl.group_size` times by the current model (sampled with a
KV cache, rendered with the model's chat template, stopped at its end-of-turn token), every answer is
scored by the graders of `rl.graders` (with the record's other fields, e.g. `answer`, as reference), and
the answers' advantages are their rewards against their group (GRPO: normalised by the group's spread;
RLOO: against the mean of the other answers). The loss is PPO's clipped objective summed over the
sampled tokens (the unit), optionally with a KL penalty to the model with its adapter switched off.

The sampled batch is kept (`updates_per_generation` optimizer steps use it) and saved in every
checkpoint, and sampling is seeded by the step and the process, so a resumed run samples and trains
exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from tunery.data.batching import make_sequence_batch
from tunery.data.messages import Example, Message
from tunery.data.preference import PromptExample, forged_turns, load_records, split_examples
from tunery.data.problems import raise_if_errors
from tunery.data.render import Datasets
from tunery.errors import TuneryError
from tunery.graders import parse_graders
from tunery.graders.uses import Failures, score_batch
from tunery.losses.rl import clipped_policy_loss, grpo_advantages, rloo_advantages
from tunery.models.forward import LogitsAt, token_logps
from tunery.trainers.method import LossOut, Method
from tunery.trainers.methods.preference import reference_mode


@dataclass
class PromptRow:
    """A training prompt: its token ids up to the assistant's header, its messages and other fields."""

    ids: list[int]
    messages: list[dict]
    fields: dict
    location: str


@dataclass
class Completion:
    """One sampled answer: prompt + answer ids (the answer's tokens trained), its reward and advantage."""

    ids: list[int]
    trained: list[bool]
    reward: float
    advantage: float
    scores: list[float]
    zero_spread: bool  # its group's rewards were all equal (no signal)
    old_logps: list[float] | None = None  # per trained token, when several updates use one sample


def reference_of(fields: dict) -> str | None:
    """The reference answer graders compare with: the record's `answer` (or `reference`, `completion`)."""
    for key in ("answer", "reference", "completion"):
        if isinstance(fields.get(key), str):
            return fields[key]
    return None


class RL(Method):
    """GRPO / RLOO on prompts, rewarded by graders."""

    name = "rl"
    step_logs = ("completions.jsonl",)  # the sample of answers, by the step that trained on them
    unit = "tokens"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        rl = cfg.rl
        self.graders = parse_graders(rl.graders)
        self.steps_per_batch = rl.updates_per_generation
        labels = [f"reward_{g.label}" for g in self.graders]
        self.figures = ("kl", "clip_fraction", "reward", "reward_sq", "completions", "completion_tokens",
                        "zero_spread", *labels)
        self.figure_units = {k: "completions" for k in ("reward", "reward_sq", "completion_tokens", "zero_spread",
                                                          "completions", *labels)}
        self.failures = Failures()  # a grader failing on a record: that answer rewards 0, reported once
        self.buffer: tuple[int, list[list[Completion]]] | None = None
        if rl.kl_beta > 0 and cfg.adapter == "full":
            raise TuneryError("rl.kl_beta needs an adapter to switch off for the reference model",
                              fix="train rl with adapter: lora (or qlora), or set rl.kl_beta=0")
        self.stop_ids: list[int] | None = None
        self.log_path = None

    # Data: prompts with their fields.
    def load_data(self, cache_dir=None, write_cache=True):
        from tunery.inference import prompt_ids

        data = self.cfg.data
        train, problems = load_records(data.train, "prompts")
        val, found = load_records(data.validation, "prompts")
        prompts = [Example(e.source, e.line, messages=e.prompt) for e in train + val]
        raise_if_errors(problems + found + forged_turns(self.tokenizer, prompts, data.allow_special_tokens))
        if not data.validation and data.val_split > 0:
            train, val = split_examples(train, data.val_split, self.cfg.training.seed)
        if not train:
            raise TuneryError("no prompt is left to train on", fix="check data.train")
        self.log_path = cache_dir.parent / "completions.jsonl" if cache_dir is not None and write_cache else None

        def row(e: PromptExample) -> PromptRow:
            messages = [{"role": m.role, "content": m.content} for m in e.prompt]
            return PromptRow(prompt_ids(self.tokenizer, messages), messages, e.fields, e.location)

        for grader, name in [(g, name) for g in self.graders for name in getattr(g, "reads", ())]:
            lacking = next((e.location for e in train + val if e.fields.get(name) in (None, "", [])), None)
            if lacking:  # said before training starts, not as zero rewards at every step
                raise TuneryError(f"{lacking}: grader {grader.label} in rl.graders reads the record field '{name}', "
                                  "which it lacks", fix="add it to every prompt record")
        examples = [_with_reference(e) for e in val]
        return Datasets([row(e) for e in train], [row(e) for e in val], [], [e for e in examples if e])

    def row_tokens(self, row) -> int:
        return len(row.ids)

    # Sampling: the rows each step trains on.
    def expand(self, model, micro_rows, step, dry=False):
        index = step // self.steps_per_batch
        if dry:
            return [[self._longest(p) for p in rows for _ in range(self.cfg.rl.group_size)] for rows in micro_rows]
        if self.buffer is None or self.buffer[0] != index:
            self.buffer = (index, [self._sample(model, rows, index, m) for m, rows in enumerate(micro_rows)])
        return self.buffer[1]

    def _longest(self, prompt: PromptRow) -> Completion:
        n = self.cfg.rl.max_new_tokens
        return Completion(prompt.ids + [prompt.ids[-1]] * n, [False] * len(prompt.ids) + [True] * n, 0.0, 0.0,
                          [0.0] * len(self.graders), False)

    def _sample(self, model, prompts: list[PromptRow], index: int, micro: int) -> list[Completion]:
        """`group_size` answers to each prompt, scored, with their advantages."""
        rl, g = self.cfg.rl, self.cfg.rl.group_size
        if not prompts:
            return []
        seed = ((self.cfg.training.seed * 1_000_003 + index) * 1_009 + micro) * 101 + self.rank
        answers = sample_answers(model, self.tokenizer, [p.ids for p in prompts], g, rl.max_new_tokens,
                                 rl.temperature, rl.top_p, seed, self._stops(model))
        texts = [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
        scores = self.score(texts, [p for p in prompts for _ in range(g)])
        rewards = torch.tensor([sum(s) / len(s) for s in scores], dtype=torch.float64).view(-1, g)
        advantages = self._advantages(rewards)
        spread = (rewards.max(dim=1).values - rewards.min(dim=1).values) == 0
        out = []
        for k, (answer, score) in enumerate(zip(answers, scores)):
            prompt = prompts[k // g]
            out.append(Completion(prompt.ids + answer, [False] * len(prompt.ids) + [True] * len(answer),
                                  float(rewards.view(-1)[k]), float(advantages.view(-1)[k]), score,
                                  bool(spread[k // g])))
        if self.steps_per_batch > 1:
            self._keep_old_logps(model, out)
        self._log(index, prompts, texts, out)
        return out

    def score(self, texts: list[str], prompts: list[PromptRow]) -> list[list[float]]:
        """Each answer's score under every grader (a batch at a time: programs run in parallel)."""
        references = [reference_of(p.fields) for p in prompts]
        columns = [score_batch(grader, texts, references, [p.fields for p in prompts], [p.location for p in prompts],
                               self.failures) for grader in self.graders]
        return [list(row) for row in zip(*columns)]

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.cfg.rl.algorithm == "rloo":
            return rloo_advantages(rewards)
        return grpo_advantages(rewards, scale=self.cfg.rl.scale_rewards)

    def _stops(self, model) -> list[int]:
        from tunery.inference import stop_token_ids

        if self.stop_ids is None:
            self.stop_ids = stop_token_ids(self.tokenizer, model)
        return self.stop_ids

    @torch.no_grad()
    def _keep_old_logps(self, model, completions: list[Completion]) -> None:
        """The sampling policy's log-probs of every answer token, for the ratio of later updates."""
        from tunery.models.forward import head_logits

        was_training = model.training
        model.eval()
        for start in range(0, len(completions), self.cfg.training.batch_size):
            chunk = completions[start:start + self.cfg.training.batch_size]
            batch = self.collate(chunk)
            logps = token_logps(model, batch, head_logits).tolist()
            offset = 0
            for c in chunk:
                n = sum(c.trained[1:])
                c.old_logps, offset = logps[offset:offset + n], offset + n
        model.train(was_training)

    def _log(self, index: int, prompts: list[PromptRow], texts: list[str], completions: list[Completion]) -> None:
        """Append the first `rl.log_completions` answers with their rewards to completions.jsonl."""
        if self.log_path is None or not self.cfg.rl.log_completions:
            return
        g = self.cfg.rl.group_size
        lines = []
        for k, (text, c) in enumerate(list(zip(texts, completions))[: self.cfg.rl.log_completions]):
            prompt = prompts[k // g]
            lines.append(json.dumps({"step": index * self.steps_per_batch + 1, "prompt": prompt.messages[-1]["content"],
                                     "record": prompt.location, "completion": text, "reward": c.reward,
                                     "advantage": c.advantage, **{f"reward_{gr.label}": s
                                                                  for gr, s in zip(self.graders, c.scores)}}))
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))

    # The loss on sampled answers.
    def collate(self, rows):
        batch = make_sequence_batch(rows, self.tokenizer.pad_token_id, self.cfg.training.packing)
        counts = torch.tensor([sum(r.trained[1:]) for r in rows], dtype=torch.long)
        batch["advantages"] = torch.tensor([r.advantage for r in rows], dtype=torch.float32)
        if rows and all(r.old_logps is not None for r in rows):
            batch["old_logps"] = torch.tensor([x for r in rows for x in r.old_logps], dtype=torch.float32)
        batch["rewards"] = torch.tensor([[r.reward, float(r.zero_spread), *r.scores] for r in rows],
                                        dtype=torch.float64).reshape(len(rows), -1)
        batch["answer_tokens"] = counts
        return batch

    def loss(self, model, batch, logits_at: LogitsAt) -> LossOut:
        rl = self.cfg.rl
        seq = batch["target_seq"]
        logps = token_logps(model, batch, logits_at)
        device = logps.device
        advantages = batch["advantages"].to(device)[seq.to(device)]
        old = batch["old_logps"].to(device) if "old_logps" in batch else logps.detach()
        ref = None
        if rl.kl_beta > 0:
            with reference_mode(model):
                ref = token_logps(model, batch, logits_at)
        total, tokens, figures = clipped_policy_loss(
            logps[None], old[None], advantages[None], torch.ones_like(logps, dtype=torch.bool)[None],
            eps_low=rl.clip_low, eps_high=rl.clip_high, ref_logps=None if ref is None else ref[None], beta=rl.kl_beta)
        rewards = batch["rewards"]
        sums = {"reward": float(rewards[:, 0].sum()), "reward_sq": float((rewards[:, 0] ** 2).sum()),
                "completions": float(len(rewards)), "completion_tokens": float(batch["answer_tokens"].sum()),
                "zero_spread": float(rewards[:, 1].sum())}
        sums |= {f"reward_{g.label}": float(rewards[:, 2 + i].sum()) for i, g in enumerate(self.graders)}
        return LossOut(total, tokens, figures | sums)

    def derive_figures(self, means):
        """The reward's spread from its mean square; the completions count is a count, not a mean."""
        if "reward_sq" in means:
            means["reward_std"] = math.sqrt(max(0.0, means.pop("reward_sq") - means["reward"] ** 2))
        means.pop("completions", None)
        return means

    # The buffer of sampled answers, kept across a checkpoint.
    def state_tensors(self):
        return completions_to_tensors(self.buffer)

    def load_state_tensors(self, tensors):
        self.buffer = completions_from_tensors(tensors, len(self.graders))

    # Validation: the mean reward of greedy answers to the validation prompts.
    validates_itself = True

    @torch.no_grad()
    def validate(self, model, mine, rows, strategy):
        from tunery.inference import generate_batch

        prompts = [rows[i] for i in mine]
        answers = generate_batch(model, self.tokenizer, [p.messages for p in prompts],
                                 max_new_tokens=self.cfg.rl.max_new_tokens, batch_size=self.cfg.training.batch_size)
        total = sum(sum(row) / len(row) for row in self.score(answers, prompts)) if prompts else 0.0
        total, count = strategy.sum_all([total, len(prompts)])
        if not count:
            return None
        mean = total / count
        return 1.0 - mean, {"val_reward": mean}


def _with_reference(example: PromptExample) -> Example | None:
    """A validation prompt with its reference answer as a conversation (what graders during training
    answer), when the record names one."""
    reference = reference_of(example.fields)
    if reference is None:
        return None
    return Example(example.source, example.line, messages=example.prompt + [Message("assistant", reference)])


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[list[int]], group: int, max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, stop_ids: list[int], max_rows: int = 64) -> list[list[int]]:
    """`group` sampled answers to each token prompt (those of one prompt together, in prompt order), each
    up to and including its first stop token. Seeded by its own generator: the caller's random streams
    are untouched.

    Our own decode loop rather than `generate`, for what sampling groups allows: each prompt is run
    through the model once and its KV cache repeated for the group (generate would run it `group`
    times), and an answer that has stopped leaves the batch instead of being carried to the end. At most
    `max_rows` answers are decoded together."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_call = max(1, max_rows // group)
    answers: list[list[int]] = []
    try:
        for start in range(0, len(prompts), per_call):
            answers += _sample_chunk(model, tokenizer.pad_token_id, prompts[start:start + per_call], group,
                                     max_new_tokens, temperature, top_p, stop_ids, generator)
    finally:
        model.train(was_training)
    return answers


def _sample_chunk(model, pad_id: int, prompts: list[list[int]], group: int, max_new_tokens: int,
                  temperature: float, top_p: float, stop_ids: list[int], generator) -> list[list[int]]:
    from tunery.inference import left_pad

    device = generator.device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each prompt counts from 0
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, keyword = _kv_cache(model, out)
    cache.batch_repeat_interleave(group)
    logits = out.logits[:, -1].float().repeat_interleave(group, dim=0)
    mask, position = mask.repeat_interleave(group, dim=0), positions[:, -1:].repeat_interleave(group, dim=0)
    rows = torch.arange(len(prompts) * group, device=device)  # the answer each live row writes
    stops = torch.tensor(stop_ids, device=device)
    answers: list[list[int]] = [[] for _ in range(len(prompts) * group)]
    for step in range(max_new_tokens):
        tokens = draw_tokens(logits, temperature, top_p, generator)
        for row, token in zip(rows.tolist(), tokens.tolist()):
            answers[row].append(token)
        live = ~torch.isin(tokens, stops)
        if step == max_new_tokens - 1 or not bool(live.any()):
            break
        if not bool(live.all()):  # stopped answers leave the batch and its cache
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, position, tokens = rows[keep], mask[keep], position[keep], tokens[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        position = position + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                    **{keyword: cache})
        logits = out.logits[:, -1].float()
    return answers


def _kv_cache(model, out):
    """The KV cache a forward pass returned, and the keyword the model takes it back under: transformers
    5 renamed `past_key_values` to `cache` during its 5.x releases (the old name warns, then goes)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keyword = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return getattr(out, keyword), keyword


def draw_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """One token per row, drawn from `sampling_probs` with the given generator."""
    return torch.multinomial(sampling_probs(logits, temperature, top_p), 1, generator=generator).squeeze(1)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / temperature), restricted to the nucleus `top_p` when it is below 1: the smallest
    set of most likely tokens whose probability reaches top_p (multinomial renormalises)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the most likely token always stays
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return probs


def completions_to_tensors(buffer) -> dict[str, torch.Tensor]:
    if buffer is None:
        return {}
    index, micro = buffer
    flat = [(m, c) for m, rows in enumerate(micro) for c in rows]
    old = [x for _, c in flat for x in (c.old_logps or [])]
    return {
        "index": torch.tensor([index, len(micro)]),
        "micro": torch.tensor([m for m, _ in flat], dtype=torch.long),
        "lengths": torch.tensor([len(c.ids) for _, c in flat], dtype=torch.long),
        "ids": torch.tensor([t for _, c in flat for t in c.ids], dtype=torch.long),
        "trained": torch.tensor([t for _, c in flat for t in c.trained], dtype=torch.bool),
        "values": torch.tensor([[c.reward, c.advantage, float(c.zero_spread), *c.scores] for _, c in flat],
                               dtype=torch.float64).reshape(len(flat), -1),
        "old_logps": torch.tensor(old, dtype=torch.float32),
        "has_old": torch.tensor([c.old_logps is not None for _, c in flat], dtype=torch.bool),
    }


def completions_from_tensors(tensors: dict[str, torch.Tensor], graders: int):
    if not tensors:
        return None
    index, micros = tensors["index"].tolist()
    micro: list[list[Completion]] = [[] for _ in range(micros)]
    ids, trained, old = tensors["ids"].tolist(), tensors["trained"].tolist(), tensors["old_logps"].tolist()
    start, old_start = 0, 0
    for m, length, values, has_old in zip(tensors["micro"].tolist(), tensors["lengths"].tolist(),
                                          tensors["values"].tolist(), tensors["has_old"].tolist()):
        mask = trained[start:start + length]
        n = sum(mask[1:])
        logps = old[old_start:old_start + n] if has_old else None
        old_start += n if has_old else 0
        micro[m].append(Completion(ids[start:start + length], mask, values[0], values[1], values[3:3 + graders],
                                   bool(values[2]), logps))
        start += length
    return index, micro
