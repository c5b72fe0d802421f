"""The ACK-means loop (cluster/engine.py): paper pseudocode trace, K-means equivalence, scaling,
balance, EQK sizes, empty classes, and the distributed hooks (2 "processes" == 1)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.cluster.vq import kmeans2

from ackmeans_torch.cluster.engine import (
    ConvergenceWarning,
    SquaredEuclidean,
    _sequential,
    characteristic_dissimilarity,
    fit_clusters,
    identity,
)
from ackmeans_torch.cluster.init import init_random_items
from ackmeans_torch.cluster.penalties import (
    EntropyPenalty, EqualSize, NoPenalty, QuadraticPenalty, SizePenalty, SpiderFactor,
)
from ackmeans_torch.eval.metrics import adjusted_rand_index


def gaussian_mixture(seed, sizes, dim=50, sep=2.0, noise=3.0):
    """Items (N, dim) float64 around len(sizes) random centres, and their true labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g, dtype=torch.float64) * sep
    truth = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return centres[truth] + noise * torch.randn(len(truth), dim, generator=g,
                                                dtype=torch.float64), truth


def run(x, k, rule, *, seed=0, init=None, **kw):
    provider = SquaredEuclidean(x)
    g = torch.Generator().manual_seed(seed)
    centers = init_random_items(provider, k, generator=g) if init is None else init.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_clusters(provider, centers, rule=rule, generator=g, **kw)


def paper_pseudocode(x, init_index, beta, sigma0, max_iter):
    """The paper's ACK-means pseudocode, line by line in plain Python (1-D data, n ≤ 10 so the
    10 random probe items of step 5 are all items and d_c is deterministic)."""
    n, k = len(x), len(init_index)
    mu = [x[i] for i in init_index]                                     # step 1
    dis = lambda i, j: (x[i] - mu[j]) ** 2
    argmin = lambda v: min(range(len(v)), key=lambda j: (v[j], j))

    def update(p):                                                      # steps 3, 13
        for j in range(k):
            members = [x[i] for i in range(n) if p[i] == j]
            if members:
                mu[j] = sum(members) / len(members)

    p = [argmin([dis(i, j) for j in range(k)]) for i in range(n)]        # step 2
    update(p)
    trace = []
    for _ in range(max_iter):                                           # step 4
        t = [max(dis(m, j) for j in range(k)) - min(dis(m, j) for j in range(k))
             for m in range(n)]                                         # step 5
        d_c = sum(t) / n                                                # step 6
        lam = beta * d_c / 2 / (n / k)                                  # step 7
        p_old = list(p)                                                 # step 8
        for i in range(n):                                              # step 9
            s = [sum(1 for m in range(n) if m != i and p[m] == l) for l in range(k)]  # step 10
            p[i] = argmin([dis(i, j) + 2 * lam * s[j] for j in range(k)])  # step 11
        update(p)                                                       # step 13
        sigma = 1 - sum(a == b for a, b in zip(p_old, p)) / n           # step 14
        trace.append((list(p), lam, d_c, sigma))
        if sigma <= sigma0:
            break
    return trace


def test_sequential_run_reproduces_paper_pseudocode_trace():
    """batch_size=1 follows the pseudocode step for step: same labels, λ, d_c and σ in every
    iteration on a traced 1-D example where the size term changes the K-means answer."""
    x = [0.0, 0.3, 0.5, 0.9, 1.2, 1.4, 4.0, 4.4]
    init_index = [0, 6]
    trace = paper_pseudocode(x, init_index, beta=1.0, sigma0=0.0, max_iter=10)
    xt = torch.tensor(x, dtype=torch.float64)[:, None]
    result = run(xt, 2, QuadraticPenalty(beta=1.0), init=xt[init_index], batch_size=1,
                 sigma0=0.0, max_iter=10)
    assert len(result.history) - 1 == len(trace)
    for record, (labels, lam, d_c, sigma) in zip(result.history[1:], trace):
        assert record["lambda_"] == pytest.approx(lam, rel=1e-12)
        assert record["d_c"] == pytest.approx(d_c, rel=1e-12)
        assert record["sigma"] == pytest.approx(sigma)
        assert record["sizes"] == np.bincount(labels, minlength=2).tolist()
    assert result.labels.tolist() == trace[-1][0]
    # K-means' answer is {0..5} vs {6, 7}; the size term moves items to the small class.
    assert trace[-1][0] != [0, 0, 0, 0, 0, 0, 1, 1]


