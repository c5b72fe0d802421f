"""A built-in procedural phantom: a 3D density map for the simulator when no map is given.

Volumes are ``(L, L, L)`` float32 tensors indexed ``(z, y, x)`` with the centre at index
``L // 2`` on every axis (a map is read with ``io.mrc.load_volume``).
"""

from __future__ import annotations

import torch

from ackmeans_torch.errors import InputError


# Blobs of the phantom: centre (x, y, z) and radius as fractions of the box, and a weight. Chosen
# so that no rotation or mirror maps the set onto itself (distinct radii and weights, an L-shaped
# core with an off-axis arm), so every view and its mirror image differ.
_PHANTOM_BLOBS = (
    ((0.00, 0.00, 0.00), 0.13, 1.00),
    ((0.14, 0.00, 0.00), 0.10, 0.90),
    ((0.26, 0.02, 0.00), 0.08, 0.80),
    ((0.00, 0.15, 0.00), 0.09, 0.85),
    ((0.00, 0.27, 0.03), 0.07, 0.70),
    ((-0.05, -0.06, 0.17), 0.08, 0.75),
    ((-0.16, -0.10, 0.22), 0.05, 0.60),
    ((0.10, -0.18, -0.12), 0.06, 0.65),
    ((-0.18, 0.10, -0.10), 0.045, 1.20),
)


def phantom(size: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A built-in asymmetric phantom ``(size, size, size)`` indexed (z, y, x): a sum of Gaussian
    blobs of different sizes and weights arranged without symmetry, fitting inside a sphere of
    radius ≈ 0.4·size around the centre ``size // 2``. Deterministic (no data file, no seed) and
    defined for any ``size >= 8``; non-negative, maximum ≈ 1."""
    if size < 8:
        raise InputError(f"phantom size={size} must be >= 8 pixels")
    axis = (torch.arange(size, dtype=dtype, device=device) - size // 2) / size
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros_like(x)
    for (cx, cy, cz), radius, weight in _PHANTOM_BLOBS:
        r2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        volume += weight * torch.exp(-r2 / (2 * (radius / 2) ** 2))
    return volume / volume.max()
