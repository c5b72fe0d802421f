"""Cliques of the k-partite overlap graph, vectorised (REPIC paper, Online Methods "Clique finding").

In a k-partite graph a clique holds at most one box per picker, so every k-clique is maximal and
REPIC's networkx Bron–Kerbosch enumeration (keep maximal cliques of size k) finds exactly the
k-cliques enumerated here. Enumeration runs over picker subsets in increasing order: the cliques
of picker set ``S`` are extended by each picker ``p > max(S)`` by taking the neighbours in ``p`` of
the clique's first member and keeping candidates adjacent to every other member (an edge-key
binary search). Every clique is generated once, all in torch tensor operations.

m-of-k consensus (``min_pickers = m < k``; beyond REPIC, which drops a particle any one picker
missed) keeps cliques on any ``s ≥ m`` pickers. Clique weight (the ILP objective coefficient):

* ``m = k`` (REPIC): ``w_c = median_{edges} JI × median_{members} score``; confidence = median score.
* ``m < k``: every picker is a slot and a picker that found nothing there votes 0, for its score
  and for the JI of each of its pairs::

      w_c = (Σ_{edges e of c} JI_e / C(k, 2)) × (Σ_{members v} score_v / k);  confidence = Σ score / k

  A median cannot serve here: a sub-clique's medians can exceed its full clique's (drop the worst
  member), so the ILP would split three agreeing pickers into a pair and report 2-of-3. With zero
  votes both sums only grow when a member is added, so a full clique always outweighs each of its
  sub-cliques (measured on tests/test_picking_consensus.py's synthetic set: with medians scaled by
  s/k, 9 of 30 particles that all three pickers found came out as pairs; with this weight none
  do), and a 2-of-3 particle with the same JI and scores as a 3-of-3 one weighs 2/9 of it.
  For s = k it is mean × mean instead of REPIC's median × median, which for k = 3 differs only
  by how one outlying member counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

from ackmeans_torch.errors import InputError


@dataclass
class Cliques:
    """Candidate consensus particles of a batch of micrographs.

    members: (C, k) long global node ids, ``-1`` where the picker has no member.
    size: (C,) long number of members s. ji, score: (C,) float64 the JI and score terms of the
    weight (medians for m = k, slot means for m < k, see the module docstring). weight: (C,)
    ``ji·score``. confidence: (C,) ``score``. graph_id: (C,) long micrograph index. edge_ji: (C, k(k-1)/2) float64 JI of
    each picker pair (p < q, itertools.combinations order), NaN where absent. Cliques are sorted by
    (micrograph, members) so every run lists them in one canonical order (ties in the ILP and
    the greedy are broken by this order).
    """

    members: torch.Tensor
    size: torch.Tensor
    ji: torch.Tensor
    score: torch.Tensor
    weight: torch.Tensor
    confidence: torch.Tensor
    graph_id: torch.Tensor
    edge_ji: torch.Tensor

    def __len__(self) -> int:
        return self.members.shape[0]

    def index(self, idx: torch.Tensor) -> Cliques:
        return Cliques(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


class _EdgeLookup:
    """Adjacency queries on an undirected edge list: CSR neighbour ranges by (node, picker) and
    edge-id lookup for node pairs."""

    def __init__(self, edges: torch.Tensor, picker: torch.Tensor, n: int, k: int) -> None:
        both = torch.cat([edges, edges.flip(0)], dim=1)
        eid = torch.arange(edges.shape[1], device=edges.device).repeat(2)
        self.n, self.k = n, k
        # Neighbours sorted by (node, neighbour's picker, neighbour).
        group = both[0] * k + picker[both[1]]
        order = torch.argsort(group * n + both[1])
        self.nbr = both[1, order]
        counts = torch.bincount(group, minlength=n * k)
        self.start = torch.cumsum(counts, 0) - counts
        self.count = counts
        pair_key = both[0] * n + both[1]
        self.keys, korder = torch.sort(pair_key)
        self.key_eid = eid[korder]

    def neighbours(self, nodes: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each node its neighbours in picker p: (owner index into nodes, neighbour id)."""
        g = nodes * self.k + p
        cnt = self.count[g]
        total = int(cnt.sum())
        owner = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), cnt, output_size=total)
        offs = torch.arange(total, device=nodes.device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt,
                                                                                  output_size=total)
        return owner, self.nbr[self.start[g][owner] + offs]

    def edge_id(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Edge id of each pair (a_i, b_i), ``-1`` where there is no edge."""
        key = a * self.n + b
        pos = torch.searchsorted(self.keys, key).clamp(max=max(len(self.keys) - 1, 0))
        if len(self.keys) == 0:
            return torch.full_like(a, -1)
        found = self.keys[pos] == key
        return torch.where(found, self.key_eid[pos], torch.full_like(a, -1))


def _nan_median(values: torch.Tensor) -> torch.Tensor:
    """Row-wise median ignoring NaN (mean of the two middle values for an even count, as Python's
    ``statistics.median`` that REPIC uses). values: (C, S) float64 -> (C,)."""
    v, _ = torch.sort(values, dim=1)  # NaN sorts last
    c = (~torch.isnan(values)).sum(dim=1)
    lo = torch.gather(v, 1, ((c - 1) // 2).clamp(min=0)[:, None])[:, 0]
    hi = torch.gather(v, 1, (c // 2).clamp(max=values.shape[1] - 1)[:, None])[:, 0]
    return (lo + hi) / 2


def find_cliques(edges: torch.Tensor, ji: torch.Tensor, picker: torch.Tensor, score: torch.Tensor,
                 batch: torch.Tensor, *, n_pickers: int, min_pickers: int | None = None) -> Cliques:
    """All cliques on at least ``min_pickers`` (default all ``n_pickers``) pickers.

    edges: (2, E) long global node ids, each undirected edge once, endpoints of different pickers;
    ji: (E,) float64 edge JI; picker: (n,) long in ``[0, k)``; score: (n,) float; batch: (n,) long
    micrograph index. Returns :class:`Cliques` (weights as in the module docstring).
    """
    k = n_pickers
    m = k if min_pickers is None else min_pickers
    if k < 2:
        raise InputError(f"consensus needs at least 2 pickers; got {k}")
    if not 2 <= m <= k:
        raise InputError(f"min_pickers={m} must lie in [2, {k}] (the number of pickers)")
    n, dev = picker.shape[0], picker.device
    lookup = _EdgeLookup(edges, picker, n, k)
    found: list[torch.Tensor] = []  # (C_s, k) member tables
    # Level 2: every edge is a clique on its two pickers; stored with members in picker slots.
    level = []
    for p, q in combinations(range(k), 2):
        sel = (picker[edges[0]] == p) & (picker[edges[1]] == q)
        sel_r = (picker[edges[0]] == q) & (picker[edges[1]] == p)
        a = torch.cat([edges[0, sel], edges[1, sel_r]])
        b = torch.cat([edges[1, sel], edges[0, sel_r]])
        level.append(((p, q), torch.stack([a, b], 1)))
    for s in range(2, k + 1):
        if s >= m:
            for subset, mem in level:
                table = torch.full((mem.shape[0], k), -1, dtype=torch.long, device=dev)
                table[:, list(subset)] = mem
                found.append(table)
        if s == k:
            break
        nxt = []
        for subset, mem in level:
            for p in range(subset[-1] + 1, k):
                if mem.shape[0] == 0:
                    nxt.append(((*subset, p), mem.new_zeros(0, s + 1)))
                    continue
                owner, cand = lookup.neighbours(mem[:, 0], p)
                ok = torch.ones_like(cand, dtype=torch.bool)
                for j in range(1, s):
                    ok &= lookup.edge_id(mem[owner, j], cand) >= 0
                nxt.append(((*subset, p), torch.cat([mem[owner[ok]], cand[ok, None]], 1)))
        level = nxt
    members = torch.cat(found) if found else torch.zeros(0, k, dtype=torch.long, device=dev)
    return _score_cliques(members, lookup, ji, score, batch, k, slot_mean=m < k)


def _score_cliques(members: torch.Tensor, lookup: _EdgeLookup, ji: torch.Tensor, score: torch.Tensor,
                   batch: torch.Tensor, k: int, *, slot_mean: bool) -> Cliques:
    C = members.shape[0]
    present = members >= 0
    size = present.sum(1)
    safe = members.clamp(min=0)
    gid = batch[safe[torch.arange(C, device=members.device), present.long().argmax(1)]] if C else \
        torch.zeros(0, dtype=torch.long, device=members.device)
    # Canonical order: micrograph, then member ids (absent = -1 first).
    key_cols = [gid, *members.T.flip(0)] if C else []
    order = torch.arange(C, device=members.device)
    for col in reversed(key_cols):
        order = order[torch.argsort(col[order], stable=True)]
    members, present, size, safe, gid = members[order], present[order], size[order], safe[order], gid[order]
    pairs = list(combinations(range(k), 2))
    edge_ji = torch.full((C, len(pairs)), float("nan"), dtype=torch.float64, device=members.device)
    for col, (p, q) in enumerate(pairs):
        both = present[:, p] & present[:, q]
        eid = lookup.edge_id(safe[both, p], safe[both, q])
        edge_ji[both, col] = ji[eid].double()
    sc = torch.where(present, score[safe].double(), torch.full_like(safe, float("nan"), dtype=torch.float64))
    if slot_mean:
        ji_term, score_term = edge_ji.nan_to_num(0.0).mean(1), sc.nan_to_num(0.0).mean(1)
    else:
        ji_term, score_term = _nan_median(edge_ji), _nan_median(sc)
    return Cliques(members=members, size=size, ji=ji_term, score=score_term, weight=ji_term * score_term,
                   confidence=score_term, graph_id=gid, edge_ji=edge_ji)


def member_ji(cliques: Cliques) -> torch.Tensor:
    """(C, k) summed JI of each member to the clique's other members (NaN for absent members);
    REPIC's representative is the member with the largest value (its weighted degree)."""
    k = cliques.members.shape[1]
    present = cliques.members >= 0
    total = torch.zeros(cliques.members.shape, dtype=torch.float64, device=present.device)
    for col, (p, q) in enumerate(combinations(range(k), 2)):
        v = cliques.edge_ji[:, col].nan_to_num(0.0)
        total[:, p] += v
        total[:, q] += v
    return torch.where(present, total, torch.full_like(total, float("nan")))
