"""Set packing on one large conflict component in O(C·k) memory: incidence lists, a vectorised
greedy with local search, and an LP relaxation by column generation with a Lagrangian bound.

Cliques are rows of a (C, k) table of box ids; the box → clique lists are the incidence matrix's
transpose as CSR. Conflicts between cliques are never materialised: two cliques conflict when they
share a box, and every move below is evaluated through a per-box occupancy array ``owner`` (the
chosen clique holding the box, or -1). A C × C conflict matrix (``AᵀA``) has ~C·k·d non-zeros for
d cliques per box: 1.2e9 on a micrograph of 10,000 particles, where the tables here hold 5e6.

* Greedy (heaviest first, ties by index) runs as rounds of local maxima: a clique whose rank is the
  best among the available cliques on each of its boxes is taken; this equals the sequential
  greedy's result, as an edge-free set of local maxima is what the sequential scan takes first.
* Local search repeats two exchanges until neither gains: put one clique in and evict the (≤ k)
  chosen cliques holding its boxes; take one chosen clique out and put in the cliques blocked by
  it alone (packed greedily). Moves with disjoint footprints are applied together, chosen by the
  same local-maximum rule on their gains.
* LP relaxation by column generation: HiGHS on the heaviest few cliques of every box, then the
  cliques of positive reduced cost (``w_c − Σ_{i∈c} y_i`` under the row duals y) are added, until
  none is left or the LP value stalls. Any y ≥ 0 gives the upper bound
  ``Σ_i y_i + Σ_c max(0, w_c − Σ_{i∈c} y_i)`` (Lagrangian), so the bound reported is valid
  whether or not the generation converged.
* Reduced-cost filtering: a clique with reduced cost below ``−(bound − incumbent)`` is in no
  packing better than the incumbent, so the ILP over the remaining cliques, solved to optimality,
  proves the global optimum.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

#: a gain or reduced cost this small (relative to the weights) counts as zero
TOL = 1e-9
#: heaviest cliques per box in the first restricted LP, and cliques per box added per round
LP_SEED_PER_BOX, LP_ADD_PER_BOX = 2, 2
#: most column-generation rounds; on 1.6e6 cliques the LP value settles after 5
LP_ROUNDS = 8
#: column generation stops once the LP value is this close (relative) to the Lagrangian bound:
#: the last rounds on degenerate duals tighten the bound by < 0.1 % at ~6 s each
LP_BOUND_TOL = 1e-3
#: most cliques left after reduced-cost filtering that are given to an exact milp
EXACT_CLIQUES = 60_000
#: most local-search rounds (each round applies many disjoint moves)
SEARCH_ROUNDS = 200


class Packing:
    """Incidence lists of a clique table. members: (C, k) box ids, -1 absent.

    loc: (C, k) local box ids, absent slots point at a sentinel box ``n_boxes`` that is never
    occupied. box_ptr/box_cliques: CSR of box -> cliques (the incidence matrix's transpose).
    """

    def __init__(self, members: np.ndarray) -> None:
        present = members >= 0
        ids, inv = np.unique(members[present], return_inverse=True)
        self.n_boxes = B = len(ids)
        self.loc = np.full(members.shape, B, dtype=np.int64)
        self.loc[present] = inv
        C, k = members.shape
        flat = self.loc.ravel()
        keep = np.flatnonzero(flat < B)
        order = np.argsort(flat[keep], kind="stable")
        self.box_cliques = (keep // k)[order]
        self.box_ptr = np.concatenate([[0], np.cumsum(np.bincount(flat[keep], minlength=B))])

    @classmethod
    def from_incidence(cls, A: sp.spmatrix) -> Packing:
        """From a (boxes, C) 0/1 incidence matrix."""
        At = sp.csr_matrix(A.T)
        k = int(np.diff(At.indptr).max(initial=1))
        members = np.full((At.shape[0], k), -1, dtype=np.int64)
        rows = np.repeat(np.arange(At.shape[0]), np.diff(At.indptr))
        slot = np.arange(len(rows)) - At.indptr[rows]
        members[rows, slot] = At.indices
        return cls(members)

    def matrix(self, cols: np.ndarray) -> sp.csr_matrix:
        """(boxes, len(cols)) incidence of the cliques ``cols``."""
        sub = self.loc[cols]
        r, c = np.nonzero(sub < self.n_boxes)
        return sp.csr_matrix((np.ones(len(r)), (sub[r, c], r)), shape=(self.n_boxes, len(cols)))

    def row_sum(self, y: np.ndarray) -> np.ndarray:
        """Σ_{i∈c} y_i for every clique (y: (boxes,))."""
        return np.append(y, 0.0)[self.loc].sum(1)


def _local_max(rank: np.ndarray, entry_move: np.ndarray, entry_box: np.ndarray, n_boxes: int) -> np.ndarray:
    """Moves whose rank (lower is better, distinct) is the best on each box of their footprint;
    such moves share no box. rank: (M,); entries (move, box) list the footprints -> (M,) bool."""
    best = np.full(n_boxes + 1, np.iinfo(np.int64).max)
    np.minimum.at(best, entry_box, rank[entry_move])
    best[n_boxes] = np.iinfo(np.int64).max  # the sentinel box blocks nothing
    lose = np.zeros(len(rank), dtype=bool)
    lose[entry_move[best[entry_box] < rank[entry_move]]] = True
    return ~lose


def _ranks(key: np.ndarray) -> np.ndarray:
    """Rank of each element by (-key, index): 0 for the largest key."""
    r = np.empty(len(key), dtype=np.int64)
    r[np.lexsort((np.arange(len(key)), -key))] = np.arange(len(key))
    return r


class _State:
    """A feasible packing with per-box occupancy."""

    def __init__(self, P: Packing, w: np.ndarray, chosen: np.ndarray) -> None:
        self.P, self.w = P, w
        self.chosen = chosen.copy()
        self.owner = np.full(P.n_boxes + 1, -1, dtype=np.int64)
        idx = np.flatnonzero(self.chosen)
        self.owner[P.loc[idx]] = idx[:, None]
        self.owner[P.n_boxes] = -1
        self.rank = _ranks(w)

    def set(self, add: np.ndarray, remove: np.ndarray) -> None:
        loc = self.P.loc
        self.chosen[remove] = False
        self.owner[loc[remove]] = -1
        self.chosen[add] = True
        self.owner[loc[add]] = add[:, None]
        self.owner[self.P.n_boxes] = -1

    def free(self, cand: np.ndarray) -> np.ndarray:
        return cand[(self.owner[self.P.loc[cand]] < 0).all(1)]

    def fill(self, cand: np.ndarray | None = None) -> None:
        """Greedy, heaviest first, over the positive cliques ``cand`` (default all) whose boxes are free."""
        P, k = self.P, self.P.loc.shape[1]
        cand = np.flatnonzero((self.w > 0) & ~self.chosen) if cand is None else cand
        cand = self.free(cand)
        while len(cand):
            win = _local_max(self.rank[cand], np.repeat(np.arange(len(cand)), k), P.loc[cand].ravel(), P.n_boxes)
            self.set(cand[win], np.zeros(0, dtype=np.int64))
            cand = self.free(cand[~win])

    def evict_moves(self) -> bool:
        """Put clique j in, evicting the chosen cliques on its boxes, where w_j exceeds their sum."""
        P, w = self.P, self.w
        cand = np.flatnonzero((w > 0) & ~self.chosen)
        own = np.sort(self.owner[P.loc[cand]], axis=1)
        first = own >= 0
        first[:, 1:] &= own[:, 1:] != own[:, :-1]
        gain = w[cand] - np.where(first, w[own.clip(0)], 0.0).sum(1)
        good = gain > TOL * np.maximum(w[cand], 1e-300)
        cand, own, first, gain = cand[good], own[good], first[good], gain[good]
        if not len(cand):
            return False
        # Footprint: j's boxes and the boxes of every clique it evicts.
        ev = np.where(own >= 0, own, cand[:, None])
        foot = np.concatenate([P.loc[cand], P.loc[ev].reshape(len(cand), -1)], axis=1)
        win = _local_max(_ranks(gain), np.repeat(np.arange(len(cand)), foot.shape[1]), foot.ravel(), P.n_boxes)
        out = own[win][first[win]]
        freed = P.loc[out].ravel()
        self.set(cand[win], out)
        self.fill(self._cliques_on(freed))
        return True

    def _cliques_on(self, boxes: np.ndarray) -> np.ndarray:
        P = self.P
        boxes = np.unique(boxes[boxes < P.n_boxes])
        if not len(boxes):
            return np.zeros(0, dtype=np.int64)
        lo, hi = P.box_ptr[boxes], P.box_ptr[boxes + 1]
        n = hi - lo
        pos = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
        return np.unique(P.box_cliques[pos])

    def replace_moves(self) -> bool:
        """Take chosen clique c out and put in the cliques blocked by c alone (greedy among them),
        where they weigh more than c."""
        P, w, k = self.P, self.w, self.P.loc.shape[1]
        cand = np.flatnonzero((w > 0) & ~self.chosen)
        own = self.owner[P.loc[cand]]
        mx, mn = own.max(1), np.where(own >= 0, own, np.iinfo(np.int64).max).min(1)
        single = (mx >= 0) & (mx == mn)
        cand, grp = cand[single], mx[single]
        if not len(cand):
            return False
        # Greedy packing inside each group: boxes keyed by (group, box) so groups do not interact.
        _, gk = np.unique(grp, return_inverse=True)
        keys = gk[:, None] * (P.n_boxes + 1) + P.loc[cand]
        ukeys, kinv = np.unique(keys.ravel(), return_inverse=True)
        kinv = kinv.reshape(keys.shape)
        sentinel = np.isin(ukeys % (P.n_boxes + 1), [P.n_boxes])
        left = np.arange(len(cand))
        taken = np.zeros(len(cand), dtype=bool)
        used = np.zeros(len(ukeys) + 1, dtype=bool)
        kinv = np.where(sentinel[kinv], len(ukeys), kinv)
        while len(left):
            win = _local_max(self.rank[cand[left]], np.repeat(np.arange(len(left)), k), kinv[left].ravel(), len(ukeys))
            taken[left[win]] = True
            used[kinv[left[win]]] = True
            used[len(ukeys)] = False
            left = left[~win]
            left = left[~used[kinv[left]].any(1)]
        cand, grp = cand[taken], grp[taken]
        gsum = np.bincount(grp, weights=w[cand], minlength=len(w))
        groups = np.unique(grp)
        gain = gsum[groups] - w[groups]
        good = gain > TOL * np.maximum(w[groups], 1e-300)
        groups, gain = groups[good], gain[good]
        if not len(groups):
            return False
        # A move's footprint: its group's boxes (the packed cliques use free boxes and c's boxes).
        gid = np.full(len(w), -1, dtype=np.int64)
        gid[groups] = np.arange(len(groups))
        sel = gid[grp] >= 0
        em = np.concatenate([np.repeat(gid[grp[sel]], k), np.repeat(np.arange(len(groups)), k)])
        eb = np.concatenate([P.loc[cand[sel]].ravel(), P.loc[groups].ravel()])
        win = _local_max(_ranks(gain), em, eb, P.n_boxes)
        out = groups[win]
        add = cand[sel][win[gid[grp[sel]]]]
        self.set(add, out)
        self.fill(self._cliques_on(P.loc[out].ravel()))
        return True

    def search(self, deadline: float = np.inf) -> np.ndarray:
        self.fill()
        for _ in range(SEARCH_ROUNDS):
            if time.perf_counter() > deadline:
                break
            a = self.evict_moves()
            b = self.replace_moves()
            if not (a or b):
                break
        return self.chosen


def local_search(w: np.ndarray, P: Packing, start: np.ndarray | None = None,
                 deadline: float = np.inf) -> np.ndarray:
    """A feasible (C,) bool selection: greedy fill of ``start`` (default empty) and local search."""
    start = np.zeros(len(w), dtype=bool) if start is None else start
    return _State(P, w, start).search(deadline)


def lagrangian_bound(w: np.ndarray, P: Packing, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(upper bound, reduced costs) for box prices y ≥ 0."""
    red = w - P.row_sum(y)
    return float(y.sum() + np.clip(red, 0, None).sum()), red


def _top_per_box(P: Packing, score: np.ndarray, cols: np.ndarray, q: int) -> np.ndarray:
    """The q highest-scoring cliques of ``cols`` on every box."""
    k = P.loc.shape[1]
    c = np.repeat(cols, k)
    b = P.loc[cols].ravel()
    keep = b < P.n_boxes
    c, b = c[keep], b[keep]
    o = np.lexsort((c, -score[c], b))
    c, b = c[o], b[o]
    rank = np.arange(len(b)) - np.searchsorted(b, b, side="left")
    return np.unique(c[rank < q])


def lp_column_generation(w: np.ndarray, P: Packing, time_limit: float,
                         start: np.ndarray | None = None) -> tuple[np.ndarray | None, float, np.ndarray, bool]:
    """LP relaxation by column generation: (x (C,) or None, best upper bound, the prices y giving
    it, LP proven optimal). Rounds stop after ``2 × time_limit`` s (each HiGHS call also has the limit)."""
    deadline = time.perf_counter() + 2 * time_limit
    C = len(w)
    pos = np.flatnonzero(w > 0)
    cols = _top_per_box(P, w, pos, LP_SEED_PER_BOX)
    if start is not None:
        cols = np.union1d(cols, np.flatnonzero(start))
    bound, x_best, last = float(w[pos].sum()), None, -np.inf
    y_best = np.zeros(P.n_boxes)
    for _ in range(LP_ROUNDS):
        res = linprog(-w[cols], A_ub=P.matrix(cols), b_ub=np.ones(P.n_boxes), bounds=(0, 1), method="highs-ds",
                      options={"presolve": False, "time_limit": float(time_limit)})
        if res.status != 0:
            break
        x_best = np.zeros(C)
        x_best[cols] = res.x
        y = np.clip(-res.ineqlin.marginals, 0, None)
        b, red = lagrangian_bound(w, P, y)
        if b < bound:
            bound, y_best = b, y
        value = -float(res.fun)
        new = red > TOL * np.maximum(w, 1e-300)
        new[cols] = False
        if not new.any() or value >= bound * (1 - 1e-12):
            return x_best, bound, y_best, True
        # Degenerate duals keep pricing columns that do not raise the LP value: stop on a stall.
        if value <= last * (1 + 1e-7) or value >= bound * (1 - LP_BOUND_TOL) or time.perf_counter() > deadline:
            break
        last = value
        cols = np.union1d(cols, _top_per_box(P, red, np.flatnonzero(new), LP_ADD_PER_BOX))
    return x_best, bound, y_best, False


def solve_large(w: np.ndarray, members: np.ndarray, time_limit: float) -> tuple[np.ndarray, str, float | None]:
    """One large component: (selection, status, upper bound or None when proven optimal).

    LP by column generation; its integral part seeds the local search. An integral LP optimum is
    optimal. Otherwise the cliques that survive reduced-cost filtering go to milp when few enough
    (optimal when it finishes); else milp on the LP's support is a heuristic and the gap is reported.
    """
    P = Packing(members)
    x, bound, y, lp_exact = lp_column_generation(w, P, time_limit)
    start = None if x is None else x > 1 - 1e-9
    if x is not None and lp_exact and not ((x > 1e-9) & (x < 1 - 1e-9)).any():
        return start, "optimal", None
    chosen = local_search(w, P, start, time.perf_counter() + time_limit)
    obj = float(w[chosen].sum())
    # Filtering is valid for any prices y >= 0 with their own bound (see the module docstring).
    red = w - P.row_sum(y)
    keep = np.flatnonzero((red >= -(bound - obj) - TOL * max(bound, 1.0)) & (w > 0))
    if len(keep) <= EXACT_CLIQUES:
        sub, st = _milp(w[keep], P.matrix(keep), time_limit)
        if st == "optimal":
            best = chosen.copy()
            if sub is not None and w[keep][sub].sum() > obj:
                best[:] = False
                best[keep[sub]] = True
            return best, "optimal", None
    else:
        # Too many cliques survive to prove anything: milp on the LP's support as a heuristic.
        support = np.flatnonzero(((x > 1e-9) if x is not None else (w > 0)) | chosen)
        sub, st = _milp(w[support], P.matrix(support), time_limit)
        st = "restricted" if st == "optimal" else st
    if sub is not None:
        trial = np.zeros(len(w), dtype=bool)
        trial[(keep if len(keep) <= EXACT_CLIQUES else support)[sub]] = True
        trial = local_search(w, P, trial, time.perf_counter() + time_limit)
        if w[trial].sum() > obj:
            chosen = trial
    return chosen, f"fallback:{st}", bound


def _milp(w: np.ndarray, A: sp.csr_matrix, time_limit: float) -> tuple[np.ndarray | None, str]:
    from ackmeans_torch.picking.ilp import MILP_STATUS

    res = milp(c=-w, constraints=LinearConstraint(A, -np.inf, 1.0), integrality=np.ones(len(w)),
               bounds=Bounds(0.0, 1.0),
               options={"time_limit": float(time_limit), "mip_rel_gap": 1e-9, "presolve": False})
    x = None if res.x is None else res.x > 0.5
    if x is not None and not bool((A @ x <= 1).all()):
        x = None
    return x, MILP_STATUS.get(res.status, "error")
