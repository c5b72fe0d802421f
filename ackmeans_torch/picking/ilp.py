"""Clique selection: maximise the total weight of chosen cliques with every box in at most one
chosen clique (REPIC paper, Online Methods, Eqs. 1-3)::

    maximise Σ_j w_j x_j   subject to   Σ_j A_ij x_j ≤ 1 for every box i,   x_j ∈ {0, 1}

The problem separates over connected components of the clique-conflict graph (cliques sharing a
box). One clique alone is taken when its weight is positive; of two conflicting cliques the heavier.
Larger components are handed to HiGHS together in chunks of up to ``CHUNK_CLIQUES`` cliques (a
block-diagonal problem; one HiGHS call costs milliseconds however small the problem, and a
micrograph has dozens of such components). Each chunk's LP relaxation is solved first: a component
whose LP optimum is integral is optimal for the ILP as well (most are: set packing on these
near-interval overlap graphs is rarely fractional; 173 fractional variables in 100 synthetic
micrographs of 300 boxes per picker). The others go to ``scipy.optimize.milp`` (HiGHS
branch-and-bound; REPIC uses Gurobi or the same scipy call), again chunked; a chunk that does not
end proven optimal is re-solved component by component, each with the time limit and its status
checked. Where HiGHS still stops without a proven optimum, a greedy selection (heaviest first)
improved by swaps (:func:`greedy_improve`, from scratch and from HiGHS's incumbent; the better
is kept) is used and the relative gap to the tighter of HiGHS's dual bound and the LP relaxation
is reported. Components of more than ``LARGE_CLIQUES`` cliques (one dense micrograph can be one
component of 1.6e6 cliques) go to :func:`~ackmeans_torch.picking.packing.solve_large`: LP by
column generation, reduced-cost filtering and milp where that proves the optimum, else local search
through incidence lists with the gap to the Lagrangian LP bound; memory O(C·k), no C × C matrix.
Ties: the input clique order is canonical (see :class:`~ackmeans_torch.picking.cliques.Cliques`);
HiGHS is deterministic for a given input and the greedy orders by (-weight, index).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse.csgraph import connected_components

from ackmeans_torch.errors import InputError
from ackmeans_torch.picking.packing import Packing, local_search, solve_large

#: names of scipy.optimize.milp status codes
MILP_STATUS = {0: "optimal", 1: "time_limit", 2: "infeasible", 3: "unbounded", 4: "error"}
#: most cliques given to one HiGHS call when components are solved together
CHUNK_CLIQUES = 2_000
#: an LP value this close to 0 or 1 counts as integral
LP_TOL = 1e-9
#: components with more cliques go to :func:`~ackmeans_torch.picking.packing.solve_large` (column
#: generation; a full LP on 1.6e6 cliques took 38 s and 1.8 GB, its column-generated one 20 s, 0.6 GB)
LARGE_CLIQUES = 20_000


@dataclass
class Selection:
    """Result of :func:`select_cliques`.

    selected: (C,) bool chosen cliques. component: (C,) int component id. objective: total weight
    chosen. n_trivial: components of 1 or 2 cliques, solved without HiGHS. status: ``component id
    -> "optimal" | "fallback:<milp status>"`` for the components given to HiGHS. gap: component id ->
    relative gap ``(bound - objective)/bound`` for fallback components. seconds: solver wall time.
    """

    selected: np.ndarray
    component: np.ndarray
    objective: float
    n_trivial: int
    status: dict[int, str] = field(default_factory=dict)
    gap: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


def conflict_components(members: np.ndarray, n_nodes: int) -> np.ndarray:
    """Component id of each clique in the graph where cliques sharing a box are joined.
    members: (C, k) int node ids, -1 absent -> (C,) int."""
    C = members.shape[0]
    if C == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols = np.nonzero(members >= 0)
    # Bipartite clique-box graph: cliques 0..C-1, boxes C..C+n-1.
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, C + members[rows, cols])), shape=(C + n_nodes, C + n_nodes))
    _, labels = connected_components(adj, directed=False)
    _, comp = np.unique(labels[:C], return_inverse=True)
    return comp


def incidence(members: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Box × clique incidence A (rows: the distinct boxes used, in ascending id) and those ids."""
    rows, cols = np.nonzero(members >= 0)
    ids, r = np.unique(members[rows, cols], return_inverse=True)
    return sp.csr_matrix((np.ones(len(rows)), (r, rows)), shape=(len(ids), members.shape[0])), ids


