"""Random poses for simulated data: uniform rotations, half-sphere centres, Gaussian spreads and
in-plane angles (sim/views.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.rotations import angle_between_directions
from ackmeans_torch.sim.views import gaussian_directions_around, half_sphere_points, random_rotations, uniform_psi


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_rotations_are_uniform():
    """Haar-uniform rotations have E[R] = 0; for 20,000 draws each entry's mean has standard
    error sqrt(1/3 / 20000) ≈ 0.004, so |mean| < 0.02 is a 5-sigma bound."""
    r = random_rotations(20000, generator=_gen(2))
    assert r.mean(0).abs().max() < 0.02
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(20000, dtype=torch.float64))


def test_half_sphere_points_cover_the_hemisphere_uniformly():
    """All points have z >= 0; uniform area on the hemisphere means z is uniform on [0, 1]
    (Archimedes), so each of 10 z-bands holds 1/10 of the points, and the azimuths balance
    (|mean of x, y| small)."""
    p = half_sphere_points(1000)
    assert (p[:, 2] >= 0).all()
    torch.testing.assert_close(p.norm(dim=1), torch.ones(1000, dtype=torch.float64))
    counts = torch.histc(p[:, 2], bins=10, min=0.0, max=1.0)
    assert (counts - 100).abs().max() <= 1
    assert p[:, :2].mean(0).abs().max() < 0.01


def test_gaussian_spread_has_requested_angular_std():
    """Directions drawn with spread σ = 7° per tangent axis lie at angles θ from the centre with
    E[θ²] = 2σ²; with 20,000 draws the RMS is within 2% (its relative standard error is 0.5%)."""
    centre = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    centre = (centre / centre.norm()).expand(20000, 3)
    d = gaussian_directions_around(centre, 7.0, generator=_gen(3))
    torch.testing.assert_close(d.norm(dim=1), torch.ones(20000, dtype=torch.float64))
    theta = angle_between_directions(d, centre)
    rms_per_axis = theta.pow(2).mean().sqrt() / math.sqrt(2)
    assert abs(rms_per_axis - 7.0) < 0.14
    # isotropic: no mean displacement (the mean direction is the centre within 0.1°)
    assert angle_between_directions(d.mean(0), centre[0]) < 0.1


def test_spread_zero_returns_centres_and_negative_spread_is_rejected():
    """σ = 0 gives the centres themselves; a negative σ is a one-line InputError."""
    c = half_sphere_points(5)
    torch.testing.assert_close(gaussian_directions_around(c, 0.0, generator=_gen()), c)
    with pytest.raises(InputError, match="spread_deg=-1"):
        gaussian_directions_around(c, -1.0, generator=_gen())


def test_uniform_psi_range():
    """In-plane angles lie in [0, 360) and fill it (mean ≈ 180 ± 3, 5 sigma for 10,000 draws)."""
    psi = uniform_psi(10000, generator=_gen(4))
    assert psi.min() >= 0 and psi.max() < 360
    assert abs(float(psi.mean()) - 180.0) < 5 * 360 / math.sqrt(12 * 10000)
