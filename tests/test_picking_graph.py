"""Overlap graph: JI known answers, the exact distance bound, the cell-list search against brute
force, and the torch-geometric Batch layout."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.picking.graph import (
    box_jaccard, build_pick_graph, jaccard_cutoff, radius_pairs, undirected_edges,
)


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def test_box_jaccard_known_answers() -> None:
    """Known answers: identical boxes JI 1; half shifted along x: 0.5·b² / 1.5·b² = 1/3; disjoint 0;
    a 100-box centred inside a 200-box: 100²/200² = 0.25."""
    c = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0], [90.0, 0.0], [500.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    ji = box_jaccard(c, _t(180, 180, 180, 100), d, _t(180, 180, 180, 200))
    torch.testing.assert_close(ji, _t(1.0, 1 / 3, 0.0, 0.25))


def test_cutoff_is_exact_for_equal_boxes() -> None:
    """Known answer: equal sides s give the bound s(1-t)/(1+t); at that axis offset JI equals t."""
    s, t = 180.0, 0.3
    r = jaccard_cutoff(t, s, s)
    assert r == pytest.approx(s * (1 - t) / (1 + t))
    ji = box_jaccard(torch.zeros(1, 2, dtype=torch.float64), _t(s), torch.tensor([[r, 0.0]], dtype=torch.float64), _t(s))
    assert float(ji) == pytest.approx(t)


def test_cutoff_bounds_every_pair_with_mixed_sizes() -> None:
    """Bound: for random pairs with sides in [60, 300] and thresholds in (0, 0.9), every pair with
    JI ≥ t lies within the L∞ cutoff (so the search never misses an edge)."""
    g = torch.Generator().manual_seed(0)
    for t in (0.05, 0.3, 0.34, 0.5, 0.9):
        n = 200_000
        sa = 60 + 240 * torch.rand(n, generator=g, dtype=torch.float64)
        sb = 60 + 240 * torch.rand(n, generator=g, dtype=torch.float64)
        d = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 600
        ji = box_jaccard(torch.zeros(n, 2, dtype=torch.float64), sa, d, sb)
        r = jaccard_cutoff(t, 60.0, 300.0)
        assert bool((d.abs().amax(1)[ji >= t] <= r).all())


def test_radius_pairs_matches_brute_force() -> None:
    """The cell list returns exactly the brute-force set of same-micrograph pairs within r."""
    g = torch.Generator().manual_seed(1)
    n = 1500
    pos = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2000 - 300
    batch = torch.randint(0, 4, (n,), generator=g)
    r = 57.5
    pairs = radius_pairs(pos, r, batch)
    dist = (pos[:, None] - pos[None]).abs().amax(-1)
    ref = torch.nonzero(torch.triu((dist <= r) & (batch[:, None] == batch[None]), 1))
    assert set(map(tuple, pairs.T.tolist())) == set(map(tuple, ref.tolist()))
    assert pairs.shape[1] == len(ref)


def test_threshold_equality_strict_and_not() -> None:
    """Known answer at equality: boxes of side 130 offset by 70 px along x have JI = 60/200 = 0.3
    exactly; JI ≥ 0.3 keeps the edge, REPIC's strict JI > 0.3 drops it."""
    pos = torch.tensor([[0.0, 0.0], [70.0, 0.0]], dtype=torch.float64)
    box = _t(130, 130)
    args = (pos, box, _t(1, 1), torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert build_pick_graph(*args, n_graphs=1).num_edges == 2  # one undirected edge, both directions
    assert build_pick_graph(*args, n_graphs=1, strict=True).num_edges == 0


def test_batch_layout_and_no_same_picker_edges() -> None:
    """Batch: per-micrograph Data with local edge indices, both directions; boxes of one picker are
    never joined, and micrographs never share edges even at identical coordinates."""
    pos = torch.tensor([[0.0, 0.0], [5.0, 0.0], [2.0, 1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    picker = torch.tensor([0, 0, 1, 0, 1])
    batch = torch.tensor([0, 0, 0, 1, 1])
    g = build_pick_graph(pos, torch.full((5,), 100.0, dtype=torch.float64), torch.ones(5, dtype=torch.float64),
                         picker, batch, n_graphs=2)
    assert g.num_graphs == 2
    e, ji = undirected_edges(g)
    assert sorted(map(tuple, e.T.tolist())) == [(0, 2), (1, 2), (3, 4)]
    first = g.get_example(0)
    assert first.num_nodes == 3 and sorted(map(tuple, first.edge_index.T.tolist())) == [(0, 2), (1, 2), (2, 0), (2, 1)]
    assert bool((ji > 0.9).all())


def test_bad_shapes_and_unsorted_batch() -> None:
    """Bad input: mismatched shapes and an unsorted batch vector give messages saying what to fix."""
    pos = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(InputError, match=r"box has shape \(2,\); expected \(3,\)"):
        build_pick_graph(pos, _t(1, 1), _t(1, 1, 1), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                         n_graphs=1)
    with pytest.raises(InputError, match="sorted ascending"):
        build_pick_graph(pos, _t(1, 1, 1), _t(1, 1, 1), torch.zeros(3, dtype=torch.long), torch.tensor([1, 0, 1]),
                         n_graphs=2)


@pytest.mark.gpu
def test_radius_pairs_cuda_matches_cpu() -> None:
    """Device-agnostic: the same pairs on CUDA as on CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(5000, 2, generator=g, dtype=torch.float64) * 4000
    batch = torch.sort(torch.randint(0, 5, (5000,), generator=g)).values
    a = radius_pairs(pos, 90.0, batch)
    b = radius_pairs(pos.cuda(), 90.0, batch.cuda()).cpu()
    assert set(map(tuple, a.T.tolist())) == set(map(tuple, b.T.tolist()))