def greedy_improve(weights: np.ndarray, A: sp.csr_matrix, start: np.ndarray | None = None) -> np.ndarray:
    """A feasible selection by greedy (heaviest first, ties by index) and exchange moves, evaluated
    through box -> clique incidence lists (:mod:`.packing`; no clique × clique matrix).

    weights: (C,); A: (boxes, C) 0/1 incidence; start: optional feasible (C,) bool to improve.
    Ends at a local optimum of the two exchanges (one in / its blockers out; one out / the cliques
    it alone blocked in).
    """
    return local_search(np.asarray(weights, dtype=np.float64), Packing.from_incidence(A), start)


def _solve_lp(w: np.ndarray, A: sp.csr_matrix, time_limit: float) -> np.ndarray | None:
    """The LP relaxation (HiGHS dual simplex); None unless solved to optimality."""
    res = linprog(-w, A_ub=A, b_ub=np.ones(A.shape[0]), bounds=(0, 1), method="highs-ds",
                  options={"presolve": False, "time_limit": float(time_limit)})
    return res.x if res.status == 0 else None


def _solve_milp(w: np.ndarray, A: sp.csr_matrix, time_limit: float, *,
                fallback: bool) -> tuple[np.ndarray, str, float | None]:
    """HiGHS on one problem: (selection, status, upper bound or None when optimal). Without
    ``fallback`` a non-optimal run returns at once (the caller splits the problem)."""
    C = len(w)
    # mip_rel_gap ~0: HiGHS's default stops 1e-4 short of the optimum. Presolve off: on these
    # set-packing problems it costs more than it saves (20k cliques: 0.36 s without, 0.99 s with).
    res = milp(c=-w, constraints=LinearConstraint(A, -np.inf, 1.0), integrality=np.ones(C),
               bounds=Bounds(0.0, 1.0),
               options={"time_limit": float(time_limit), "mip_rel_gap": 1e-9, "presolve": False})
    status = MILP_STATUS.get(res.status, "error")
    x = None if res.x is None else res.x > 0.5
    if status == "optimal" and x is not None:
        return x, status, None
    if not fallback:
        return np.zeros(C, dtype=bool), status, None
    # Upper bound: the tighter of HiGHS's dual bound and the LP relaxation (when either exists).
    bounds = [float(w[w > 0].sum())]
    dual = getattr(res, "mip_dual_bound", None)
    if dual is not None and np.isfinite(dual):
        bounds.append(-float(dual))
    # The LP is far cheaper than the ILP; give it at least 10 s so the reported gap is informative.
    lp = _solve_lp(w, A, max(time_limit, 10.0))
    if lp is not None:
        bounds.append(float(w @ lp))
    candidates = [greedy_improve(w, A)]
    if x is not None and bool((A @ x <= 1).all()):
        candidates.append(greedy_improve(w, A, start=x))
    chosen = max(candidates, key=lambda c: float(w[c].sum()))
    return chosen, f"fallback:{status}", min(bounds)