def test_beta_zero_equals_kmeans_and_scipy_lloyd():
    """β = 0 gives the same labels as the K-means rule and as scipy's kmeans2 (Lloyd) from the
    same initial centres; centres agree to 1e-10 (float64)."""
    x, _ = gaussian_mixture(0, [60] * 5, dim=8)
    g = torch.Generator().manual_seed(3)
    init = init_random_items(SquaredEuclidean(x), 5, generator=g)
    ack0 = run(x, 5, QuadraticPenalty(beta=0.0), init=init, batch_size=1, max_iter=100)
    km = run(x, 5, NoPenalty(), init=init, max_iter=100)
    assert ack0.converged and km.converged
    assert torch.equal(ack0.labels, km.labels)
    # kmeans2 runs exactly `iter` Lloyd steps; ours = initial step + n_iter loop steps.
    centres, labels = kmeans2(x.numpy(), init.numpy(), iter=km.n_iter + 1, minit="matrix")
    assert labels.tolist() == km.labels.tolist()
    np.testing.assert_allclose(km.centers.numpy(), centres, atol=1e-10)


def test_large_beta_gives_near_equal_sizes():
    """β = 50 on a 3:1:1 mixture: every class within 2% of n/k."""
    x, _ = gaussian_mixture(1, [300, 100, 100], dim=5, sep=3.0, noise=1.0)
    result = run(x, 3, QuadraticPenalty(beta=50.0), batch_size=1, max_iter=50)
    sizes = result.sizes.to(torch.float64)
    assert (sizes - 500 / 3).abs().max() <= 0.02 * 500 / 3, sizes


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_ack_labels_invariant_to_data_scale(scale):
    """Scaling the data by c scales d and d_c by c²: identical labels and history λ·c^-2."""
    x, _ = gaussian_mixture(2, [80, 50, 40, 30], dim=6, noise=2.0)
    a = run(x, 4, QuadraticPenalty(beta=0.5), batch_size=1, max_iter=30)
    b = run(x * scale, 4, QuadraticPenalty(beta=0.5), batch_size=1, max_iter=30)
    assert torch.equal(a.labels, b.labels)
    assert b.history[-1]["lambda_"] == pytest.approx(a.history[-1]["lambda_"] * scale**2)


def test_ack_prevents_swallowing_without_losing_purity():
    """10 equal-size noisy Gaussian clusters in 50-D, 6 seeds (same init for both rules): K-means
    lets one class swallow another in some seeds (a class ≥ 1.5·n/k); ACK-means (β = 0.5) keeps
    every class within 10% of n/k, never loses more than 0.005 ARI and gains ≥ 0.03 on average."""
    ari_km, ari_ack, max_km = [], [], []
    for seed in range(6):
        x, truth = gaussian_mixture(seed, [200] * 10)
        km = run(x, 10, NoPenalty(), seed=seed, max_iter=100)
        ack = run(x, 10, QuadraticPenalty(beta=0.5), seed=seed, batch_size=32, max_iter=100)
        ari_km.append(adjusted_rand_index(km.labels, truth))
        ari_ack.append(adjusted_rand_index(ack.labels, truth))
        max_km.append(max(km.sizes))
        assert max(ack.sizes) <= 220 and min(ack.sizes) >= 180, ack.sizes
        assert ari_ack[-1] >= ari_km[-1] - 0.005
    assert max(max_km) >= 300
    assert np.mean(ari_ack) >= np.mean(ari_km) + 0.03, (ari_km, ari_ack)


class OneSizeVector(SizePenalty):
    """ACK-means' scores written for one size vector (K,), as a researcher's rule might be:
    without :attr:`SizePenalty.row_sizes` the engine resumes after each moving item."""

    def scores(self, d, sizes, current, *, d_c, n_items):
        s_prime = sizes.double()[None, :] - (current[:, None] == torch.arange(len(sizes))).double()
        return d + (3.0 * d_c / (n_items / len(sizes)) * s_prime).to(d.dtype)


