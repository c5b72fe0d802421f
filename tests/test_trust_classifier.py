"""The classifier protocol's helpers (trust/classifier.py): subset checks and the dimension choice;
the 2D adapter on a tiny simulated set (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.trust.classifier import check_subset, classifier_for


def test_bad_subsets_and_dimensions_are_refused():
    """An index out of range, a repeated particle and an unknown dimension are refused with a
    message saying what to do."""
    with pytest.raises(InputError, match="out of range"):
        check_subset([0, 5], 5)
    with pytest.raises(InputError, match="repeats"):
        check_subset([1, 1], 5)
    with pytest.raises(InputError, match="choose one of 2d, 3d"):
        classifier_for("4d")


@pytest.mark.slow
def test_2d_adapter_gives_labels_and_distances_of_the_subset():
    """Classify2D on 40 of 60 simulated images of three views: one label and one row of K
    positive, finite distances per selected particle, and the same seed gives the same
    partition and distances."""
    from ackmeans_torch.classify.mra import MRA
    from ackmeans_torch.cluster.options import ClusterOptions
    from ackmeans_torch.cluster.penalties import QuadraticPenalty
    from ackmeans_torch.data.simulated import Simulation, SimulatedSource
    from ackmeans_torch.trust.classifier import Classify2D

    source = SimulatedSource.from_spec(Simulation(n_centres=3, per_centre=20, box_size=32,
                                                  snr=0.5, ctf=False), seed=0)
    classify = Classify2D(source, pipeline=MRA(), rule=QuadraticPenalty(beta=0.5),
                          options=ClusterOptions(n_classes=2, max_iter=4))
    subset = np.sort(np.random.default_rng(0).choice(60, 40, replace=False))
    first, again = classify(subset, 3, 1), classify(subset, 3, 1)
    assert first.labels.shape == (40,) and first.distances.shape == (40, 3)
    assert np.array_equal(first.labels, again.labels)
    assert np.isfinite(first.distances).all() and (first.distances > 0).all()
    assert np.array_equal(first.distances, again.distances)
