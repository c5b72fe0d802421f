"""ACKMeans (cluster/estimator.py): the scikit-learn-like face — attributes, objectives, input
shapes, determinism and parameter validation messages."""

from __future__ import annotations

import warnings

import pytest
import torch

from ackmeans_torch.cluster.engine import ConvergenceWarning
from ackmeans_torch.cluster.estimator import ACKMeans
from ackmeans_torch.cluster.penalties import EntropyPenalty
from ackmeans_torch.eval.metrics import adjusted_rand_index


def _blobs(n_per=30, k=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, dim, generator=g)
    truth = torch.arange(k).repeat_interleave(n_per)
    return centres[truth] + torch.randn(k * n_per, dim, generator=g), truth


@pytest.mark.parametrize("objective", ["ack", "kmeans", "spider", "eqk", "eqk-exact",
                                       EntropyPenalty(beta=0.5)])
def test_fit_sets_attributes_and_recovers_separated_blobs(objective):
    """Every objective recovers 4 well-separated equal blobs exactly (ARI = 1, k-means++ init)
    and sets the documented attributes with the documented shapes."""
    x, truth = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m = ACKMeans(n_classes=4, objective=objective, init="k-means++", seed=0).fit(x)
    assert m.labels_.shape == (120,) and m.labels_.dtype == torch.int64
    assert m.centers_.shape == (4, 6) and m.cluster_centers_ is m.centers_
    assert m.converged_ and m.n_iter_ == len(m.history_) - 1
    assert m.sizes_.sum() == 120
    assert adjusted_rand_index(m.labels_, truth) == 1.0
    assert {"J", "sigma", "lambda_", "d_c", "sizes", "n_empty"} <= set(m.history_[-1])


def test_image_shaped_input_and_determinism():
    """(N, L, L) items cluster like their flattened vectors; same seed → same labels."""
    x, _ = _blobs(dim=16)
    a = ACKMeans(n_classes=4, seed=3).fit(x.reshape(-1, 4, 4))
    b = ACKMeans(n_classes=4, seed=3).fit(x)
    assert a.centers_.shape == (4, 4, 4)
    assert torch.equal(a.labels_, b.labels_)


def test_given_initial_centres_are_used():
    """init=<tensor>: with β = 0 and centres at the true blob centres, labels equal the truth."""
    x, truth = _blobs()
    init = torch.stack([x[truth == j].mean(0) for j in range(4)])
    m = ACKMeans(n_classes=4, beta=0.0, init=init).fit(x)
    assert torch.equal(m.labels_, truth)


@pytest.mark.parametrize("kwargs,message", [
    ({"n_classes": 200}, r"n_classes=200 must be <= the 120 items"),
    ({"n_classes": 0}, r"n_classes=0 must be an integer >= 1"),
    ({"n_classes": 4, "beta": -0.1}, r"beta=-0.1 must be a number >= 0"),
    ({"n_classes": 4, "sigma0": 1.5}, r"sigma0=1.5 must be a number in \[0, 1\]"),
    ({"n_classes": 4, "sigma0": -0.01}, r"sigma0=-0.01 must be a number in \[0, 1\]"),
    ({"n_classes": 4, "max_iter": 0}, r"max_iter=0 must be an integer >= 1"),
    ({"n_classes": 4, "batch_size": 0}, r"batch_size=0 must be an integer >= 1"),
    ({"n_classes": 4, "objective": "kmedoids"}, r"objective='kmedoids' must be one of"),
    ({"n_classes": 4, "init": "farthest"}, r"init='farthest' must be one of"),
    ({"n_classes": 4, "init": torch.zeros(3, 6)}, r"init has shape \(3, 6\); expected \(4, 6\)"),
])
def test_bad_parameters_raise_clear_value_errors(kwargs, message):
    """Each invalid parameter raises ValueError naming it and its value."""
    x, _ = _blobs()
    with pytest.raises(ValueError, match=message):
        ACKMeans(**kwargs).fit(x)


def test_non_finite_input_rejected():
    """NaN in the input is rejected before clustering."""
    x, _ = _blobs()
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        ACKMeans(n_classes=4).fit(x)


def test_max_iter_reached_warns():
    """Stopping at max_iter with σ > σ0 emits a ConvergenceWarning naming max_iter."""
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))  # no cluster structure
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        ACKMeans(n_classes=7, objective="kmeans", max_iter=1).fit(x)