def batch_by_batch(d, cur, lengths, sizes, rule, *, d_c, n_items):
    """The definition: each global batch scored with the sizes that every batch before it
    left."""
    new, sizes, at = torch.empty_like(cur), sizes.clone(), 0
    for length in lengths:
        rows = slice(at, at + length)
        new[rows] = rule.scores(d[rows], sizes, cur[rows], d_c=d_c, n_items=n_items).argmin(1)
        old = cur[rows][cur[rows] >= 0]
        sizes += torch.bincount(new[rows], minlength=len(sizes)) - torch.bincount(
            old, minlength=len(sizes))
        at += length
    return new, sizes


@pytest.mark.parametrize("batching", ["items", "batches", "two ranks"])
@pytest.mark.parametrize("rule", [QuadraticPenalty(beta=3.0), EntropyPenalty(beta=3.0),
                                  SpiderFactor(), OneSizeVector()],
                         ids=["ack", "entropy", "spider", "one-size-vector"])
def test_fast_assignment_paths_equal_batch_by_batch(rule, batching, thread_ranks):
    """Every path of the sequential assignment gives the labels and sizes of scoring one global
    batch at a time: batches of 1 item in one process, batches of 1–6, and batches split
    between two ranks that all-reduce their size changes (the built-in rules score many
    batches at once with guessed sizes; a rule that takes one size vector resumes after each
    batch that moves). 3,000 items, a third starting in a wrong class, some unassigned, and a
    strong size term, so that many items are scored after a size change."""
    g = torch.Generator().manual_seed(3)
    d = torch.rand(3000, 4, generator=g)
    cur = (d.argmin(1) + (torch.rand(3000, generator=g) < 0.33).long()) % 4
    cur[torch.rand(3000, generator=g) < 0.05] = -1
    sizes = torch.bincount(cur[cur >= 0], minlength=4)
    lengths = [1] * 3000 if batching == "items" else []
    while sum(lengths) < 3000:
        lengths.append(min(3000 - sum(lengths), int(torch.randint(1, 7, (), generator=g))))
    args = dict(d_c=0.2, n_items=3000)
    want_labels, want_sizes = batch_by_batch(d, cur, lengths, sizes, rule, **args)
    moved = (want_labels != cur).float().mean()
    assert 0.2 < moved < 0.6, moved  # many moving items
    if batching != "two ranks":
        labels, got = _sequential(d, cur, lengths, sizes, rule, reduce=identity, **args)
        assert torch.equal(labels, want_labels) and torch.equal(got, want_sizes)
        return
    # rank 0 holds the first half (rounded up) of each batch's rows, rank 1 the rest
    starts = np.cumsum([0] + lengths[:-1])
    own = [[torch.arange(a, a + (b + 1) // 2) for a, b in zip(starts, lengths)],
           [torch.arange(a + (b + 1) // 2, a + b) for a, b in zip(starts, lengths)]]

    def work(rank, reduce):
        rows = torch.cat(own[rank])
        return rows, _sequential(d[rows], cur[rows], [len(r) for r in own[rank]], sizes, rule,
                                 reduce=reduce, **args)

    for rows, (labels, got) in thread_ranks(2, work):
        assert torch.equal(labels, want_labels[rows]) and torch.equal(got, want_sizes)


def test_batched_close_to_sequential():
    """Batches of 32 reach the sequential result (ARI ≥ 0.98 between them, Σd within 0.5%; J
    itself also carries λ ∝ d_c, which is noisy: d_c comes from 10 random items per iteration);
    one batch of all items (sizes refreshed once per pass) does not: it oscillates."""
    x, _ = gaussian_mixture(0, [200] * 10)
    seq = run(x, 10, QuadraticPenalty(beta=0.5), batch_size=1, max_iter=100)
    bat = run(x, 10, QuadraticPenalty(beta=0.5), batch_size=32, max_iter=100)
    assert adjusted_rand_index(seq.labels, bat.labels) >= 0.98
    assert bat.inertia == pytest.approx(seq.inertia, rel=0.005)
    full = run(x, 10, QuadraticPenalty(beta=0.5), batch_size=2000, max_iter=20)
    assert not full.converged


def test_eqk_gives_exactly_equal_sizes():
    """EQK-means on 103 items, k=10: seven classes of 10 and three of 11, every iteration."""
    x, _ = gaussian_mixture(4, [50, 30, 23], dim=4)
    for method in ("greedy", "exact"):
        result = run(x, 10, EqualSize(method=method), max_iter=20)
        for record in result.history:
            assert sorted(record["sizes"]) == [10] * 7 + [11] * 3


def test_spider_never_empties_a_class():
    """SPIDER's factor keeps singletons; on a tight+outlier set no class empties."""
    x, _ = gaussian_mixture(5, [100, 5], dim=3, sep=4.0, noise=0.5)
    result = run(x, 6, SpiderFactor(), batch_size=1, max_iter=50)
    assert all(r["n_empty"] == 0 for r in result.history)


def test_empty_class_keeps_centroid_and_warns():
    """K-means with an initial centre far from all data: that class never gets an item; its
    centroid stays as it was (no 0/0 NaN), history counts it and a ConvergenceWarning says so."""
    x, _ = gaussian_mixture(6, [30, 30], dim=2)
    far = torch.full_like(x[0], 1e3)
    init = torch.stack([x[0], far, x[40]])
    with pytest.warns(ConvergenceWarning, match="1 of 3 classes ended empty"):
        result = fit_clusters(SquaredEuclidean(x), init, rule=NoPenalty(),
                              generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.centers).all()
    assert result.history[-1]["n_empty"] == 1
    torch.testing.assert_close(result.centers[1], far)


def test_nan_input_is_reported_not_propagated():
    """A NaN item raises a ValueError naming the batch instead of silently producing NaN."""
    x, _ = gaussian_mixture(7, [20, 20], dim=2)
    x[5, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite dissimilarity"):
        run(x, 2, QuadraticPenalty(beta=0.5), init=x[[0, 30]].nan_to_num())


def test_characteristic_dissimilarity_hand_computed():
    """d_c for 1-D items {0, 1, 3} and centres {0, 2}: t = (4−0, 1−1, 9−1) → mean 4."""
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    d_c = characteristic_dissimilarity(SquaredEuclidean(x), torch.tensor([[0.0], [2.0]],
                                       dtype=torch.float64), generator=torch.Generator())
    assert float(d_c) == pytest.approx(4.0)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_two_processes_equal_one_process(batch_size, thread_ranks):
    """With shard = every other item of each global batch and reduce = sum over 2 ranks, both
    ranks return the labels and sizes of the 1-process run; centres equal to 1e-12 (float64;
    only the summation order of the class sums differs)."""
    x, _ = gaussian_mixture(8, [40, 25, 15], dim=4)
    init = x[[0, 41, 70]]
    single = run(x, 3, QuadraticPenalty(beta=0.5), init=init, batch_size=batch_size,
                 max_iter=15, chunk_size=32)

    def work(rank, reduce):
        return run(x, 3, QuadraticPenalty(beta=0.5), init=init, batch_size=batch_size,
                   max_iter=15, chunk_size=32, shard=lambda idx: idx[rank::2], reduce=reduce)

    for res in thread_ranks(2, work):
        assert torch.equal(res.labels, single.labels)
        assert res.sizes.tolist() == single.sizes.tolist()
        assert res.n_iter == single.n_iter
        torch.testing.assert_close(res.centers, single.centers, rtol=0, atol=1e-12)


def test_leave_one_out_distance_is_the_distance_to_the_mean_without_the_item():
    """SquaredEuclidean's own-class correction equals ‖x_i − μ₋ᵢ‖² computed from the other
    members (to 1e-10), leaves the other classes' distances alone, and is infinite for a
    one-item class."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 0])
    counts = torch.bincount(labels, minlength=3)
    provider = SquaredEuclidean(x)
    means = torch.stack([x[labels == j].mean(0) for j in range(3)])
    d = provider.dissimilarity(torch.arange(9), means)
    loo = provider.leave_one_out(d, labels, counts)
    for i in range(9):
        j = int(labels[i])
        others = x[(labels == j) & (torch.arange(9) != i)]
        if len(others):
            expected = (x[i] - others.mean(0)).pow(2).sum()
            assert float(loo[i, j]) == pytest.approx(float(expected), rel=1e-10)
        else:
            assert loo[i, j] == math.inf
        keep = torch.arange(3) != j
        assert torch.equal(loo[i, keep], d[i, keep])


def test_stranded_singleton_is_released_and_its_class_reseeded():
    """An outlier chosen as an initial centre: with the paper's plain distance ACK-means keeps it
    as a one-item class (its distance to its own average is 0); with the leave-one-out distance
    and reseeding of classes under 1 item it leaves, its class is reseeded from the largest class,
    and no class ends below a quarter of n/k."""
    x, _ = gaussian_mixture(8, [60, 60, 60], dim=10, sep=3.0, noise=1.0)
    outlier = torch.full((1, 10), 40.0, dtype=torch.float64)
    x = torch.cat([x, outlier])
    init = torch.cat([x[[0, 60, 120]], outlier])
    paper = run(x, 4, QuadraticPenalty(beta=0.5), init=init, max_iter=20)
    assert min(paper.sizes.tolist()) == 1
    fixed = run(x, 4, QuadraticPenalty(beta=0.5), init=init, max_iter=20, leave_one_out=True,
                min_class_size=1)
    assert min(fixed.sizes.tolist()) >= 181 / 4 / 4, fixed.sizes
    assert any(h["reseeded"] for h in fixed.history)
    assert torch.isfinite(fixed.centers).all()


def test_plateau_stops_a_loop_whose_sigma_levels_off_and_says_so():
    """A levelled-off σ (no 5 % gain over the window) ends the loop, recorded as "plateau" in the
    history and the result, not as converged; σ that still falls does not trigger it."""
    from ackmeans_torch.cluster.engine import _plateaued

    flat = [{"sigma": s} for s in (1.0, 0.5, 0.2, 0.15, 0.145, 0.148, 0.146, 0.147, 0.149, 0.146)]
    falling = [{"sigma": s} for s in (1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.04)]
    assert _plateaued(flat, 5) and not _plateaued(falling, 5) and not _plateaued(flat, 0)
    x, _ = gaussian_mixture(9, [100, 100, 100], dim=5, sep=0.5, noise=3.0)
    result = run(x, 6, QuadraticPenalty(beta=0.5), max_iter=60, sigma0=0.0, plateau=3)
    assert result.stopped == "plateau" and not result.converged
    assert result.history[-1]["stopped"] == "plateau" and result.n_iter < 60


class CountedSums(SquaredEuclidean):
    """Class sums that depend only on the items and their labels, so the loop may update them
    by the items that move; records per pass whether every item was summed or items moved."""

    incremental = True

    def __init__(self, x):
        super().__init__(x)
        self.passes = [set()]

    def add_statistics(self, total, index, labels, centers, *, sign=1):
        self.passes[-1].add("full" if sign > 0 else "out")
        return super().add_statistics(total, index, labels, centers, sign=sign)

    def move_statistics(self, total, index, old, new, centers):
        self.passes[-1].add("moved")
        total = super().add_statistics(total, index, old, centers, sign=-1)
        return super().add_statistics(total, index, new, centers)


def test_incremental_sums_are_made_afresh_once_half_the_items_moved():
    """Over 40 ACK-means passes on 1,200 items whose moves fall from 443 to a few: a pass
    after one that moved at most half the items updates the sums by its movers, until the
    items moved since the last full sum reach half of them, and then every item is summed
    afresh (here once, at pass 15). Labels are those of summing every item in every pass,
    centres equal to float64 rounding (a rule counted in passes fails the check)."""
    x, _ = gaussian_mixture(4, [150] * 8, sep=1.0, noise=3.0)
    n = len(x)
    init = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:8]]
    sums = CountedSums(x)
    fit = fit_clusters(sums, init.clone(), rule=QuadraticPenalty(beta=0.5), max_iter=40,
                       batch_size=1, chunk_size=256, generator=torch.Generator().manual_seed(1),
                       on_iteration=lambda state: sums.passes.append(set()))
    plain = fit_clusters(SquaredEuclidean(x), init.clone(), rule=QuadraticPenalty(beta=0.5),
                         max_iter=40, batch_size=1, chunk_size=256,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(fit.labels, plain.labels)
    torch.testing.assert_close(fit.centers, plain.centers, rtol=1e-12, atol=1e-12)
    moves = [round(h["sigma"] * n) for h in fit.history]
    kinds = sums.passes[:len(moves)]
    assert all(kind in ({"full"}, {"moved"}, set()) for kind in kinds), kinds
    since, refreshed = None, 0  # moves since the last full sum (None: none kept)
    for it, (kind, moved) in enumerate(zip(kinds, moves)):
        expect_full = (it == 0 or since is None or moves[it - 1] > 0.5 * n or since >= 0.5 * n)
        assert (kind == {"full"}) == expect_full, (it, kind, since, moves)
        refreshed += expect_full and it > 1
        since = 0 if expect_full else since + moved
    assert refreshed >= 1 and any(kind == {"moved"} for kind in kinds), (kinds, moves)
