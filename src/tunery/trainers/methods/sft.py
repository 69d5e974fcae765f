"""Supervised fine-tuning and continued pre-training: next-token loss on the trained tokens.

SFT trains the assistant turns of conversations (`data.train_on`), CPT every token of raw text; both
render their records with the data pipeline and differ only in which tokens carry loss.

The guards against forgetting live here too: `data.replay` appends general conversations to the
training rows (`tunery.trainers.replay`), and `training.kl_to_base` adds, on those rows' trained
tokens, KL(base || tuned) of the next-token distributions, the base being the same model with the
adapter switched off.
"""

from __future__ import annotations

import torch

from tunery.data.batching import grouped, make_batch, pack_shared, shared_length, split_shared
from tunery.data.dataset import build_datasets
from tunery.losses.lm import kl_from_reference_sum, weighted_ce_sum
from tunery.models.forward import causal_lm_of, forward_loss, in_target_order, trained_targets
from tunery.trainers.method import LossOut, Method


class SFT(Method):
    """Next-token cross-entropy summed over trained tokens; the unit is a trained token."""

    name = "sft"
    unit = "tokens"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.kl_beta = cfg.training.kl_to_base
        if self.kl_beta is not None:
            # Summed per step: the KL and the replay tokens; logged: the KL per replay token, and the
            # share of the trained tokens that are replay.
            self.figures = ("kl_to_base", "replay_share")
            self.figure_units = {"kl_to_base": "replay_share"}
        self._base = None
        tc = cfg.training
        self.share = tc.packing and tc.share_prefix  # `prepare` turns it off for models that cannot

    def prepare(self, model, logits_at):
        from tunery.shared_prefix import can_share

        # A 4D mask replaces the model's own, so only models that attend to the whole context may take it.
        self.share = self.share and can_share(causal_lm_of(model))

    def load_base(self):
        model = super().load_base()
        self._base = model  # the untrained base: self-replay's answers are its own
        return model

    def load_data(self, cache_dir=None, write_cache=True):
        data = build_datasets(self.cfg, self.tokenizer, cache_dir=cache_dir, write_cache=write_cache)
        if self.cfg.data.replay is not None:
            from tunery.trainers.replay import mix_replay

            data = mix_replay(data, self.cfg, self.tokenizer, self._base, self.log)
        self._base = None
        return data

    def pieces(self, rows):
        if not self.share:
            return super().pieces(rows)
        return split_shared(grouped(rows), self.cfg.training.chunk_tokens)

    def model_tokens(self, pieces):
        if not self.share:
            return super().model_tokens(pieces)
        pieces = list(pieces)
        return sum(shared_length(piece) for piece in pieces), sum(len(row.ids) for piece in pieces for row in piece)

    def pieces_note(self, pieces):
        if not self.share:
            return None
        through, whole = self.model_tokens(pieces)
        return (f"share_prefix: {through:,} of {whole:,} tokens go through the model "
                f"({1 - through / max(whole, 1):.0%} fewer: prefixes that rows of a piece share, once)")

    def rows_batch(self, rows):
        """Packed with each shared prefix once (`training.share_prefix`), else as every method packs."""
        if self.share:
            return pack_shared(rows)
        return make_batch(rows, self.tokenizer.pad_token_id, self.cfg.training.packing)

    def collate(self, rows):
        if self.share:  # rows of a group together: targets listed in position order (`grouped`)
            rows = grouped(rows)
        batch = self.rows_batch(rows)
        weighted = any(getattr(r, "loss_weight", 1.0) != 1.0 for r in rows)
        if not weighted and self.kl_beta is None:
            return batch  # the plain path: no per-token tensors to build
        counts = torch.tensor([r.num_targets for r in rows], dtype=torch.long)
        if weighted:
            weights = torch.tensor([getattr(r, "loss_weight", 1.0) for r in rows], dtype=torch.float32)
            batch["target_weight"] = torch.repeat_interleave(weights, counts)  # per trained token, in target order
        if self.kl_beta is not None:
            flags = torch.tensor([getattr(r, "replay", False) for r in rows], dtype=torch.bool)
            batch["replay_target"] = torch.repeat_interleave(flags, counts)  # per trained token, in target order
            replay = [r for r in rows if getattr(r, "replay", False)]
            if replay:  # the base scores only these rows
                batch["replay_batch"] = self.rows_batch(replay)
        return batch

    def loss_units(self, batch):
        """Trained tokens, each counted at its weight (replay under `data.replay_weight: example`)."""
        return float(batch["target_weight"].sum()) if "target_weight" in batch else self.units(batch)

    def loss(self, model, batch, logits_at):
        if self.kl_beta is None and "target_weight" not in batch:
            total, count = forward_loss(model, batch, logits_at=logits_at)
            return LossOut(total, count)
        positions, index, targets = trained_targets(batch)
        logits = in_target_order(logits_at(model, batch, positions), index)
        weight = batch["target_weight"].to(logits.device) if "target_weight" in batch else None
        total, count = weighted_ce_sum(logits, targets.to(logits.device), weight)
        if self.kl_beta is None:
            return LossOut(total, count)
        replay = batch["replay_target"].to(logits.device)
        if "replay_batch" not in batch:
            return LossOut(total, count, {"kl_to_base": 0.0, "replay_share": 0.0})
        from tunery.trainers.methods.preference import reference_mode

        with reference_mode(model):  # the base: the adapter switched off, no gradients
            sub = batch["replay_batch"]
            sub_positions, sub_index, _ = trained_targets(sub)
            base_logits = in_target_order(logits_at(model, sub, sub_positions), sub_index)
        kl = kl_from_reference_sum(logits[replay], base_logits.to(logits.device),
                                   weight[replay] if weight is not None else None)
        return LossOut(total + self.kl_beta * kl, count,
                       {"kl_to_base": float(kl.detach()), "replay_share": float(replay.sum())})


class CPT(SFT):
    """Continued pre-training: the same loss on every token of raw text (rendering trains them all)."""

    name = "cpt"
