"""Preference losses: hand-computed values on tiny tensors, equality with TRL 1.16 on random ones
(TRL's own trainer code run on the same tensors, see trl_oracle.py), gradients and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tunery.losses import PREFERENCE_LOSSES
from tunery.losses.preference import (bradley_terry, dpo_hinge, dpo_robust, dpo_sigmoid, ipo, kto_kl, kto_loss,
                                      orpo_figures, orpo_loss, preference_figures, simpo)

T = torch.tensor
F64 = torch.float64
TIGHT = {"rtol": 1e-6, "atol": 1e-9}


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def trl():
    pytest.importorskip("trl", reason="TRL is the oracle of these tests: pip install -e '.[dev]'")
    import trl_oracle

    return trl_oracle


def random_logps(n: int, seed: int) -> list[torch.Tensor]:
    """Four [n] tensors of sequence log-probs around -20, policy and reference apart by ~1 nat."""
    g = torch.Generator().manual_seed(seed)
    base = -20 + 5 * torch.randn(2, n, generator=g, dtype=F64)
    return [base[0] + torch.randn(n, generator=g, dtype=F64), base[1] + torch.randn(n, generator=g, dtype=F64),
            base[0], base[1]]


# --- hand-computed values ------------------------------------------------------------------------------

# c - c_ref = 1, r - r_ref = -1: the DPO margin d = 2; with beta = 0.5, beta d = 1.
PAIR = [T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])]


def test_dpo_sigmoid_by_hand():
    assert dpo_sigmoid(*PAIR, beta=0.5).item() == pytest.approx(softplus(-1))  # -log sigma(1) = 0.31326
    # conservative: 0.9 (-log sigma(1)) + 0.1 (-log sigma(-1)) = 0.9 * 0.31326 + 0.1 * 1.31326 = 0.41326
    assert dpo_sigmoid(*PAIR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(
        0.9 * softplus(-1) + 0.1 * softplus(1))
    assert dpo_sigmoid(*PAIR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(0.4132617, abs=1e-7)


def test_equal_chosen_and_rejected_give_log_2():
    same = [T([-5.0, -7.0]), T([-5.0, -7.0]), T([-4.0, -9.0]), T([-4.0, -9.0])]
    assert_close(dpo_sigmoid(*same, beta=0.1), torch.full((2,), math.log(2)))
    assert_close(dpo_sigmoid(*same, beta=0.1, label_smoothing=0.2), torch.full((2,), math.log(2)))
    assert_close(simpo(same[0], same[1], beta=2.0, gamma=0.0), torch.full((2,), math.log(2)))


def test_robust_by_hand():
    # [0.9 (-log sigma(1)) - 0.1 (-log sigma(-1))] / (1 - 0.2) = (0.28194 - 0.13133) / 0.8 = 0.18826
    expected = (0.9 * softplus(-1) - 0.1 * softplus(1)) / 0.8
    assert dpo_robust(*PAIR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.1882617, abs=1e-7)
    assert dpo_robust(*PAIR, beta=0.5).item() == pytest.approx(softplus(-1))  # eps = 0 is DPO
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo_robust(*PAIR, beta=0.5, label_smoothing=0.5)


def test_hinge_and_ipo_by_hand():
    chosen, rejected, ref = T([-1.0, -2.0, -3.0]), T([-3.0, -2.0, -1.0]), T([-2.0, -2.0, -2.0])
    # d = 2, 0, -2 ; hinge with beta 0.5: max(0, 1 - 0.5 d) = 0, 1, 2
    assert dpo_hinge(chosen, rejected, ref, ref, beta=0.5).tolist() == [0.0, 1.0, 2.0]
    # IPO with beta 0.5: (d - 1 / (2 * 0.5))^2 = (2 - 1)^2, (0 - 1)^2, (-2 - 1)^2 = 1, 1, 9
    assert ipo(chosen, rejected, ref, ref, beta=0.5).tolist() == [1.0, 1.0, 9.0]


def test_simpo_by_hand():
    # beta (c - r) - gamma = 2 * (-1 + 1.5) - 0.5 = 0.5 ; -log sigma(0.5) = log(1 + e^-0.5) = 0.47408
    assert simpo(T([-1.0]), T([-1.5]), None, None, beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-0.5))
    assert softplus(-0.5) == pytest.approx(0.4740770, abs=1e-7)


def test_preference_figures_by_hand():
    figures = preference_figures(T([-1.0, -4.0]), T([-3.0, -1.0]), T([-2.0, -2.0]), T([-2.0, -2.0]), beta=0.5)
    # rewards: 0.5 * (c - c_ref) = 0.5, -1 ; 0.5 * (r - r_ref) = -0.5, 0.5
    assert figures["rewards_chosen"].tolist() == [0.5, -1.0]
    assert figures["rewards_rejected"].tolist() == [-0.5, 0.5]
    assert figures["margin"].tolist() == [1.0, -1.5]
    assert figures["accuracy"].tolist() == [1.0, 0.0]
    free = preference_figures(T([-1.0]), T([-3.0]), None, None, beta=0.5)  # reference-free: beta * logp
    assert free["rewards_chosen"].tolist() == [-0.5] and free["margin"].tolist() == [1.0]


def test_orpo_by_hand():
    # p(chosen) = 0.5: odds 1, log odds 0 ; p(rejected) = 0.25: odds 1/3 ; log odds ratio = log 3
    # loss = nll - beta log sigma(log 3) = 0.7 - 0.1 log(3/4) = 0.7 + 0.028768 = 0.728768
    c, r = T([math.log(0.5)]), T([math.log(0.25)])
    assert orpo_loss(c, r, T([0.7]), beta=0.1).item() == pytest.approx(0.7 - 0.1 * math.log(0.75), abs=1e-6)
    figures = orpo_figures(c, r)
    assert figures["log_odds_chosen"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert figures["log_odds_ratio"].item() == pytest.approx(math.log(0.75), abs=1e-6)


def test_orpo_stable_when_a_probability_is_near_one():
    # mean log-prob -1e-8 in fp32: exp() rounds to 1 and log1p(-exp(x)) gives -inf; log(-expm1(x)) gives
    # log(1e-8) = -18.42, so log odds(chosen) = -1e-8 + 18.42.
    c = T([-1e-8], requires_grad=True)
    r = T([-2.0], requires_grad=True)
    loss = orpo_loss(c, r, -c, beta=0.1)
    assert torch.isinf(torch.log1p(-torch.exp(c.detach()))).item()  # what a naive formula would give
    log_odds_rejected = -2.0 - math.log1p(-math.exp(-2.0))
    expected = orpo_figures(c, r)["log_odds_chosen"].item()
    assert expected == pytest.approx(-math.log(1e-8) - log_odds_rejected, rel=1e-5)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_kto_by_hand():
    # rho = -1 - (-2) = 1, z = 0.4, beta 0.5: desirable 2 * (1 - sigma(0.3)), undesirable 3 * (1 - sigma(-0.3))
    policy, ref = T([-1.0, -1.0]), T([-2.0, -2.0])
    loss = kto_loss(policy, ref, T([True, False]), T(0.4), beta=0.5, desirable_weight=2.0, undesirable_weight=3.0)
    assert loss.tolist() == pytest.approx([2 * (1 - sigma(0.3)), 3 * (1 - sigma(-0.3))])
    # a negative KL estimate is clamped at 0: desirable 1 - sigma(0.5 * 1)
    assert kto_loss(policy[:1], ref[:1], T([True]), T(-5.0), beta=0.5).item() == pytest.approx(1 - sigma(0.5))
    # kto_kl: the mean of the mismatched log-ratios, (1 + 3) / 2 = 2
    assert kto_kl(T([-1.0, -2.0]), T([-2.0, -5.0])).item() == 2.0


def test_kto_kl_carries_no_gradient():
    policy = T([-1.0, -3.0], requires_grad=True)
    kl = T(0.4, requires_grad=True)
    kto_loss(policy, T([-2.0, -2.0]), T([True, False]), kl, beta=0.5).sum().backward()
    assert kl.grad is None
    assert policy.grad[0] < 0 < policy.grad[1]  # raise the desirable answer, lower the undesirable one


def test_bradley_terry_by_hand():
    # -log sigma(2 - 1) = 0.31326 ; with margin 1: -log sigma(0) = log 2 ; centring 0.01 * (2 + 1)^2 = 0.09
    assert bradley_terry(T([2.0]), T([1.0])).item() == pytest.approx(softplus(-1))
    assert bradley_terry(T([2.0]), T([1.0]), T([1.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry(T([2.0]), T([1.0]), center_coefficient=0.01).item() == pytest.approx(softplus(-1) + 0.09)


# --- the registry ----------------------------------------------------------------------------------------

def test_registry_says_what_each_loss_needs():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "robust", "hinge", "ipo", "simpo"}
    # TRL: DPO sums log-probs except for IPO (divides by completion lengths); CPO/SimPO averages them.
    assert {k for k, v in PREFERENCE_LOSSES.items() if v.average_logps} == {"ipo", "simpo"}
    assert {k for k, v in PREFERENCE_LOSSES.items() if not v.needs_reference} == {"simpo"}
    loss = PREFERENCE_LOSSES["sigmoid"](*PAIR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * softplus(-1) + 0.1 * softplus(1))
    assert PREFERENCE_LOSSES["simpo"](T([-1.0]), T([-1.5]), None, None, beta=2.0, gamma=0.5).item() == \
        pytest.approx(softplus(-0.5))


def test_registry_refuses_options_a_loss_does_not_take_and_missing_references():
    with pytest.raises(TypeError, match="dpo_hinge takes no option label_smoothing"):
        PREFERENCE_LOSSES["hinge"](*PAIR, beta=0.5, label_smoothing=0.1)
    with pytest.raises(ValueError, match="needs the reference"):
        PREFERENCE_LOSSES["ipo"](PAIR[0], PAIR[1], None, None, beta=0.5)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_gradients_raise_chosen_and_lower_rejected(name):
    chosen, rejected = T([-10.0, -12.0], requires_grad=True), T([-11.0, -9.0], requires_grad=True)
    ref_c, ref_r = T([-10.5, -12.0]), T([-10.5, -9.5])
    options = {"gamma": 0.5} if name == "simpo" else {}
    PREFERENCE_LOSSES[name](chosen, rejected, ref_c, ref_r, beta=0.1, **options).sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


# --- TRL 1.16 on the same tensors -------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type,fn,smoothing", [("sigmoid", dpo_sigmoid, 0.0), ("robust", dpo_robust, 0.2),
                                                   ("hinge", dpo_hinge, None)])
def test_dpo_family_equals_trl(trl, loss_type, fn, smoothing):
    c, r, rc, rr = random_logps(8, seed=1)
    beta = 0.3
    options = {} if smoothing is None else {"label_smoothing": smoothing}
    ours = fn(c, r, rc, rr, beta=beta, **options)
    per_pair = torch.stack([trl.dpo(loss_type, c[i:i + 1], r[i:i + 1], rc[i:i + 1], rr[i:i + 1], beta=beta,
                                    **options)[0] for i in range(8)])
    assert_close(ours, per_pair, **TIGHT)
    batch_loss, metrics = trl.dpo(loss_type, c, r, rc, rr, beta=beta, **options)
    assert_close(ours.mean(), batch_loss, **TIGHT)
    figures = preference_figures(c, r, rc, rr, beta)
    for ours_name, trl_name in [("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                                ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")]:
        assert figures[ours_name].mean().item() == pytest.approx(metrics[trl_name], rel=1e-6, abs=1e-12)
    assert 0 < metrics["rewards/accuracies"] < 1  # the random pairs go both ways


def test_conservative_dpo_equals_trl_cpo_sigmoid_on_log_ratios(trl):
    # TRL 1.16 dropped label smoothing from DPOTrainer's "sigmoid"; its CPOTrainer keeps the same conservative
    # form, which on the log-ratios (c - c_ref, r - r_ref) is conservative DPO.
    c, r, rc, rr = random_logps(8, seed=2)
    trl_losses, _, _ = trl.cpo("sigmoid", c - rc, r - rr, beta=0.3, label_smoothing=0.15)
    assert_close(dpo_sigmoid(c, r, rc, rr, beta=0.3, label_smoothing=0.15), trl_losses, **TIGHT)


def test_ipo_on_mean_logps_equals_trl_dpo_ipo_on_sums(trl):
    g = torch.Generator().manual_seed(3)
    lengths = [3, 7, 1, 12, 5, 9]  # chosen lengths of 3 pairs, then rejected lengths
    token_logps = [-2 * torch.rand(2, n, generator=g, dtype=F64) for n in lengths]  # policy, reference
    sums = torch.stack([t.sum(dim=1) for t in token_logps])  # [6, 2]
    means = torch.stack([t.mean(dim=1) for t in token_logps])
    ours = ipo(means[:3, 0], means[3:, 0], means[:3, 1], means[3:, 1], beta=0.4)
    for i in range(3):
        pair_lengths = [lengths[i], lengths[3 + i]]
        theirs, _ = trl.dpo("ipo", sums[i:i + 1, 0], sums[3 + i:4 + i, 0], sums[i:i + 1, 1], sums[3 + i:4 + i, 1],
                            beta=0.4, lengths=pair_lengths)
        assert_close(ours[i], theirs, **TIGHT)


def test_simpo_equals_trl_cpo_simpo(trl):
    c, r, _, _ = random_logps(8, seed=4)
    c, r = c / 20, r / 20  # per-token means
    for smoothing in (0.0, 0.1):
        theirs, _, _ = trl.cpo("simpo", c, r, beta=2.5, label_smoothing=smoothing, simpo_gamma=1.2)
        assert_close(simpo(c, r, None, None, beta=2.5, gamma=1.2, label_smoothing=smoothing), theirs, **TIGHT)


def test_orpo_equals_trl(trl):
    c, r, _, _ = random_logps(8, seed=5)
    c, r = c / 40, r / 40
    c[0] = -1e-6  # near-certain answers go through log(-expm1(x)), the other branch
    nll = -c
    theirs, _, _, mean_ratio, mean_log_odds = trl.orpo_odds_ratio(c, r, beta=0.2)
    ours = orpo_loss(c, r, nll, beta=0.2)
    assert_close(ours, nll.float() - theirs, **TIGHT)  # TRL's loss: nll - beta log sigma(log odds)
    figures = orpo_figures(c, r)
    assert figures["log_odds_ratio"].mean().item() == pytest.approx(mean_ratio.item(), rel=1e-6)
    assert figures["log_odds_chosen"].mean().item() == pytest.approx(mean_log_odds.item(), rel=1e-6)


@pytest.mark.parametrize("kl_shift", [0.5, -3.0])  # a positive and a negative (clamped) KL estimate
def test_kto_equals_trl(trl, kl_shift):
    policy, ref, kl_policy, kl_ref = random_logps(6, seed=6)
    kl_policy = kl_ref + kl_shift + 0.1 * torch.randn(6, generator=torch.Generator().manual_seed(7), dtype=F64)
    desirable = T([True, False, True, True, False, False])
    kl = kto_kl(kl_policy, kl_ref)
    options = {"beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.7}
    ours = kto_loss(policy, ref, desirable, kl, **options)
    batch_loss, trl_kl = trl.kto(policy, ref, desirable, kl_policy, kl_ref, **options)
    assert_close(ours.mean(), batch_loss, **TIGHT)
    assert trl_kl == pytest.approx(max(kl.item(), 0.0), rel=1e-6, abs=1e-12)
    for i in range(6):  # one example at a time, the same mismatched batch for the KL point
        theirs, _ = trl.kto(policy[i:i + 1], ref[i:i + 1], desirable[i:i + 1], kl_policy, kl_ref, **options)
        assert_close(ours[i], theirs, **TIGHT)


def test_bradley_terry_equals_trl(trl):
    chosen, rejected, margin, _ = random_logps(8, seed=8)
    chosen, rejected, margin = chosen / 10, rejected / 10, (margin + 20) / 10
    assert_close(bradley_terry(chosen, rejected).mean(), trl.reward(chosen, rejected), **TIGHT)
    assert_close(bradley_terry(chosen, rejected, margin).mean(), trl.reward(chosen, rejected, margin), **TIGHT)
    assert_close(bradley_terry(chosen, rejected, center_coefficient=0.01).mean(),
                 trl.reward(chosen, rejected, center_rewards_coefficient=0.01), **TIGHT)
    for i in range(8):
        assert_close(bradley_terry(chosen[i:i + 1], rejected[i:i + 1], margin[i:i + 1]),
                     trl.reward(chosen[i:i + 1], rejected[i:i + 1], margin[i:i + 1]).reshape(1), **TIGHT)
