"""k-cliques and m-of-k cliques: exact enumeration against networkx, weights by hand."""

from __future__ import annotations

import statistics

import networkx as nx
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.picking.cliques import _nan_median, find_cliques, member_ji
from ackmeans_torch.picking.graph import build_pick_graph, undirected_edges


def _random_graph(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 350 * k  # about 10 boxes per picker per 180x180 area x 2 micrographs: dense enough for 4-cliques
    pos = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1200
    picker = torch.randint(0, k, (n,), generator=g)
    batch = torch.sort(torch.randint(0, 2, (n,), generator=g)).values
    graph = build_pick_graph(pos, torch.full((n,), 180.0, dtype=torch.float64),
                             torch.rand(n, generator=g, dtype=torch.float64), picker, batch, n_graphs=2)
    return graph, *undirected_edges(graph)


@pytest.mark.parametrize("k,m", [(3, 3), (3, 2), (4, 2), (4, 4), (2, 2)])
def test_cliques_equal_networkx_enumeration(k: int, m: int) -> None:
    """Exact: the vectorised cliques equal networkx's enumeration of all cliques of size m..k
    (with m = k, REPIC's maximal k-cliques), each listed once."""
    graph, e, ji = _random_graph(k, seed=k * 10 + m)
    cl = find_cliques(e, ji, graph.picker, graph.score, graph.batch, n_pickers=k, min_pickers=m)
    G = nx.Graph()
    G.add_edges_from(e.T.tolist())
    ref = {tuple(sorted(c)) for c in nx.enumerate_all_cliques(G) if len(c) >= m}
    mine = [tuple(sorted(x for x in r if x >= 0)) for r in cl.members.tolist()]
    assert len(mine) == len(set(mine)) and set(mine) == ref and len(ref) > 20
    # each member sits in its picker's slot
    present = cl.members >= 0
    assert bool((graph.picker[cl.members.clamp(min=0)] == torch.arange(k))[present].all())


def test_weights_by_hand() -> None:
    """Known answers: with m = k REPIC's weight median JI × median score and confidence the median
    score; with m < k slot means (absent picker = 0): 3-of-3 mean JI × mean score, 2-of-3
    (JI/3) × (sum of 2 scores / 3), so the full clique outweighs each sub-clique; member JI sums."""
    edges = torch.tensor([[0, 0, 1], [1, 2, 2]])
    ji = torch.tensor([0.9, 0.5, 0.6], dtype=torch.float64)
    picker = torch.tensor([0, 1, 2])
    score = torch.tensor([0.2, 0.8, 0.6], dtype=torch.float64)
    batch = torch.zeros(3, dtype=torch.long)
    repic = find_cliques(edges, ji, picker, score, batch, n_pickers=3)
    assert len(repic) == 1 and float(repic.weight[0]) == pytest.approx(0.6 * 0.6)
    assert float(repic.confidence[0]) == pytest.approx(0.6)
    cl = find_cliques(edges, ji, picker, score, batch, n_pickers=3, min_pickers=2)
    by = {tuple(r): i for i, r in enumerate(cl.members.tolist())}
    full, pair = by[(0, 1, 2)], by[(0, 1, -1)]
    assert float(cl.weight[full]) == pytest.approx(2.0 / 3 * 1.6 / 3)
    assert float(cl.weight[pair]) == pytest.approx(0.9 / 3 * 1.0 / 3)
    assert float(cl.confidence[pair]) == pytest.approx(1.0 / 3)
    assert bool((cl.weight[full] >= cl.weight).all())
    torch.testing.assert_close(member_ji(cl)[full], torch.tensor([1.4, 1.5, 1.1], dtype=torch.float64))


def test_nan_median_matches_statistics_median() -> None:
    """Known answer: even counts average the middle two (Python's statistics.median, as REPIC)."""
    rows = [[0.1, 0.4, float("nan"), 0.3], [0.5, float("nan"), float("nan"), float("nan")], [4.0, 1.0, 2.0, 3.0]]
    got = _nan_median(torch.tensor(rows, dtype=torch.float64)).tolist()
    want = [statistics.median([v for v in r if v == v]) for r in rows]
    assert got == pytest.approx(want)


def test_min_pickers_out_of_range() -> None:
    """Bad input: min_pickers outside [2, k]."""
    e = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(InputError, match=r"min_pickers=4 must lie in \[2, 3\]"):
        find_cliques(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                     n_pickers=3, min_pickers=4)
