"""Size rules of cluster/penalties.py: hand-computed scores, autograd = analytic, EQK sizes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ackmeans_torch.cluster.penalties import (
    AutogradPenalty,
    EntropyPenalty,
    EqualSize,
    NoPenalty,
    QuadraticPenalty,
    SpiderFactor,
    sizes_without_self,
)

CONFIGS = Path(__file__).resolve().parents[1] / "ackmeans_torch" / "configs" / "objective"


class AutogradQuadratic(AutogradPenalty):
    """R = λ‖s‖² written in torch (the few lines a researcher adds), for comparison."""

    def __init__(self, *, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def penalty(self, s, *, d_c, n_items):
        two_lam = self.beta * d_c / (n_items / s.shape[-1])
        return two_lam / 2 * (s**2).sum(-1)


def test_sizes_without_self_subtracts_own_class_only():
    """s′ = sizes minus one at the item's class; an unassigned item (-1) sees the sizes as is."""
    sizes = torch.tensor([3, 1, 2])
    s = sizes_without_self(sizes, torch.tensor([0, 2, -1]))
    assert s.tolist() == [[2, 1, 2], [3, 1, 1], [3, 1, 2]]


def test_quadratic_scores_hand_computed():
    """ACK: n=6, k=3, β=0.5, d_c=3 → 2λ = 0.5·3/2 = 0.75; scores = d + 0.75·s′ (worked by hand)."""
    d = torch.tensor([[1.0, 2.0, 2.5], [4.0, 0.0, 1.0]], dtype=torch.float64)
    sizes = torch.tensor([4, 1, 1])
    current = torch.tensor([0, 1])
    scores = QuadraticPenalty(beta=0.5).scores(d, sizes, current, d_c=3.0, n_items=6)
    # item 0: s′=(3,1,1) → (1+2.25, 2+0.75, 2.5+0.75) = (3.25, 2.75, 3.25): moves to class 1
    # item 1: s′=(4,0,1) → (4+3, 0, 1+0.75)
    expected = torch.tensor([[3.25, 2.75, 3.25], [7.0, 0.0, 1.75]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)
    assert scores.argmin(1).tolist() == [1, 1]
    assert QuadraticPenalty(beta=0.5).strength(d_c=3.0, n_items=6, n_classes=3) == 0.375
    assert float(QuadraticPenalty(beta=0.5).value(sizes, d_c=3.0, n_items=6)) == 0.375 * 18


def test_beta_zero_scores_equal_kmeans_scores():
    """β = 0 adds an exact zero: scores are bit-identical to K-means' (R = 0)."""
    d = torch.rand(7, 4, generator=torch.Generator().manual_seed(0))
    sizes, cur = torch.tensor([1, 2, 3, 1]), torch.tensor([0, 1, 1, 2, 2, 2, 3])
    a = QuadraticPenalty(beta=0.0).scores(d, sizes, cur, d_c=5.0, n_items=7)
    b = NoPenalty().scores(d, sizes, cur, d_c=5.0, n_items=7)
    assert torch.equal(a, b)


def test_autograd_marginal_equals_analytic_quadratic():
    """Quadratic R via autograd gives exactly the analytic marginal 2λs′ (float64)."""
    g = torch.Generator().manual_seed(1)
    s_prime = torch.randint(0, 50, (5, 8), generator=g).to(torch.float64)
    auto = AutogradQuadratic(beta=0.7).marginal(s_prime, d_c=2.5, n_items=200)
    analytic = QuadraticPenalty(beta=0.7).marginal(s_prime, d_c=2.5, n_items=200)
    torch.testing.assert_close(auto, analytic, rtol=1e-12, atol=1e-12)


def test_entropy_marginal_matches_closed_form():
    """Entropy penalty: ∂R/∂s_j = β·d_c·n·(log p_j + 1)/(n + k) with p = (s+1)/(n+k)."""
    s = torch.tensor([[0.0, 3.0, 7.0]], dtype=torch.float64)
    n, k, beta, d_c = 10, 3, 0.5, 2.0
    p = (s + 1) / (n + k)
    expected = beta * d_c * n * (torch.log(p) + 1) / (n + k)
    got = EntropyPenalty(beta=beta).marginal(s, d_c=d_c, n_items=n)
    torch.testing.assert_close(got, expected)
    assert got.argmin().item() == 0  # the empty class is the cheapest


def test_spider_rule_hand_computed():
    """SPIDER: item in class a (n_a=3, d_a=2) vs b (n_b=1, d_b=3.5): 3/2·2=3 > 1/2·3.5=1.75, so
    it moves; with d_b=7 (1/2·7=3.5 > 3) it stays. A singleton never leaves (score −inf)."""
    sizes = torch.tensor([3, 1])
    rule = SpiderFactor()
    s = rule.scores(torch.tensor([[2.0, 3.5]]), sizes, torch.tensor([0]), d_c=1.0, n_items=4)
    torch.testing.assert_close(s, torch.tensor([[3.0, 1.75]]))
    s = rule.scores(torch.tensor([[2.0, 7.0]]), sizes, torch.tensor([0]), d_c=1.0, n_items=4)
    assert s.argmin(1).item() == 0
    s = rule.scores(torch.tensor([[9.0, 0.1]]), sizes, torch.tensor([1]), d_c=1.0, n_items=4)
    assert s[0, 1] == -math.inf and s.argmin(1).item() == 1
    s = rule.scores(torch.tensor([[9.0, 0.1]]), sizes, torch.tensor([-1]), d_c=1.0, n_items=4)
    torch.testing.assert_close(s, torch.tensor([[9.0 * 3 / 4, 0.1 / 2]]))


def test_eqk_greedy_hand_computed():
    """Greedy by sorted d with capacity ⌊5/2⌋=2 and one extra: pairs in order (0,0)=.1, (1,0)=.2,
    (2,0)=.3 (class 0 takes its extra), (3,0) full → (3,1)=.5, (4,1)=.6."""
    d = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.5], [0.45, 0.6]])
    assert EqualSize(method="greedy").assign(d).tolist() == [0, 0, 0, 1, 1]


