"""Clique selection: optimal against brute force, the HiGHS path, the fallback and its gap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.picking.ilp import greedy_improve, incidence, select_cliques


def _brute(members: np.ndarray, w: np.ndarray, n: int) -> float:
    best = 0.0
    for mask in itertools.product([False, True], repeat=len(w)):
        m = np.array(mask)
        if m.any() and np.bincount(members[m].ravel(), minlength=n).max() > 1:
            continue
        best = max(best, float(w[m].sum()))
    return best


def test_optimum_equals_brute_force() -> None:
    """Exact: on 40 random instances (up to 14 cliques: trivial and HiGHS components) the objective
    equals the brute-force optimum and no box is used twice."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        C, n = int(rng.integers(1, 15)), 12
        members = np.stack([rng.choice(n, 3, replace=False) for _ in range(C)])
        w = rng.random(C)
        sel = select_cliques(members, w, n_nodes=n)
        assert sel.objective == pytest.approx(_brute(members, w, n))
        assert np.bincount(members[sel.selected].ravel(), minlength=n).max(initial=0) <= 1


def test_highs_path_with_absent_members() -> None:
    """Exact through HiGHS: 2-member cliques (-1 slots) and zero weights are handled; every
    component given to HiGHS reports 'optimal'."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        C, n = 12, 10
        members = np.stack([rng.choice(n, 3, replace=False) for _ in range(C)])
        members[rng.random(C) < 0.4, 2] = -1
        w = np.where(rng.random(C) < 0.2, 0.0, rng.random(C))
        sel = select_cliques(members, w, n_nodes=n)
        assert sel.objective == pytest.approx(_brute_absent(members, w, n))
        assert all(s == "optimal" for s in sel.status.values())
        assert not (sel.selected & (w <= 0)).any()


def _brute_absent(members: np.ndarray, w: np.ndarray, n: int) -> float:
    best = 0.0
    for mask in itertools.product([False, True], repeat=len(w)):
        m = np.array(mask)
        used = members[m].ravel()
        used = used[used >= 0]
        if len(used) and np.bincount(used, minlength=n).max() > 1:
            continue
        best = max(best, float(w[m].sum()))
    return best


def test_fallback_on_time_limit_reports_gap() -> None:
    """Fallback: a dense 3000-clique component with a 10 ms limit stops HiGHS early; the result is
    feasible, labelled 'fallback:time_limit', and its gap is in [0, 1) and consistent with the
    reported objective and a valid upper bound (the LP relaxation ≥ objective)."""
    rng = np.random.default_rng(2)
    C, n = 3000, 1500
    members = np.stack([rng.choice(n, 3, replace=False) for _ in range(C)])
    w = rng.random(C)
    sel = select_cliques(members, w, n_nodes=n, time_limit=0.01)
    assert list(sel.status.values()) == ["fallback:time_limit"]
    gap = next(iter(sel.gap.values()))
    assert 0.0 <= gap < 1.0
    assert np.bincount(members[sel.selected].ravel(), minlength=n).max() <= 1
    A, _ = incidence(members)
    greedy = greedy_improve(w, A)
    assert sel.objective >= w[greedy].sum() - 1e-9


def test_greedy_improve_swaps_out_a_heavy_blocker() -> None:
    """Known answer: greedy takes the heaviest clique (1.0), which blocks two cliques of 0.6 each;
    the swap step replaces it by both (1.2 = the optimum)."""
    members = np.array([[0, 1, 2], [0, 3, 4], [1, 5, 6]])
    w = np.array([1.0, 0.6, 0.6])
    A, _ = incidence(members)
    assert greedy_improve(w, A).tolist() == [False, True, True]


def test_ties_are_deterministic() -> None:
    """Determinism: two conflicting equal-weight cliques resolve to the earlier one every time."""
    members = np.array([[0, 1, 2], [0, 3, 4]])
    for _ in range(3):
        assert select_cliques(members, np.array([0.5, 0.5]), n_nodes=5).selected.tolist() == [True, False]


def test_bad_time_limit() -> None:
    """Bad input: a non-positive time limit."""
    with pytest.raises(InputError, match="time_limit=0 s must be > 0"):
        select_cliques(np.zeros((0, 3), dtype=int), np.zeros(0), n_nodes=0, time_limit=0)
