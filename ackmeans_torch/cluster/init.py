"""Initial centroids (paper, pseudocode step 1) and k-means++.

Both draw from a CPU ``torch.Generator`` and address items by global index, so the same seed gives
the same centroids on any device and on every process of a distributed run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.cluster.engine import Dissimilarity, Reduce, Shard, identity
from ackmeans_torch.errors import InputError

__all__ = ["init_random_items", "init_kmeans_plusplus", "initial_centers", "INIT_METHODS"]

INIT_METHODS = ("random", "k-means++")


def init_random_items(provider: Dissimilarity, n_classes: int, *,
                      generator: torch.Generator) -> Tensor:
    """k distinct items drawn uniformly without replacement (the paper's step 1) → (K, *F)."""
    index = torch.randperm(provider.n_items, generator=generator)[:n_classes]
    return provider.items(index).clone()


def init_kmeans_plusplus(provider: Dissimilarity, n_classes: int, *, generator: torch.Generator,
                         chunk_size: int = 4096, shard: Shard = identity,
                         reduce: Reduce = identity) -> Tensor:
    """k-means++ (Arthur & Vassilvitskii 2007): first centroid uniform, each next one drawn with
    probability ∝ D(x) = min over chosen centroids of the provider's dissimilarity → (K, *F).

    (For the squared Euclidean provider D is the usual D².) One pass over the data per centroid;
    processes each fill their shard of the N-vector D and sum it with ``reduce``. Sampling uses an
    inverse-CDF draw (``torch.multinomial`` is limited to 2**24 categories).
    """
    n = provider.n_items
    first = torch.randint(n, (1,), generator=generator)
    centers = provider.items(first).clone()
    nearest = None
    for _ in range(1, n_classes):
        newest = centers[-1:]
        dist = torch.zeros(n, dtype=torch.float64)
        for start in range(0, n, chunk_size):
            idx = shard(torch.arange(start, min(n, start + chunk_size)))
            if len(idx):
                dist[idx] = provider.dissimilarity(idx, newest)[:, 0].to("cpu", torch.float64)
        dist = reduce({"d": dist})["d"]
        nearest = dist if nearest is None else torch.minimum(nearest, dist)
        cdf = torch.cumsum(nearest, 0)
        if not float(cdf[-1]) > 0:
            raise InputError(f"k-means++ found only {len(centers)} distinct items; "
                             f"lower n_classes={n_classes} or use init='random'")
        u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
        pick = torch.searchsorted(cdf, u, right=True).clamp_max(n - 1)
        centers = torch.cat([centers, provider.items(pick.view(1))])
    return centers


def initial_centers(provider: Dissimilarity, n_classes: int, *, method: str,
                    generator: torch.Generator, chunk_size: int = 4096,
                    shard: Shard = identity, reduce: Reduce = identity) -> Tensor:
    """Dispatch on ``method`` in :data:`INIT_METHODS` → (K, *F)."""
    if method == "random":
        return init_random_items(provider, n_classes, generator=generator)
    if method == "k-means++":
        return init_kmeans_plusplus(provider, n_classes, generator=generator,
                                    chunk_size=chunk_size, shard=shard, reduce=reduce)
    raise InputError(f"init={method!r} must be one of {INIT_METHODS} or a (K, ...) tensor")
