"""Fixed probes that every merge and export is checked on: a few chat prompts and a logit comparison.

The prompts are rendered with the run's own chat template, so a check covers the tokens a user's
request will actually produce (header, system message, end-of-turn token), not just plain text.
"""

from __future__ import annotations

import torch

PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a primary colour."}],
    [{"role": "user", "content": "Count: one, two,"},
     {"role": "assistant", "content": "three, four."},
     {"role": "user", "content": "And then?"}],
]


def probe_ids(tokenizer) -> list[list[int]]:
    """Token ids of each probe conversation, ending with the assistant header."""
    from tunery.inference import prompt_ids

    return [prompt_ids(tokenizer, conv) for conv in PROBE_CONVERSATIONS]


@torch.no_grad()
def logits_of(model, rows: list[list[int]]) -> list[torch.Tensor]:
    """Float32 logits of each row, one forward pass per row (no padding, so nothing to mask)."""
    device = next(model.parameters()).device
    out = []
    for row in rows:
        ids = torch.tensor([row], dtype=torch.long, device=device)
        out.append(model(input_ids=ids, use_cache=False).logits[0].float().cpu())
    return out


def compare_logits(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    """Max and mean absolute logit difference, and whether the argmax token agrees at every position."""
    diffs = [(a - b).abs() for a, b in zip(reference, other)]
    same_argmax = all(bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(reference, other))
    scale = max(float(a.abs().max()) for a in reference)
    return {
        "max_abs_diff": max(float(d.max()) for d in diffs),
        "mean_abs_diff": sum(float(d.mean()) for d in diffs) / len(diffs),
        "max_abs_logit": scale,
        "argmax_agrees": same_argmax,
        "positions": sum(int(a.shape[0]) for a in reference),
    }
