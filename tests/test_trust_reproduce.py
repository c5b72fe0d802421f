"""Reproducibility across runs (trust/reproduce.py): class matching, per-class figures on hand-made
labelings, halves, the over-split signal with a toy classifier, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.trust.classifier import Partition
from ackmeans_torch.trust.reproduce import ABSENT, match_runs, reproduce


def test_relabelled_identical_runs_match_exactly():
    """Runs that differ only by class numbering are matched onto the reference's numbers: every
    particle is stable, every Jaccard index and stability is 1, sizes do not spread, ARI = 1."""
    first = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    result = match_runs(np.stack([first, (first + 1) % 3, (first + 2) % 3]), 3)
    assert (result.labels == result.labels[result.reference]).all()
    assert (result.stable == result.labels[result.reference]).all()
    assert np.allclose(result.classes[["jaccard_mean", "stability"]], 1.0)
    assert (result.classes["size_sd"] == 0).all()
    assert np.allclose(result.pairs["ari"], 1.0)


def test_moving_particles_lower_their_classes_figures():
    """Two of ten particles move from class A to class B in one of three runs: by hand, A's
    matched sizes are 5, 5, 3 and B's 5, 5, 7; the two movers are unstable; A keeps 3 stable of
    5 ever-members (stability 0.6), B 5 of 7; the reference is a run that agrees best."""
    a = np.array([0] * 5 + [1] * 5)
    moved = a.copy()
    moved[[0, 1]] = 1
    result = match_runs(np.stack([a, a, 1 - moved]), 2)  # the third run also swaps numbers
    classes = result.classes.set_index("class")
    ref_a = result.labels[result.reference][2] + 1  # class number of the stayers
    ref_b = 3 - ref_a
    assert sorted(result.labels[2][:5] == result.labels[0][:5]) == [False, False, True, True, True]
    assert list(classes.loc[ref_a, ["size_min", "size_max", "stable"]]) == [3, 5, 3]
    assert classes.loc[ref_a, "stability"] == pytest.approx(3 / 5)
    assert classes.loc[ref_b, "stability"] == pytest.approx(5 / 7)
    assert (result.stable[[0, 1]] == ABSENT).all() and (result.stable[2:] != ABSENT).all()
    assert result.reference in (0, 1)
    # Jaccard of A against the reference: 5/5 in the identical run, 3/5 in the other
    assert classes.loc[ref_a, "jaccard_mean"] == pytest.approx((1 + 3 / 5) / 2)


def test_halves_compare_runs_on_their_common_particles():
    """With ``halves`` each run classifies about half the particles (the others ABSENT); a
    classifier that returns the true class gives ARI 1 on the common particles and makes every
    particle seen twice stable."""
    truth = np.repeat(np.arange(3), 40)
    result = reproduce(lambda subset, k, seed: Partition(truth[subset], np.zeros((len(subset), k))),
                       len(truth), 3, replicates=4,
                       halves=True)
    assert ((result.labels != ABSENT).sum(1) == len(truth) // 2).all()
    assert np.allclose(result.pairs["ari"], 1.0)
    seen_twice = (result.labels != ABSENT).sum(0) >= 2
    assert (result.stable[seen_twice] == truth[seen_twice]).all()
    assert (result.stable[~seen_twice] == ABSENT).all()


def _kmeans(points):
    """A seeded k-means on ``points (N, 2)`` started from farthest points (a random first one):
    the toy classifier of the over-split test."""

    def classify(subset, k, seed):
        x = points[subset]
        chosen = [int(np.random.default_rng(seed).integers(len(x)))]
        while len(chosen) < k:
            chosen.append(int(((x[:, None] - x[chosen]) ** 2).sum(-1).min(1).argmax()))
        centres = x[chosen]
        for _ in range(30):
            labels = ((x[:, None] - centres) ** 2).sum(-1).argmin(1)
            centres = np.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j]
                                for j in range(k)])
        return Partition(labels, ((x[:, None] - centres) ** 2).sum(-1))

    return classify


def test_over_splitting_shows_as_low_stability():
    """Four well-separated blobs: k-means with K=4 gives back the same classes whatever the seed
    (median stability > 0.95); with K=8 each blob is cut differently per seed, so the median
    stability drops below 0.8 and sizes spread: the report separates the two."""
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.3, (100, 2)) for c in [(0, 0), (6, 0), (0, 6),
                                                                       (6, 6)]])
    right = reproduce(_kmeans(points), len(points), 4, replicates=4)
    over = reproduce(_kmeans(points), len(points), 8, replicates=4)
    assert right.summary["stability_median"] > 0.95
    assert over.summary["stability_median"] < 0.8
    assert over.classes["size_cv"].max() > right.classes["size_cv"].max()


@pytest.mark.parametrize("labels, k, match", [
    (np.zeros((1, 5), int), 2, "R >= 2"),
    (np.array([[0, 2], [0, 1]]), 2, r"\[0, n_classes=2\)"),
])
def test_bad_labels_are_refused(labels, k, match):
    """A single run or a label out of range is refused with a message saying what is wrong."""
    with pytest.raises(InputError, match=match):
        match_runs(labels, k)


def test_too_few_particles_or_replicates_are_refused():
    """``replicates`` < 2 and fewer particles than classes are refused before any run."""
    never = lambda *a: pytest.fail("classifier called")  # noqa: E731
    with pytest.raises(InputError, match="replicates=1"):
        reproduce(never, 10, 2, replicates=1)
    with pytest.raises(InputError, match="too few for n_classes=4 on halves"):
        reproduce(never, 6, 4, halves=True)
