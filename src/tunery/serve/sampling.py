"""Choosing each row's next token: greedy, or sampled with temperature and top-p from the row's own
random generator, plus the log-probabilities a request asked for.

Every sampled row draws one uniform number per token from its own `torch.Generator` and inverts the
cumulative distribution with it, so a seeded request gives the same answer whether it ran alone or
in a batch with others (what a batch does to the logits is rounding, not a different draw).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What one sequence asks of the decoder. `temperature` 0 is greedy; `logprobs` None leaves
    log-probabilities out, k >= 0 returns the chosen token's and the k most likely alternatives'."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    response_format: dict | None = field(default=None, compare=False)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded by `seed`, or by the operating system's randomness when there is none."""
    return torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams],
                  generators: list[torch.Generator | None]) -> list[int]:
    """The next token of each row of `logits` [rows, vocab] (masked logits are -inf)."""
    chosen = logits.argmax(dim=-1).tolist()
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return chosen
    rows = logits[sampled].float()
    temperature = torch.tensor([params[i].temperature for i in sampled]).unsqueeze(1)
    probs = torch.softmax(rows / temperature, dim=-1)
    top_p = torch.tensor([params[i].top_p for i in sampled]).unsqueeze(1)
    draws = torch.stack([torch.rand((), generator=generators[i]) for i in sampled]).unsqueeze(1)
    if bool((top_p < 1.0).any()):
        picks = _nucleus_draw(probs, top_p, draws)
    else:
        cdf = probs.cumsum(dim=-1)
        picks = torch.searchsorted(cdf, draws * cdf[:, -1:], right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)
        picks = _never_masked(picks, probs)
    for row, token in zip(sampled, picks.tolist()):
        chosen[row] = token
    return chosen


def _nucleus_draw(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Sample within the smallest set of most likely tokens whose probability reaches top_p."""
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(dim=-1) - ordered  # mass of the tokens ranked above each one
    ordered = ordered.masked_fill(before >= top_p, 0.0)  # the first token is always kept
    cdf = ordered.cumsum(dim=-1)
    rank = torch.searchsorted(cdf, draws * cdf[:, -1:], right=True).clamp_(max=probs.shape[-1] - 1)
    rank = torch.minimum(rank, (ordered > 0).sum(dim=-1, keepdim=True) - 1)
    return order.gather(1, rank).squeeze(1)


def _never_masked(picks: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Rounding at the end of the cdf could land a draw on a zero-probability token (a masked one); move
    such a draw to the most likely token, since a constrained row must stay inside its grammar."""
    bad = probs.gather(1, picks.unsqueeze(1)).squeeze(1) <= 0
    if bool(bad.any()):
        picks = torch.where(bad, probs.argmax(dim=-1), picks)
    return picks


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of a chosen token and of the `top` most likely tokens at that step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def logprobs_of(logits: torch.Tensor, tokens: list[int], tops: list[int]) -> list[TokenLogprob]:
    """Log-probabilities under the model (before temperature, top-p and grammar) for each row."""
    logps = torch.log_softmax(logits.float(), dim=-1)
    found = []
    for row, (token, top) in enumerate(zip(tokens, tops)):
        best = ()
        if top > 0:
            values, ids = logps[row].topk(top)
            best = tuple(zip(ids.tolist(), values.tolist()))
        found.append(TokenLogprob(token, float(logps[row, token]), best))
    return found