def select_cliques(members: np.ndarray, weights: np.ndarray, *, n_nodes: int, time_limit: float = 10.0) -> Selection:
    """Solve the clique-selection ILP per conflict component.

    members: (C, k) int global box ids (-1 absent); weights: (C,) float; n_nodes: number of boxes;
    time_limit: seconds per component given to HiGHS.
    """
    if not time_limit > 0:
        raise InputError(f"time_limit={time_limit} s must be > 0")
    t0 = time.perf_counter()
    C = members.shape[0]
    weights = np.asarray(weights, dtype=np.float64)
    comp = conflict_components(members, n_nodes)
    selected = np.zeros(C, dtype=bool)
    status: dict[int, str] = {}
    gap: dict[int, float] = {}
    if C == 0:
        return Selection(selected, comp, 0.0, 0, status, gap, time.perf_counter() - t0)
    sizes = np.bincount(comp)
    single = sizes[comp] == 1
    selected[single] = weights[single] > 0
    # Two conflicting cliques: the heavier (the earlier one on a tie).
    pair_idx = np.flatnonzero(sizes[comp] == 2)
    if len(pair_idx):
        pairs = pair_idx[np.argsort(comp[pair_idx], kind="stable")].reshape(-1, 2)
        first_wins = weights[pairs[:, 0]] >= weights[pairs[:, 1]]
        win = np.where(first_wins, pairs[:, 0], pairs[:, 1])
        selected[win] = weights[win] > 0
    order = np.argsort(comp, kind="stable")
    bounds_ = np.concatenate([[0], np.cumsum(sizes)])
    large = np.flatnonzero(sizes > LARGE_CLIQUES)
    for c in large:
        idx = order[bounds_[c]:bounds_[c + 1]]
        chosen, st, upper = solve_large(weights[idx], members[idx], time_limit)
        selected[idx] = chosen
        status[int(c)] = st
        if upper is not None:
            obj = float(weights[idx][chosen].sum())
            gap[int(c)] = max(upper - obj, 0.0) / upper if upper > 0 else 0.0
    big = np.flatnonzero((sizes >= 3) & (sizes <= LARGE_CLIQUES))
    chunk_of = np.cumsum(sizes[big]) // CHUNK_CLIQUES
    members_of = lambda c: order[bounds_[c]:bounds_[c + 1]]  # noqa: E731
    hard: list[int] = []
    for chunk in np.unique(chunk_of):
        comps = big[chunk_of == chunk]
        idx = np.concatenate([members_of(c) for c in comps])
        A, _ = incidence(members[idx])
        x = _solve_lp(weights[idx], A, time_limit)
        if x is None:
            hard.extend(comps.tolist())
            continue
        fractional = np.unique(comp[idx][(x > LP_TOL) & (x < 1 - LP_TOL)])
        done = np.isin(comp[idx], fractional, invert=True)
        selected[idx[done]] = x[done] > 0.5
        status.update({int(c): "optimal" for c in np.setdiff1d(comps, fractional)})
        hard.extend(fractional.tolist())
    hard_arr = np.asarray(hard, dtype=np.int64)
    hard_chunk = np.cumsum(sizes[hard_arr]) // CHUNK_CLIQUES
    for chunk in np.unique(hard_chunk):
        comps = hard_arr[hard_chunk == chunk]
        idx = np.concatenate([members_of(c) for c in comps])
        chosen, st, upper = _solve_milp(weights[idx], incidence(members[idx])[0], time_limit,
                                        fallback=len(comps) == 1)
        # A chunk of several components that did not finish: one component at a time, with fallback.
        parts = [(comps, idx, chosen, st, upper)] if st == "optimal" or len(comps) == 1 else [
            ([c], members_of(c), *_solve_milp(weights[members_of(c)], incidence(members[members_of(c)])[0],
                                              time_limit, fallback=True)) for c in comps]
        for cs, i, ch, st, upper in parts:
            selected[i] = ch
            status.update({int(c): st for c in cs})
            if upper is not None:
                obj = float(weights[i][ch].sum())
                gap[int(cs[0])] = (upper - obj) / upper if upper > 0 else 0.0
    n_trivial = int((sizes <= 2).sum())
    return Selection(selected, comp, float(weights[selected].sum()), n_trivial, status, gap,
                     time.perf_counter() - t0)