def _brute_force_equal(d):
    """Lowest total cost over every labelling with EQK's sizes (⌊n/k⌋, remainder spread)."""
    n, k = d.shape
    base, extra = divmod(n, k)
    best_cost = math.inf
    for labels in itertools.product(range(k), repeat=n):
        sizes = sorted(labels.count(j) for j in range(k))
        if sizes == [base] * (k - extra) + [base + 1] * extra:
            best_cost = min(best_cost, sum(float(d[i, j]) for i, j in enumerate(labels)))
    return best_cost


@pytest.mark.parametrize("seed", range(5))
def test_eqk_exact_is_optimal_and_greedy_feasible(seed):
    """Exact EQK reaches the brute-force optimum over all equal-size labelings (n=7, k=3);
    greedy has legal sizes and cost ≥ the optimum."""
    d = torch.rand(7, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    optimum = _brute_force_equal(d)
    for method in ("exact", "greedy"):
        labels = EqualSize(method=method).assign(d)
        assert sorted(torch.bincount(labels, minlength=3).tolist()) == [2, 2, 3]
        cost = float(d.gather(1, labels[:, None]).sum())
        if method == "exact":
            assert cost == pytest.approx(optimum, abs=1e-12)
        else:
            assert cost >= optimum - 1e-12


def test_bad_penalty_parameters_raise():
    """Negative β and unknown EQK method are rejected with the parameter named."""
    with pytest.raises(ValueError, match="beta=-1"):
        QuadraticPenalty(beta=-1.0)
    with pytest.raises(ValueError, match="method='optimal'"):
        EqualSize(method="optimal")


@pytest.mark.parametrize("name,cls", [("ack", QuadraticPenalty), ("kmeans", NoPenalty),
                                      ("spider", SpiderFactor), ("eqk", EqualSize),
                                      ("entropy", EntropyPenalty)])
def test_objective_configs_instantiate(name, cls):
    """Each configs/objective/*.yaml mirrors one constructor and instantiates."""
    obj = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert type(obj) is cls
