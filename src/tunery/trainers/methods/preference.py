"""Preference methods: DPO (and its loss variants) and ORPO on pairs, KTO on single labelled answers.

Every row holds two answers: a pair's chosen and rejected (DPO, ORPO), or a KTO answer and the same
answer after another example's prompt (the mismatched pair that estimates KTO's reference point). A
micro-batch becomes one batch whose sequences are first_0, second_0, first_1, ... so that both go
through one (packed) forward pass; the log-probability of each answer is summed from its trained
tokens (`sequence_logps`). The unit is a row (a pair, or a KTO example): the loop divides the summed
per-row losses by the rows of the whole step.

The reference model of DPO is the same model with the adapter switched off (LoRA, QLoRA: no second
copy in memory) or, for full fine-tuning, log-probabilities computed once before the first step with
the base weights and kept in the run folder's cache (`preference.reference`).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from tunery.data.batching import common_prefix, make_sequence_batch, make_shared_pair_batch
from tunery.data.preference import build_feedback_datasets, build_pair_datasets
from tunery.losses.preference import (PREFERENCE_LOSSES, kto_kl, kto_loss, orpo_figures, orpo_loss,
                                      preference_figures)
from tunery.models.forward import LogitsAt, sequence_logps
from tunery.trainers.method import LossOut, Method


@contextmanager
def reference_mode(model):
    """The model as the reference: adapter off, eval mode (no dropout), no gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


class PairMethod(Method):
    """What the methods here share: rows of two answers, both in one batch, a row as the unit; the
    reference (when the loss needs one) from the adapter switched off or computed once beforehand."""

    unit = "pairs"
    build = staticmethod(build_pair_datasets)
    needs_reference = False

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        reference = cfg.preference.reference
        if reference == "auto":
            reference = "adapter_off" if cfg.adapter in ("lora", "qlora") else "precomputed"
        self.reference = reference if self.needs_reference else None
        if self.reference == "adapter_off" and cfg.adapter == "full":
            from tunery.errors import TuneryError

            raise TuneryError("preference.reference=adapter_off needs an adapter to switch off",
                              fix="use preference.reference=precomputed (or auto) with adapter: full")

    def load_data(self, cache_dir=None, write_cache=True):
        self.cache_dir, self.write_cache = cache_dir, write_cache
        data = self.build(self.cfg, self.tokenizer)
        self._train_rows, self._val_rows = data.train, data.val
        return data

    @staticmethod
    def sides(row) -> tuple:
        return row.chosen, row.rejected

    def row_tokens(self, row) -> int:
        if self.shares_prompt and self.cfg.preference.share_prompt:  # the common prefix goes through once
            first, second = self.sides(row)
            return row.tokens - common_prefix(first.ids, second.ids)
        return row.tokens

    shares_prompt = False  # both answers of a row follow the same prompt (see `make_shared_pair_batch`)

    def collate(self, rows) -> dict[str, torch.Tensor]:
        if self.shares_prompt and self.cfg.preference.share_prompt:
            batch = make_shared_pair_batch([self.sides(row) for row in rows], self.tokenizer.pad_token_id)
        else:
            sides = [side for row in rows for side in self.sides(row)]
            batch = make_sequence_batch(sides, self.tokenizer.pad_token_id, self.cfg.training.packing)
        batch["pairs"] = torch.tensor(len(rows))
        if rows and all(row.ref is not None for row in rows):
            batch["ref"] = torch.tensor([row.ref for row in rows], dtype=torch.float64)
        return batch

    def units(self, batch) -> int:
        return int(batch["pairs"])

    def answer_logps(self, model, batch, logits_at: LogitsAt, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second) log-probs of each row: sums over each answer's tokens, or means."""
        sums, counts = sequence_logps(model, batch, logits_at)
        logps = sums / counts.clamp(min=1) if average else sums
        return logps[0::2], logps[1::2]

    def prepare(self, model, logits_at: LogitsAt) -> None:
        if self.reference == "precomputed":
            precompute_references(self, model, logits_at)

    def reference_logps(self, model, batch, logits_at, average: bool = False
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The reference model's (first, second) log-probs of each row; (None, None) without a reference."""
        if self.reference is None:
            return None, None
        if self.reference == "precomputed":
            ref = batch["ref"]
            if average:
                _, counts = _answer_counts(batch)
                ref = ref / counts.view(-1, 2).clamp(min=1)
            return ref[:, 0].float(), ref[:, 1].float()
        with reference_mode(model):
            return self.answer_logps(model, batch, logits_at, average)


class DPO(PairMethod):
    """Direct preference optimisation with the loss `preference.loss` from the registry."""

    name = "dpo"
    shares_prompt = True
    figures = ("accuracy", "margin", "rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected")

    def __init__(self, cfg, tokenizer):
        self.loss_fn = PREFERENCE_LOSSES[cfg.preference.loss]
        self.needs_reference = self.loss_fn.needs_reference
        super().__init__(cfg, tokenizer)

    def options(self) -> dict[str, float]:
        p = self.cfg.preference
        known = {"label_smoothing": p.label_smoothing, "gamma": p.simpo_gamma}
        return {k: v for k, v in known.items() if k in self.loss_fn.options}

    def loss(self, model, batch, logits_at) -> LossOut:
        average = self.loss_fn.average_logps
        ref_chosen, ref_rejected = self.reference_logps(model, batch, logits_at, average)
        chosen, rejected = self.answer_logps(model, batch, logits_at, average)
        if ref_chosen is not None:
            ref_chosen, ref_rejected = ref_chosen.to(chosen.device), ref_rejected.to(chosen.device)
        losses = self.loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta=self.cfg.preference.beta,
                              **self.options())
        figures = preference_figures(chosen, rejected, ref_chosen, ref_rejected, self.cfg.preference.beta)
        figures |= {"logps_chosen": chosen.detach(), "logps_rejected": rejected.detach()}
        return LossOut(losses.sum(), len(chosen), {k: float(v.sum()) for k, v in figures.items()})


