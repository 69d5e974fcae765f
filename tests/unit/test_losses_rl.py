"""Reinforcement fine-tuning losses: advantages of a hand-made group, the clipped objective token by token,
k3, and equality with TRL 1.16's GRPO/RLOO code on random tensors (see trl_oracle.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tunery.losses import ADVANTAGES, LOSSES, PREFERENCE_LOSSES, get_loss
from tunery.losses.rl import clipped_policy_loss, grpo_advantages, kl_k3, rloo_advantages

T = torch.tensor
F64 = torch.float64
TIGHT = {"rtol": 1e-6, "atol": 1e-9}
GROUPS = T([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # the second group's completions all scored the same


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl", reason="TRL is the oracle of these tests: pip install -e '.[dev]'")
    import trl_oracle

    return trl_oracle


def test_grpo_advantages_of_a_hand_made_group():
    # group 1: mean 0.5, deviations +-0.5, unbiased variance (4 * 0.25) / 3 = 1/3, std 0.57735
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # 0.86588
    assert_close(grpo_advantages(GROUPS), T([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]]))
    assert a == pytest.approx(0.865875, abs=1e-6)
    # batch std: mean 0.75 over 8, squares 6 * 0.0625 + 2 * 0.5625 = 1.5, unbiased variance 1.5 / 7
    b = 0.5 / (math.sqrt(1.5 / 7) + 1e-4)
    assert_close(grpo_advantages(GROUPS, scale="batch"), T([[b, -b, -b, b], [0.0, 0.0, 0.0, 0.0]]))
    assert_close(grpo_advantages(GROUPS, scale="none"), T([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_rloo_advantages_of_a_hand_made_group():
    # a reward-1 completion's baseline: the others (0 + 0 + 1) / 3 = 1/3, advantage 2/3;
    # a reward-0 completion's: (1 + 0 + 1) / 3 = 2/3, advantage -2/3; the equal group: 1 - 1 = 0
    third = 2 / 3
    assert_close(rloo_advantages(GROUPS), T([[third, -third, -third, third], [0.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("advantages", [lambda r: grpo_advantages(r, scale="group"),
                                        lambda r: grpo_advantages(r, scale="batch"), rloo_advantages,
                                        lambda r: rloo_advantages(r, normalize=True)])
def test_zero_variance_and_single_completion_give_zeros_never_nan(advantages):
    for rewards in (T([[3.0, 3.0, 3.0]]), T([[2.0], [5.0]]), T([[7.0]])):
        out = advantages(rewards)
        assert torch.isfinite(out).all(), rewards
        assert (out == 0).all(), (rewards, out)


def test_advantages_refuse_a_flat_reward_vector_and_unknown_scales():
    with pytest.raises(ValueError, match=r"\[groups, completions per group\]"):
        grpo_advantages(T([1.0, 0.0]))
    with pytest.raises(ValueError, match="unknown advantage scale 'std'"):
        grpo_advantages(GROUPS, scale="std")


def test_kl_k3_by_hand():
    # logp = log 0.5, ref = log 0.25: ref - logp = log 0.5; k3 = 0.5 - log 0.5 - 1 = 0.19315
    assert kl_k3(T([math.log(0.5)]), T([math.log(0.25)])).item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl_k3(T([-3.0]), T([-3.0])).item() == 0.0
    g = torch.Generator().manual_seed(0)
    assert (kl_k3(torch.randn(1000, generator=g), torch.randn(1000, generator=g)) >= 0).all()


# One completion of 3 tokens, the third padding. Ratios: token 0 exp(log 1.5) = 1.5, token 1 exp(log 0.5) = 0.5.
LOGPS = T([[math.log(1.5) - 1.0, math.log(0.5) - 2.0, float("nan")]])
OLD = T([[-1.0, -2.0, float("-inf")]])
MASK = T([[True, True, False]])


def test_clipped_policy_loss_by_hand_positive_advantage():
    # A = +1: token 0: -min(1.5, clip 1.2) = -1.2, clipped; token 1: -min(0.5, 0.8) = -0.5, not clipped
    total, count, figures = clipped_policy_loss(LOGPS, OLD, T([1.0]), MASK)
    assert total.item() == pytest.approx(-1.7)
    assert count == 2 and figures == {"clip_fraction": 1.0}


def test_clipped_policy_loss_by_hand_negative_advantage_and_clip_higher():
    # A = -1: token 0: -min(-1.5, -1.2) = 1.5, not clipped (ratio high, advantage negative);
    #         token 1: -min(-0.5, -0.8) = 0.8, clipped (ratio below 1 - 0.2)
    total, count, figures = clipped_policy_loss(LOGPS, OLD, T([-1.0]), MASK)
    assert total.item() == pytest.approx(2.3) and figures["clip_fraction"] == 1.0
    # DAPO's clip-higher: eps_high 0.6 leaves ratio 1.5 unclipped for A = +1: -1.5 - 0.5 = -2.0, nothing clipped
    total, _, figures = clipped_policy_loss(LOGPS, OLD, T([1.0]), MASK, eps_high=0.6)
    assert total.item() == pytest.approx(-2.0) and figures["clip_fraction"] == 0.0


def test_clipped_policy_loss_adds_beta_k3():
    # ref = logp on token 0 (k3 = 0) and logp - log 2 on token 1 (k3 = 0.5 - log 0.5 - 1 = 0.19315)
    ref = LOGPS.clone()
    ref[0, 1] -= math.log(2)
    total, _, figures = clipped_policy_loss(LOGPS, OLD, T([1.0]), MASK, ref_logps=ref, beta=0.1)
    k3 = 0.5 - math.log(0.5) - 1
    assert total.item() == pytest.approx(-1.7 + 0.1 * k3)
    assert figures["kl"] == pytest.approx(k3)


def test_clipped_policy_loss_gradient_ignores_padding_even_when_it_holds_nan():
    logps = LOGPS.clone().requires_grad_(True)
    total, _, _ = clipped_policy_loss(logps, OLD, T([1.0]), MASK, ref_logps=torch.zeros(1, 3), beta=0.1)
    total.backward()
    assert torch.isfinite(logps.grad).all()
    assert logps.grad[0, 0] == pytest.approx(0.1 * (1 - math.exp(-logps[0, 0].item())))  # clipped: only k3 pulls
    assert logps.grad[0, 1] < 0  # unclipped with A > 0: raise the token's probability
    assert logps.grad[0, 2] == 0.0


def test_empty_mask_gives_zero_loss_that_still_backpropagates():
    logps = torch.randn(2, 3, requires_grad=True)
    total, count, figures = clipped_policy_loss(logps, logps.detach(), T([1.0, -1.0]), torch.zeros(2, 3))
    total.backward()
    assert (total.item(), count, figures["clip_fraction"]) == (0.0, 0, 0.0)
    assert (logps.grad == 0).all()


def test_registries_are_exported_and_named():
    assert set(ADVANTAGES) == {"grpo", "rloo"}
    assert get_loss("rloo", ADVANTAGES) is rloo_advantages
    assert get_loss("ipo", PREFERENCE_LOSSES).average_logps
    assert "causal_lm" in LOSSES
    with pytest.raises(KeyError, match="unknown loss 'ppo'; known: grpo, rloo"):
        get_loss("ppo", ADVANTAGES)


# --- TRL 1.16 on the same tensors -------------------------------------------------------------------------

def random_rewards(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(6, 4, generator=g, dtype=F64)
    rewards[2] = 0.25  # a group with one reward only
    rewards[4, :2] = rewards[4, 2:] = T([1.0, 0.0], dtype=F64)
    return rewards


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_equal_trl(trl, scale):
    rewards = random_rewards(1)
    assert_close(grpo_advantages(rewards, scale=scale), trl.grpo_advantages(rewards, scale), **TIGHT)
    assert_close(grpo_advantages(GROUPS, scale=scale), trl.grpo_advantages(GROUPS, scale), **TIGHT)


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_equal_trl(trl, normalize):
    for rewards in (random_rewards(2), GROUPS):
        assert_close(rloo_advantages(rewards, normalize=normalize), trl.rloo_advantages(rewards, normalize),
                     **TIGHT)


def random_rollout(seed: int):
    g = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(4, 6, generator=g, dtype=F64)
    old = logps + 0.3 * torch.randn(4, 6, generator=g, dtype=F64)  # ratios from ~0.4 to ~2.5: some clipped
    ref = logps + 0.3 * torch.randn(4, 6, generator=g, dtype=F64)
    mask = (torch.arange(6) < T([[6], [2], [4], [1]])).to(F64)
    advantages = grpo_advantages(torch.randn(2, 2, generator=g, dtype=F64)).flatten()
    return logps, old, ref, mask, advantages


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_clipped_policy_loss_over_tokens_equals_trl(trl, loss_type, beta):
    logps, old, ref, mask, advantages = random_rollout(3)
    ref_logps = ref if beta else None
    total, count, figures = clipped_policy_loss(logps, old, advantages, mask, eps_low=0.2, eps_high=0.28,
                                                ref_logps=ref_logps, beta=beta)
    theirs, metrics = trl.grpo_policy(logps, old, advantages, mask, loss_type=loss_type, epsilon_low=0.2,
                                      epsilon_high=0.28, beta=beta, ref_logps=ref_logps)
    assert count == 13
    assert_close(total / count, theirs, **TIGHT)
    assert figures["clip_fraction"] / count == pytest.approx(metrics["clip_ratio/region_mean"], rel=1e-6)
    assert 0 < figures["clip_fraction"] < count  # the ratios straddle the clip range
    if beta:
        assert figures["kl"] / count == pytest.approx(metrics["kl"], rel=1e-6)


def test_per_token_advantages_equal_trl(trl):
    logps, old, _, mask, _ = random_rollout(4)
    advantages = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    total, count, _ = clipped_policy_loss(logps, old, advantages, mask)
    theirs, _ = trl.grpo_policy(logps, old, advantages, mask, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.2)
    assert_close(total / count, theirs, **TIGHT)
