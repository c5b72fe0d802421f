"""Soft assignment (cluster/soft.py): τ → 0 gives the hard rule; gradients reach centroids and β."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.penalties import EntropyPenalty, QuadraticPenalty
from ackmeans_torch.cluster.soft import soft_assignment


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    centers = torch.randn(4, 3, generator=g, dtype=torch.float64)
    sizes = torch.tensor([20, 10, 6, 4])
    current = torch.randint(0, 4, (40,), generator=g)
    current[:4] = torch.arange(4)
    return x, centers, sizes, current


@pytest.mark.parametrize("rule", [QuadraticPenalty(beta=0.5), EntropyPenalty(beta=0.5)])
def test_small_tau_gives_hard_assignment(rule):
    """At τ = 1e-6·d_c every row is one-hot (≥ 1 − 1e-6) on the hard rule's argmin."""
    x, centers, sizes, current = _problem()
    d = SquaredEuclidean(x).dissimilarity(torch.arange(40), centers)
    hard = rule.scores(d, sizes, current, d_c=2.0, n_items=40).argmin(1)
    q = soft_assignment(d, sizes, rule, tau=2e-6, d_c=2.0, n_items=40, current=current)
    assert torch.equal(q.argmax(1), hard)
    assert float(q.detach().max(1).values.min()) >= 1 - 1e-6
    torch.testing.assert_close(q.sum(1), torch.ones(40, dtype=torch.float64))


@pytest.mark.parametrize("rule_cls", [QuadraticPenalty, EntropyPenalty])
def test_gradients_reach_centroids_and_penalty_parameter(rule_cls):
    """A loss on soft assignments back-propagates finite, non-zero gradients to the centroids and
    to β (a nn.Parameter), through the analytic and the autograd marginal alike."""
    x, centers, sizes, current = _problem()
    centers.requires_grad_(True)
    beta = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    rule = rule_cls(beta=beta)
    assert any(p is beta for p in rule.parameters())
    d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    q = soft_assignment(d, sizes, rule, tau=1.0, d_c=2.0, n_items=40, current=current)
    loss = (q * d).sum() + ((q.sum(0) - 10.0) ** 2).sum()
    loss.backward()
    assert torch.isfinite(centers.grad).all() and centers.grad.abs().sum() > 0
    assert torch.isfinite(beta.grad) and beta.grad != 0


def test_bad_tau_rejected():
    """τ ≤ 0 is rejected with a message naming tau."""
    x, centers, sizes, current = _problem()
    d = torch.zeros(40, 4)
    with pytest.raises(ValueError, match="tau=0"):
        soft_assignment(d, sizes, QuadraticPenalty(), tau=0, d_c=1.0, n_items=40)