class ORPO(PairMethod):
    """Odds-ratio preference optimisation: SFT on the chosen answer plus an odds-ratio term, no reference."""

    name = "orpo"
    shares_prompt = True
    figures = ("nll", "log_odds_chosen", "log_odds_ratio")

    def loss(self, model, batch, logits_at) -> LossOut:
        chosen, rejected = self.answer_logps(model, batch, logits_at, average=True)
        losses = orpo_loss(chosen, rejected, -chosen, beta=self.cfg.preference.beta)
        figures = orpo_figures(chosen, rejected) | {"nll": -chosen.detach()}
        return LossOut(losses.sum(), len(chosen), {k: float(v.sum()) for k, v in figures.items()})


class KTO(PairMethod):
    """Kahneman-Tversky optimisation: each answer judged alone (desirable or not) against a reference
    point estimated from mismatched (prompt, answer) pairs of the same batch."""

    name = "kto"
    unit = "examples"
    build = staticmethod(build_feedback_datasets)
    needs_reference = True
    figures = ("kl", "rewards", "desirable")

    @staticmethod
    def sides(row) -> tuple:
        return row.answer, row.mismatched

    def collate(self, rows) -> dict[str, torch.Tensor]:
        batch = super().collate(rows)
        batch["desirable"] = torch.tensor([row.desirable for row in rows], dtype=torch.bool)
        return batch

    def loss(self, model, batch, logits_at) -> LossOut:
        p = self.cfg.preference
        ref_answer, ref_mismatched = self.reference_logps(model, batch, logits_at)
        answer, mismatched = self.answer_logps(model, batch, logits_at, average=False)
        ref_answer, ref_mismatched = ref_answer.to(answer.device), ref_mismatched.to(answer.device)
        # The reference point of this batch (TRL averages it over processes; here it is per piece).
        kl = kto_kl(mismatched.detach(), ref_mismatched)
        desirable = batch["desirable"].to(answer.device)
        losses = kto_loss(answer, ref_answer, desirable, kl, beta=p.beta, desirable_weight=p.desirable_weight,
                          undesirable_weight=p.undesirable_weight)
        n = len(answer)
        figures = {"kl": float(kl.clamp(min=0)) * n, "rewards": float((p.beta * (answer - ref_answer)).detach().sum()),
                   "desirable": float(desirable.sum())}
        return LossOut(losses.sum(), n, figures)


def _answer_counts(batch) -> tuple[None, torch.Tensor]:
    seq = batch["target_seq"]
    return None, torch.bincount(seq, minlength=int(batch["sequences"])).double()


def _reference_key(method: PairMethod, rows: int) -> str:
    cfg = method.cfg
    parts = [cfg.base_model, cfg.dtype, cfg.data.model_dump(mode="json"), cfg.training.seed, rows,
             method.tokenizer.chat_template]
    for path in cfg.data.train + cfg.data.validation:
        parts.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def precompute_references(method: PairMethod, model, logits_at: LogitsAt) -> None:
    """Reference log-probs of both answers of every training and validation row, from the weights as
    loaded (before any step), kept in the run's cache so that a resumed run (whose weights have moved)
    reuses them."""
    from safetensors.torch import load_file, save_file

    from tunery.atomic import atomic_file

    rows = method._train_rows + method._val_rows
    cache = Path(method.cache_dir) / f"reference-{_reference_key(method, len(rows))}.safetensors" \
        if method.cache_dir else None
    if cache is not None and cache.is_file():
        values = load_file(str(cache))["ref"].tolist()
    else:
        was_training = model.training
        model.eval()
        values = []
        size = method.cfg.training.batch_size
        for start in range(0, len(rows), size):
            sums, _ = sequence_logps(model, method.collate(rows[start:start + size]), logits_at)
            values += sums.view(-1, 2).double().tolist()
        model.train(was_training)
        if cache is not None and method.write_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(cache) as tmp:
                save_file({"ref": torch.tensor(values, dtype=torch.float64)}, str(tmp))
    for row, value in zip(rows, values):
        row.ref = (value[0], value[1])
