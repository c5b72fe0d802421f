"""Wiener (CTF-weighted) class averages recover the signal that a plain mean of phase-flipped
images leaves CTF-modulated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ackmeans_torch.classify.averages import wiener_averages
from ackmeans_torch.data.prepared import PreparedSource, PreprocessOptions
from ackmeans_torch.data.simulated import SimulatedSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.align import align
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.projection import project
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.ops.transform import Poses, apply_transform
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.volume import phantom


def _corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    a, b = (a * mask).flatten(), (b * mask).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_wiener_average_of_one_view_matches_the_ctf_free_projection():
    """24 clean, phase-flipped images of one view at random psi and defocus 0.5–3 µm: the
    Wiener average correlates with the CTF-free projection at ≥ 0.98 (measured 0.995), the plain
    mean of the aligned flipped images far lower (measured 0.845)."""
    vol = phantom(48)
    images, parts = simulate_dataset(vol, 4.0, n_centres=1, per_centre=24, spread_deg=0.0,
                                     snr=None, defocus_range=(5000.0, 30000.0), seed=0)
    prepared = PreparedSource(SimulatedSource(images, parts, pixel_size=4.0), PreprocessOptions())
    x = prepared.images(np.arange(24))
    view = torch.tensor(parts[["rlnAngleRot", "rlnAngleTilt"]].to_numpy()[:1])
    truth = project(vol, euler_to_matrix(torch.cat([view, torch.zeros(1, 1, dtype=view.dtype)], 1)).float())
    best = align(x, truth, mode="best", max_shift=0, n_angles=360, mask_radius=prepared.mask_radius)
    mask = circular_mask(48, prepared.mask_radius)
    plain = (apply_transform(x, best.angle, best.shift, best.mirror, inverse=True) * mask).mean(0)
    labels = torch.zeros(24, dtype=torch.long)
    wiener = wiener_averages(prepared, labels, best.poses, 1, epsilon=0.01)[0]
    assert _corr(wiener, truth[0], mask) >= 0.98
    assert _corr(wiener, truth[0], mask) > _corr(plain, truth[0], mask) + 0.1


def test_wiener_averages_need_ctf_columns():
    images = torch.randn(4, 16, 16)
    parts = pd.DataFrame({"rlnImagePixelSize": [2.0] * 4})
    prepared = PreparedSource(SimulatedSource(images, parts, pixel_size=2.0), PreprocessOptions())
    with pytest.raises(InputError, match="needs CTF columns"):
        wiener_averages(prepared, torch.zeros(4, dtype=torch.long), Poses.zeros(4), 1)
