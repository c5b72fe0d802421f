"""Replicates in parallel processes (trust/parallel.py): ``exhaustive_split`` and ``reproduce``
of a 3D classification (slow: ~10–20 s here) give with two workers exactly what they give in
sequence; bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_trust_split import _k_means

from ackmeans_torch.errors import InputError
from ackmeans_torch.trust.classifier import Partition
from ackmeans_torch.trust.parallel import Replicates
from ackmeans_torch.trust.reproduce import reproduce
from ackmeans_torch.trust.split import SplitOptions, exhaustive_split


class _SeededKMeans:
    """The split tests' toy classifier (seeded k-means on ``points``) as an object a worker
    process can unpickle."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = points

    def __call__(self, subset, k, seed):
        return _k_means(self.points[subset], k, seed)


@pytest.mark.slow
def test_3d_reproduce_with_two_workers_equals_the_sequential_run():
    """Two replicates of a 3D classification (two states, 200 particles) run in two worker
    processes give the same labels, class table and pairwise figures as run one after the other
    here (same seeds, one torch thread per run)."""
    from ackmeans_torch.class3d.run import Class3DOptions
    from ackmeans_torch.cluster.options import ClusterOptions
    from ackmeans_torch.cluster.penalties import QuadraticPenalty
    from ackmeans_torch.data.source import ArraySource
    from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero
    from ackmeans_torch.trust.classifier import Classify3D

    spec = HeteroSimulation(phantom_box=32, n_particles=200, populations=(0.5, 0.5),
                            state_angles=(0.0, 0.0), state_absent=(False, True),
                            domain_radius=0.16, snr=1.0, angle_noise_deg=0.5,
                            shift_noise_px=0.25)
    data = simulate_hetero(spec, seed=3)
    classify = Classify3D(ArraySource(data.images, data.particles, pixel_size=data.voxel_size),
                          rule=QuadraticPenalty(beta=0.5),
                          options=ClusterOptions(n_classes=2, max_iter=2, plateau=0),
                          class3d=Class3DOptions(init="simple", resolution=16.0))
    sequential = reproduce(classify, 200, 3, replicates=2, seed=5)
    parallel = reproduce(classify, 200, 3, replicates=2, seed=5, workers=2)
    assert np.array_equal(parallel.labels, sequential.labels)
    pd.testing.assert_frame_equal(parallel.classes, sequential.classes)
    pd.testing.assert_frame_equal(parallel.pairs, sequential.pairs)
    assert len(np.unique(sequential.labels)) == 3  # the runs did classify


def test_split_with_two_workers_equals_the_sequential_tree():
    """Three blobs split until exhaustive: two worker processes give the same decisions, figures
    and leaf labels as the sequential run (the seeds of each decision's replicates are drawn
    before they run)."""
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(c, 0.4, (60, 2)) for c in [(0, 0), (6, 0), (0, 6)]])
    classify = _SeededKMeans(points)
    options = SplitOptions(null_draws=99, max_depth=2)
    sequential = exhaustive_split(classify, len(points), options=options)
    parallel = exhaustive_split(classify, len(points), options=options, workers=2)
    pd.testing.assert_frame_equal(parallel.nodes, sequential.nodes)
    assert np.array_equal(parallel.labels, sequential.labels)
    assert sequential.accepted >= 1


def test_one_call_runs_here_and_bad_workers_are_refused():
    """A single call needs no pool (a lambda, which cannot be pickled, runs); workers=0 is
    refused with the parameter named."""
    run = Replicates(lambda subset, k, seed: Partition(np.zeros(len(subset), int),
                                                       np.zeros((len(subset), k))), workers=2)
    with run:
        (only,) = run([(np.arange(4), 2, 0)])
    assert run._pool is None and only.labels.shape == (4,)
    with pytest.raises(InputError, match="workers=0"):
        Replicates(lambda *a: None, workers=0)
