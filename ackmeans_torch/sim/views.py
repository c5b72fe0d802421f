"""Random poses for simulated data: Haar-uniform rotations, and the orientation distributions of
the ACK-means benchmark (paper, "Benchmark with simulated data": 100 orientations covering half a
sphere, each a Gaussian centre with 100 projections around it).

Directions are unit vectors ``(..., 3)`` (x, y, z) and angles are in degrees, in the conventions
of ``ops/rotations.py``. Randomness: every sampler takes a ``torch.Generator``; results are float64
on the generator's device unless a ``dtype`` is given.
"""

from __future__ import annotations

import math

import torch

from ackmeans_torch.errors import InputError


def random_rotations(
    n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``(n, 3, 3)`` rotations uniform (Haar) on SO(3), from normalised Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=generator.device)
    return _quaternion_to_matrix(q / q.norm(dim=-1, keepdim=True))


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def half_sphere_points(n: int, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """``(n, 3)`` unit vectors spread uniformly over the half sphere z ≥ 0 (the paper's "100
    orientations covering half a sphere"), by a Fibonacci (golden-angle) spiral: equal-area bands
    in z (uniform z ∈ (0, 1] is uniform area on the hemisphere), longitude advanced by the golden
    angle. Deterministic, so the centres do not depend on the seed."""
    if n < 1:
        raise InputError(f"n_centres={n} must be >= 1")
    i = torch.arange(n, dtype=dtype, device=device)
    z = 1.0 - (i + 0.5) / n
    r = torch.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def gaussian_directions_around(
    centres: torch.Tensor, spread_deg: float, *, generator: torch.Generator
) -> torch.Tensor:
    """Unit directions ``(..., 3)`` drawn around unit ``centres (..., 3)``: an isotropic 2D
    Gaussian displacement with standard deviation ``spread_deg`` (degrees, per tangent axis) in
    the tangent plane, mapped onto the sphere by the exponential map (so the angle to the centre
    is the displacement's length: Rayleigh-distributed with RMS ``√2 · spread_deg``)."""
    if spread_deg < 0:
        raise InputError(f"spread_deg={spread_deg} must be >= 0")
    c = centres / centres.norm(dim=-1, keepdim=True)
    # An orthonormal tangent basis (e1, e2) at each centre; the helper axis avoids the one
    # parallel to c.
    helper = torch.zeros_like(c)
    use_x = c[..., 0].abs() < 0.9
    helper[..., 0] = use_x.to(c.dtype)
    helper[..., 1] = (~use_x).to(c.dtype)
    e1 = torch.linalg.cross(c, helper, dim=-1)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(c, e1, dim=-1)
    step = torch.randn(
        (*c.shape[:-1], 2), generator=generator, dtype=c.dtype, device=generator.device
    ).to(c.device) * math.radians(spread_deg)
    t = step[..., :1] * e1 + step[..., 1:] * e2
    theta = t.norm(dim=-1, keepdim=True)
    # sin(θ)/θ → 1 as θ → 0; torch.sinc(x) = sin(πx)/(πx).
    return c * theta.cos() + t * torch.sinc(theta / math.pi)


def uniform_psi(
    n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``(n,)`` in-plane angles uniform in [0, 360) degrees."""
    return torch.rand(n, generator=generator, dtype=dtype, device=generator.device) * 360.0
