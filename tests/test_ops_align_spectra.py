"""Tests of the kept image side of ops/align.py (ShiftedSpectra, align_pairs, the distances and
best modes that refine only the chosen pair) and of its use across MRA iterations
(classify/mra.py): each is checked against the search that computes every pair's pose from the
images, on a fixed set."""

from __future__ import annotations

import pytest
import torch
from conftest import classify_tensor

import ackmeans_torch.classify.mra as mra
from ackmeans_torch.classify.mra import MRA
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.projection import project
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom

L = 32
MASK = 14.0
#: float32 rounding of the refined poses between two paths that sum the same terms in another
#: order: a distance is the difference of power terms ~20× larger, so a few units in the last
#: place of those terms (measured: 3.7·10⁻⁴ on a distance of 55, 6.6·10⁻⁶ of it, on an AMD EPYC
#: where an earlier machine gave < 10⁻⁶), 1.8·10⁻⁶ px on a sub-pixel shift and 1.6·10⁻⁶ in the
#: class averages those shifts move; the comparisons that agree to 10⁻⁶ on both machines (the
#: search's distances, the best angles) keep that, labels and mirrors stay exact
ROUNDING = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def stacks():
    """20 noisy phantom projections of 32 px as images, 4 clean ones as references."""
    g = torch.Generator().manual_seed(3)
    volume = phantom(L)
    references = project(volume, random_rotations(4, generator=g).float())
    images = project(volume, random_rotations(20, generator=g).float())
    return images + 0.3 * images.std() * torch.randn(images.shape, generator=g), references


@pytest.mark.parametrize("mirror", [False, True])
def test_kept_spectra_and_pairs_equal_the_full_search(stacks, mirror):
    """Kept spectra give the N×K distances of the search from the images, and align_pairs gives,
    for a given class per image, the pose and distance the full search (every pair refined)
    finds for that pair; best mode (only the best pair refined) equals the full search's best."""
    images, references = stacks
    options = AlignOptions(n_angles=36, max_shift=2.0, mirror=mirror)
    full = options.align(images, references, mask_radius=MASK)
    spectra = options.spectra(images, mask_radius=MASK)
    distances = options.align(spectra, references, mask_radius=MASK, mode="distances")
    torch.testing.assert_close(distances, full.distances, rtol=1e-6, atol=0)
    labels = torch.arange(20) % 4
    chosen = full.select(labels)
    for given in (spectra, images):
        pairs = options.align_pairs(given, references, labels, mask_radius=MASK)
        assert torch.equal(pairs.mirror, chosen.mirror)
        for name in ("angle", "shift", "distance"):
            torch.testing.assert_close(getattr(pairs, name), getattr(chosen, name), **ROUNDING)
    best = options.align(images, references, mask_radius=MASK, mode="best")
    assert torch.equal(best.reference, full.distances.argmin(1))
    top = full.select(best.reference)
    torch.testing.assert_close(best.angle, top.angle, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(best.shift, top.shift, **ROUNDING)


def test_spectra_of_another_search_and_bad_labels_are_refused(stacks):
    """Bad input: spectra made with other sampling, or labels outside [0, K), are refused."""
    images, references = stacks
    spectra = AlignOptions(n_angles=36).spectra(images, mask_radius=MASK)
    with pytest.raises(InputError, match="another search"):
        AlignOptions(n_angles=40).align(spectra, references, mask_radius=MASK)
    with pytest.raises(InputError, match=r"labels must be in \[0, 4\)"):
        AlignOptions(n_angles=36).align_pairs(spectra, references, torch.full((20,), 4),
                                              mask_radius=MASK)


def test_mra_with_kept_spectra_equals_mra_without(stacks, monkeypatch):
    """MRA that keeps each chunk's spectra across iterations (distances without poses, then the
    pose of the assigned class only) gives the labels, poses, distances and averages of the MRA
    that keeps nothing and refines every pair each pass."""
    images, _ = stacks
    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), mask_radius=MASK,
                   align=AlignOptions(n_angles=36, max_shift=2.0), init="k-means++", max_iter=4,
                   sigma0=0.0, chunk_size=8, seed=0)
    kept = classify_tensor(MRA(), images, **options)
    monkeypatch.setattr(mra, "SPECTRA_CACHE_BYTES", 0)
    plain = classify_tensor(MRA(), images, **options)
    assert torch.equal(kept.labels, plain.labels)
    assert torch.equal(kept.poses.mirror, plain.poses.mirror)
    for name in ("angle", "shift", "distance"):
        torch.testing.assert_close(getattr(kept.poses, name), getattr(plain.poses, name),
                                   **ROUNDING)
    torch.testing.assert_close(kept.averages, plain.averages, **ROUNDING)


def test_unused_spectra_are_dropped_and_the_budget_holds(stacks):
    """Spectra not asked for during the centroids of a whole pass (those of the d_c probe's
    random items) are dropped, and no more than the budget is ever kept (a budget of 16 images
    keeps the probe's 2 and the chunks of 8 and 4, not the second chunk of 8)."""
    import pandas as pd

    from ackmeans_torch.data.source import ArraySource

    images, references = stacks
    source = ArraySource(images, pd.DataFrame(index=range(20)), pixel_size=1.0)
    search = AlignOptions(n_angles=36, max_shift=2.0)
    per_chunk = search.spectra_nbytes(L, 8) + 8 * L * L * 4
    provider = mra.AlignedImages(source, align=search, mask_radius=MASK, cache_bytes=2 * per_chunk)

    def kept_sizes():
        return sorted(len(key) // 8 for key in provider._kept)  # int64 indices

    centers = references[:3].clone()
    provider.dissimilarity(torch.tensor([3, 17]), centers)  # a probe
    for start in (0, 8, 16):
        provider.dissimilarity(torch.arange(start, min(20, start + 8)), centers)
    assert kept_sizes() == [2, 4, 8]
    assert provider._kept_bytes() <= 2 * per_chunk
    for _ in range(2):  # two passes that ask for the first chunk only
        centers = centers.clone()
        provider.dissimilarity(torch.arange(0, 8), centers)
    assert kept_sizes() == [8]
