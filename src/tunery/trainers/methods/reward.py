"""Reward models: a scalar head on the base model, trained on preference pairs with the Bradley-Terry loss.

The model is transformers' sequence-classification class of the base family with one output (the head,
`score`, starts from a seeded random init); with LoRA the head is trained in full next to the adapter
and saved with it (PEFT's `modules_to_save`), so `adapter/` alone holds everything a grader needs. The
reward of an answer is the head applied to the last token of the conversation (the answer's
end-of-turn token), read from one packed forward pass over both sides of every pair.
"""

from __future__ import annotations

import torch

from tunery.losses.preference import bradley_terry
from tunery.models.forward import causal_lm_of, device_of, model_inputs
from tunery.trainers.method import LossOut
from tunery.trainers.methods.preference import PairMethod

HEAD = "score"  # the name transformers gives the head of every *ForSequenceClassification decoder


def last_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flat indices (into batch x length) of each sequence's last token, packed or padded."""
    if "position_ids" in batch:  # packed: a sequence ends where the next one restarts at position 0
        positions = batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten()
        return torch.cat([starts[1:], torch.tensor([len(positions)])]) - 1
    lengths = batch["attention_mask"].sum(1)
    width = batch["attention_mask"].shape[1]
    return torch.arange(len(lengths)) * width + lengths - 1


def rewards_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reward of every sequence of `batch` [S]: the head on the last token's hidden state."""
    classifier = causal_lm_of(model)
    device = device_of(model)
    hidden = classifier.model(**model_inputs(batch, device)).last_hidden_state
    last = hidden.reshape(-1, hidden.shape[-1])[last_positions(batch).to(device)]
    return getattr(classifier, HEAD)(last).squeeze(-1).float()


def load_reward_base(spec: str, dtype: str, pad_token_id: int, seed: int):
    """The base as a sequence classifier with one output; the new head is drawn with the run's seed."""
    from transformers import AutoModelForSequenceClassification

    from tunery.models.load import DTYPES, resolve_model_source

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_source(spec), num_labels=1,
                                                               dtype=DTYPES[dtype])
    model.config.pad_token_id = pad_token_id  # transformers' own pooling looks for it
    return model


class RewardModel(PairMethod):
    """Bradley-Terry on pairs: the chosen answer's reward should exceed the rejected one's (by the
    pair's `margin`, when it has one and `preference.use_margin` is on)."""

    name = "reward"
    figures = ("accuracy", "margin", "rewards_chosen", "rewards_rejected")

    def load_base(self):
        if self.cfg.adapter == "qlora":
            from tunery.errors import TuneryError

            raise TuneryError("method: reward trains with adapter: lora or full", fix="set adapter: lora")
        return load_reward_base(self.cfg.base_model, self.cfg.dtype, self.tokenizer.pad_token_id,
                                self.cfg.training.seed)

    def make_trainable(self, model):
        from tunery.models import adapters

        return adapters.prepare_trainable(model, self.cfg, task_type="SEQ_CLS", extra_modules=[HEAD])

    def collate(self, rows) -> dict[str, torch.Tensor]:
        batch = super().collate(rows)
        use = self.cfg.preference.use_margin
        batch["margin"] = torch.tensor([row.margin if use and row.margin is not None else 0.0 for row in rows])
        return batch

    def loss(self, model, batch, logits_at) -> LossOut:
        rewards = rewards_of(model, batch)
        chosen, rejected = rewards[0::2], rewards[1::2]
        margin = batch["margin"].to(rewards.device)
        losses = bradley_terry(chosen, rejected, margin)
        diff = (chosen - rejected).detach()
        figures = {"accuracy": float((diff > 0).sum()), "margin": float(diff.sum()),
                   "rewards_chosen": float(chosen.detach().sum()), "rewards_rejected": float(rejected.detach().sum())}
        return LossOut(losses.sum(), len(chosen), figures)
