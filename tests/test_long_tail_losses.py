"""Logit adjustment, focal loss and class-balanced weights against float64 references from the papers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bcl.losses import (
    FocalLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    class_priors,
    focal_loss,
)

COUNTS = [273, 10, 10, 10, 10]


def test_logit_adjustment_matches_its_definition():
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 5, (16,))
    for tau in (0.0, 0.5, 1.0, 2.0):
        log_pi = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))
        expected = F.cross_entropy(logits + tau * log_pi, targets)
        got = LogitAdjustedLoss(COUNTS, tau=tau)(logits, targets)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_tau_one_is_balanced_softmax():
    # Balanced Softmax: −log( n_y e^{z_y} / Σ_j n_j e^{z_j} ), written out per sample
    torch.manual_seed(1)
    logits, targets = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    expected = torch.stack(
        [-torch.log(counts[y] * torch.exp(z[y]) / (counts * torch.exp(z)).sum()) for z, y in zip(logits, targets)]
    ).mean()
    torch.testing.assert_close(LogitAdjustedLoss(COUNTS)(logits, targets).double(), expected, rtol=1e-5, atol=1e-6)


def test_tau_zero_is_cross_entropy_and_priors_are_a_saved_buffer():
    torch.manual_seed(2)
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    criterion = LogitAdjustedLoss(COUNTS, tau=0.0)
    torch.testing.assert_close(criterion(logits, targets), F.cross_entropy(logits, targets))
    assert "log_priors" in criterion.state_dict()
    torch.testing.assert_close(criterion.log_priors.exp().sum(), torch.tensor(1.0))
    assert criterion.to(torch.float64).log_priors.dtype == torch.float64  # follows .to()
    restored = LogitAdjustedLoss([1, 1, 1, 1, 1])
    restored.load_state_dict(LogitAdjustedLoss(COUNTS).state_dict())
    torch.testing.assert_close(restored.log_priors, class_priors(COUNTS).log())


def test_logit_adjustment_shifts_the_decision_towards_the_tail():
    # the loss gradient for a tail sample is larger than plain CE's: the model must push its logit up more
    logits = torch.zeros(1, 5, requires_grad=True)
    LogitAdjustedLoss(COUNTS)(logits, torch.tensor([1])).backward()
    adjusted = logits.grad[0, 1].item()
    logits.grad = None
    F.cross_entropy(logits, torch.tensor([1])).backward()
    assert adjusted < logits.grad[0, 1].item() < 0


def focal_reference(logits, targets, gamma, alpha=None):
    losses, weights = [], []
    for z, y in zip(logits.double(), targets.tolist()):
        p = torch.softmax(z, 0)[y]
        a = 1.0 if alpha is None else float(alpha[y])
        losses.append(-a * (1 - p) ** gamma * torch.log(p))
        weights.append(a)
    return torch.stack(losses).sum() / sum(weights)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_matches_reference(gamma):
    torch.manual_seed(3)
    logits, targets = torch.randn(12, 4) * 3, torch.randint(0, 4, (12,))
    alpha = torch.tensor([0.25, 1.0, 2.0, 0.5])
    torch.testing.assert_close(focal_loss(logits, targets, gamma).double(), focal_reference(logits, targets, gamma))
    torch.testing.assert_close(
        FocalLoss(gamma, alpha=alpha)(logits, targets).double(), focal_reference(logits, targets, gamma, alpha)
    )


def test_focal_gamma_zero_is_weighted_cross_entropy():
    torch.manual_seed(4)
    logits, targets = torch.randn(16, 5), torch.randint(0, 5, (16,))
    weights = class_balanced_weights(COUNTS, beta=0.999)
    torch.testing.assert_close(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets))
    torch.testing.assert_close(
        focal_loss(logits, targets, 0.0, alpha=weights), F.cross_entropy(logits, targets, weight=weights)
    )
    assert focal_loss(logits, targets, 2.0, reduction="none").shape == (16,)
    torch.testing.assert_close(
        focal_loss(logits, targets, 2.0, reduction="sum"), focal_loss(logits, targets, 2.0, reduction="none").sum()
    )


def test_focal_loss_finite_for_confident_predictions():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    loss = FocalLoss(2.0)(logits, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_class_balanced_weights_formula_and_limits():
    counts = [500, 50, 5]
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w * len(counts) / sum(raw) for w in raw]
    torch.testing.assert_close(class_balanced_weights(counts, beta), torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(class_balanced_weights(counts, 0.0), torch.ones(3))
    inverse = torch.tensor([1 / n for n in counts])
    torch.testing.assert_close(
        class_balanced_weights(counts, 0.999999), inverse * 3 / inverse.sum(), rtol=1e-3, atol=1e-3
    )


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[], [[1, 2]], [5, 0, 3], [5, -1], [5, float("nan")]])
def test_bad_class_counts(counts):
    with pytest.raises(ValueError, match="class_counts"):
        LogitAdjustedLoss(counts)
    with pytest.raises(ValueError, match="class_counts"):
        class_balanced_weights(counts)


def test_zero_count_names_the_class():
    with pytest.raises(ValueError, match=r"classes \[1\] have counts \[0.0\]"):
        class_priors([4, 0, 2])


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, float("nan")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([3, 1], beta)


def test_bad_tau_gamma_reduction_alpha():
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedLoss(COUNTS, tau=-1)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"alpha must have shape \[C\] = \[5\]"):
        focal_loss(torch.randn(2, 5), torch.tensor([0, 1]), alpha=torch.ones(3))


def test_bad_logits_and_targets():
    criterion = LogitAdjustedLoss(COUNTS)
    with pytest.raises(ValueError, match="logits have 4 classes.*built for 5"):
        criterion(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits must have shape \[B, C\]"):
        criterion(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"targets must have shape \[B\] = \[3\]"):
        criterion(torch.randn(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        criterion(torch.randn(3, 5), torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="integer class indices"):
        FocalLoss()(torch.randn(3, 5), torch.tensor([0.0, 1.0, 2.0]))
    assert not math.isnan(criterion(torch.randn(3, 5), torch.tensor([0, 1, 4], dtype=torch.int32)).item())
