"""Supervised fine-tuning and continued pre-training: next-token loss on the trained tokens.

SFT trains the assistant turns of conversations (`data.train_on`), CPT every token of raw text; both
render their records with the data pipeline and differ only in which tokens carry loss.
"""

from __future__ import annotations

from tunery.data.dataset import build_datasets
from tunery.models.forward import forward_loss
from tunery.trainers.method import LossOut, Method


class SFT(Method):
    """Next-token cross-entropy summed over trained tokens; the unit is a trained token."""

    name = "sft"
    unit = "tokens"

    def load_data(self, cache_dir=None, write_cache=True):
        return build_datasets(self.cfg, self.tokenizer, cache_dir=cache_dir, write_cache=write_cache)

    def loss(self, model, batch, logits_at):
        total, count = forward_loss(model, batch, logits_at=logits_at)
        return LossOut(total, count)


class CPT(SFT):
    """Continued pre-training: the same loss on every token of raw text (rendering trains them all)."""

    name = "cpt"
