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


def test_msa_mra_read_in_chunks_equals_one_chunk():
    """Chunked MSA/MRA: reading the images 8 at a time (features, covariance, scores, alignment
    and averages summed over chunks) gives the classes, poses and averages of one chunk holding
    every image (poses and averages to 1e-5: only the covariance's summation order differs)."""
    images, _ = _views(8, 0.5)
    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), mask_radius=14,
                   align=AlignOptions(n_angles=36, max_shift=1.0), init="k-means++", max_iter=5,
                   seed=0)
    chunked = classify_tensor(MSAMRA(n_rounds=1), images, chunk_size=8, **options)
    whole = classify_tensor(MSAMRA(n_rounds=1), images, chunk_size=1024, **options)
    assert torch.equal(chunked.labels, whole.labels)
    assert torch.equal(chunked.poses.mirror, whole.poses.mirror)
    for name in ("angle", "shift", "distance"):
        torch.testing.assert_close(getattr(chunked.poses, name), getattr(whole.poses, name),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.averages, whole.averages, rtol=1e-5, atol=1e-5)


def test_covariance_summed_over_chunks_gives_the_principal_axes():
    """Known answer: the axes from the covariance summed over chunks of 7 rows span the top
    principal subspace of the whole matrix (numpy's SVD of the centred rows), to 1e-4, with the
    third and fourth variances only 10 % apart."""
    from ackmeans_torch.classify.msa import Covariance

    g = torch.Generator().manual_seed(5)
    scales = torch.tensor([5.0, 4.0, 3.0, 2.7, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    x = torch.randn(60, 12, generator=g, dtype=torch.float64) * scales + 3
    covariance = Covariance()
    for part in x.split(7):
        covariance.add(part)
    mean, axes = covariance.basis(3, seed=0)
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-5, atol=1e-5)
    _, _, vt = np.linalg.svd((x - x.mean(0)).numpy(), full_matrices=False)
    top = torch.from_numpy(vt[:3].T)
    torch.testing.assert_close(top @ (top.T @ axes), axes, rtol=0, atol=1e-4)  # inside the span
