"""Initial centroids (cluster/init.py): paper's k random items and k-means++, seeded."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.init import initial_centers


def _three_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    return centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=g)


@pytest.mark.parametrize("method", ["random", "k-means++"])
def test_same_seed_same_centres_and_centres_are_items(method):
    """Same seed → identical centres; every centre is one of the items (paper step 1)."""
    x = _three_blobs()
    p = SquaredEuclidean(x)
    a = initial_centers(p, 5, method=method, generator=torch.Generator().manual_seed(7))
    b = initial_centers(p, 5, method=method, generator=torch.Generator().manual_seed(7))
    c = initial_centers(p, 5, method=method, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(any(torch.equal(row, item) for item in x) for row in a)
    if method == "random":
        assert len({tuple(r.tolist()) for r in a}) == 5  # distinct items


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plusplus_picks_one_centre_per_far_blob(seed):
    """Three blobs 100 apart with spread 0.1: D² sampling puts one centre in each (the chance of
    a second pick in the same blob is below 1e-5 per draw)."""
    x = _three_blobs()
    centres = initial_centers(SquaredEuclidean(x), 3, method="k-means++",
                              generator=torch.Generator().manual_seed(seed))
    blob = (centres / 50).round().clamp(0, 1)
    assert len({tuple(b.tolist()) for b in blob}) == 3


def test_kmeans_plusplus_with_too_few_distinct_items():
    """More classes than distinct items: a ValueError says so instead of a division by zero."""
    x = torch.zeros(10, 2)
    x[5:] = 1.0
    with pytest.raises(ValueError, match="only 2 distinct items"):
        initial_centers(SquaredEuclidean(x), 3, method="k-means++",
                        generator=torch.Generator().manual_seed(0))
