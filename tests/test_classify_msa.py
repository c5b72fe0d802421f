"""MSA/MRA: the invariant features really are invariant, and the pipeline recovers views."""

from __future__ import annotations

import numpy as np
import torch

from conftest import classify_tensor

from ackmeans_torch.classify.msa import MSAMRA, invariant_features
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.eval.metrics import adjusted_rand_index
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.projection import project
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.ops.transform import apply_transform
from ackmeans_torch.sim.volume import phantom


def _views(per_view: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[0.0, 0.0], [90.0, 90.0], [0.0, 90.0]])
    rot_tilt = base.repeat_interleave(per_view, 0)
    psi = torch.rand(len(rot_tilt), generator=g) * 360
    euler = torch.cat([rot_tilt, psi[:, None]], 1).double()
    clean = project(phantom(32), euler_to_matrix(euler).float())
    noisy = clean + noise * clean.std() * torch.randn(clean.shape, generator=g)
    return noisy, np.repeat(np.arange(3), per_view)


def test_invariant_features_ignore_rotation_and_shift():
    """Features of a turned and shifted copy differ from the original's far less than the
    features of a different view do."""
    images, _ = _views(1, 0.0)
    moved = apply_transform(images[:1], torch.tensor([1.1]), torch.tensor([[2.0, -1.0]]),
                            torch.tensor([False]))
    f = invariant_features(torch.cat([images, moved]), n_angles=128, mask_radius=14)
    same = (f[0] - f[3]).norm()
    other = min((f[0] - f[1]).norm(), (f[0] - f[2]).norm())
    assert same < 0.2 * other


def test_msa_mra_recovers_three_views_despite_random_in_plane_angles():
    images, truth = _views(12, 0.5)
    result = classify_tensor(MSAMRA(n_rounds=2), images, n_classes=3,
                             rule=QuadraticPenalty(beta=0.5), mask_radius=14,
                             align=AlignOptions(n_angles=72, max_shift=2.0), init="k-means++",
                             max_iter=8, seed=0)
    assert adjusted_rand_index(truth, result.labels.numpy()) >= 0.9
    assert result.averages.shape == (3, 32, 32) and int(result.sizes.sum()) == 36
