"""Exhaustive splitting (trust/split.py) and the continuous check (trust/continuous.py) with a toy
classifier on points, where the answer is known: the null test's false-split rate, its power, the
tree on discrete / homogeneous / continuous sets, the gap and collinearity figures, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.trust.classifier import Partition
from ackmeans_torch.trust.continuous import collinearity, gap_ratio
from ackmeans_torch.trust.split import SplitOptions, exhaustive_split, split_test


def _k_means(x, k, seed):
    """k-means on ``x (n, d)`` from k seeded random points: its Partition (squared distances)."""
    centres = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    for _ in range(30):
        labels = ((x[:, None] - centres) ** 2).sum(-1).argmin(1)
        centres = np.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j]
                            for j in range(k)])
    return Partition(labels, ((x[:, None] - centres) ** 2).sum(-1))


def _toy(points):
    """The Classifier protocol on ``points (N, d)``: k-means."""
    return lambda subset, k, seed: _k_means(points[subset], k, seed)


def test_null_test_false_split_rate_is_alpha_on_gaussian_data():
    """On 100 Gaussian sets (no structure) split by 2-means — the best split the classifier could
    report — p ≤ 0.1 in at most 10% + 3 binomial standard errors of the sets: the stated
    false-split rate holds."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(100):
        x = rng.normal(0, 1, (40, 3)) * [3.0, 1.0, 0.5]
        labels = _k_means(x, 2, trial).labels
        hits += split_test(x, labels, draws=19, seed=trial)["p_value"] <= 0.1
    assert hits / 100 <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 100)


def test_null_test_rejects_two_separated_groups():
    """Two groups 8 sd apart: the observed cluster index is far below every null draw, so p is
    the smallest possible 1/(1 + draws)."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(0, 1, (60, 4)) + [8, 0, 0, 0]])
    test = split_test(x, np.repeat([0, 1], 60), draws=99, seed=0)
    assert test["p_value"] == pytest.approx(1 / 100)
    assert test["ci"] < test["null_ci_mean"] - 5 * test["null_ci_sd"]


FAST = SplitOptions(null_draws=99)


def _blobs(rng, centres, n=80, sd=0.4):
    return np.concatenate([rng.normal(c, sd, (n, len(c))) for c in centres])


def test_four_separated_states_end_in_four_pure_leaves():
    """Four blobs at the corners of a square: the replicates' 2-way splits cut the square
    differently, so more classes are tried until the replicates agree; the split ends with
    exactly four leaves, each all one blob, and no continuous flag."""
    rng = np.random.default_rng(3)
    points = _blobs(rng, [(0, 0), (6, 0), (0, 6), (6, 6)])
    truth = np.repeat(np.arange(4), 80)
    tree = exhaustive_split(_toy(points), len(points), options=FAST)
    assert len(tree.leaves) == 4 and tree.accepted >= 1 and not tree.continuous
    for k in range(4):
        assert len(np.unique(truth[tree.labels == k])) == 1
    leaf_rows = tree.nodes[tree.nodes["decision"] == "leaf"]
    assert leaf_rows["reason"].str.contains("null|reproducible|min_size").all()


def test_homogeneous_set_is_not_split():
    """One Gaussian blob: the 2-way split is refused (not reproducible or within the null): one
    leaf holding every particle."""
    rng = np.random.default_rng(4)
    points = rng.normal(0, 1, (240, 2)) * [2.0, 1.0]
    tree = exhaustive_split(_toy(points), len(points), options=FAST)
    assert tree.leaves == ["1"] and tree.accepted == 0
    assert (tree.labels == 0).all()


def test_a_continuum_is_flagged_and_not_split_further():
    """Points spread uniformly along a line: the 2-way split is reproducible and beyond the
    Gaussian null, but has no gap between its children, and three classes lie on one line
    without gaps either, so the class is reported continuous, stays one leaf, with its figures
    in the table and its message."""
    rng = np.random.default_rng(5)
    points = np.stack([rng.uniform(0, 10, 400), rng.normal(0, 0.3, 400)], 1)
    tree = exhaustive_split(_toy(points), len(points), options=FAST)
    assert tree.continuous == ["1"] and tree.leaves == ["1"]
    assert list(tree.nodes["decision"]) == ["continuous"]
    assert "use a continuous method" in tree.messages()[0]
    assert tree.nodes.loc[0, "gap"] > 0.5 and tree.nodes.loc[0, "collinearity"] > 0.8


def test_start_classes_are_roots_and_min_size_stops_splits():
    """Each class of a starting classification is a root (names 1, 2); a class with fewer than
    2 × min_size particles is a leaf without a run of the classifier."""
    rng = np.random.default_rng(6)
    points = _blobs(rng, [(0, 0), (6, 0)], n=30)
    calls = []
    classify = _toy(points)

    def counting(subset, k, seed):
        calls.append(len(subset))
        return classify(subset, k, seed)

    tree = exhaustive_split(counting, len(points), start=np.repeat([0, 1], 30),
                            options=SplitOptions(min_size=20))
    assert tree.leaves == ["1", "2"] and not calls
    assert tree.nodes["reason"].str.contains("min_size=20").all()


def test_gap_ratio_and_collinearity_known_cases():
    """The gap ratio is near 0 for two separated groups and near 1 for a uniform spread cut in
    the middle; three means on a line have collinearity 1, an equilateral triangle 0.5."""
    rng = np.random.default_rng(7)
    two = np.concatenate([rng.normal(0, 0.3, 200), rng.normal(5, 0.3, 200)])[:, None]
    assert gap_ratio(two, np.repeat([0, 1], 200)) < 0.01
    line = np.sort(rng.uniform(0, 1, 400))[:, None]
    assert gap_ratio(line, (line[:, 0] > 0.5).astype(int)) > 0.8
    assert collinearity(np.array([[0.0, 0], [1, 1], [3, 3]])) == pytest.approx(1.0)
    triangle = np.array([[0.0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    assert collinearity(triangle) == pytest.approx(0.5)


@pytest.mark.parametrize("options, match", [
    (dict(replicates=1), "replicates=1"),
    (dict(alpha=0.001, null_draws=99), "raise null_draws or alpha"),
    (dict(min_ari=2.0), "min_ari=2.0"),
])
def test_bad_options_are_refused(options, match):
    """Bad thresholds are refused with the parameter named and what to change."""
    with pytest.raises(InputError, match=match):
        SplitOptions(**options)


def test_bad_start_is_refused():
    """A start labelling of the wrong length is refused before any run."""
    with pytest.raises(InputError, match="one class per particle"):
        exhaustive_split(_toy(np.zeros((10, 2))), 10, start=np.zeros(9, int))
