"""3D density maps for the simulator: load any ``.mrc`` map, a built-in procedural phantom, and
3D Fourier cropping (downsampling).

Volumes are ``(L, L, L)`` float32 tensors indexed ``(z, y, x)`` with the centre at index
``L // 2`` on every axis; voxel sizes are in Å.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ackmeans_torch.errors import InputError


def load_volume(
    path: str | Path, *, voxel_size: float | None = None
) -> tuple[torch.Tensor, float]:
    """Read a cubic map from an ``.mrc`` file → ``(volume (L, L, L) float32, voxel size Å)``.

    ``voxel_size`` overrides the header; it is required when the header says 0 (as the ASPIRE
    ribosome map does — its tutorials use 5 Å)."""
    from ackmeans_torch.io.mrc import read_volume

    data, header_voxel = read_volume(path)
    size = voxel_size if voxel_size is not None else header_voxel
    if not size or size <= 0:
        raise InputError(
            f"{path}: the header voxel size is {header_voxel}; give the voxel size in Å "
            "(voxel_size=...)"
        )
    # read_volume has already checked that the map is a finite cube.
    return torch.as_tensor(data, dtype=torch.float32), float(size)


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


def fourier_crop_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample a ``(L, L, L)`` volume to ``(size, size, size)`` by keeping the central block of
    its centred 3D spectrum (an ideal low-pass, the 3D analogue of ``ops.fourier.fourier_crop``;
    that helper is 2D). Voxel values keep their scale; the new voxel size is ``L/size`` times the
    old one. This is how the 64 px RELION anchor files were made from the 65 px map."""
    full = volume.shape[-1]
    if size == full:
        return volume
    if not 1 <= size < full:
        raise InputError(f"fourier_crop_volume size={size} must be between 1 and {full}")
    dims = (-3, -2, -1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume, dim=dims), dim=dims), dim=dims)
    lo = full // 2 - size // 2
    block = spectrum[lo : lo + size, lo : lo + size, lo : lo + size]
    out = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(block, dim=dims), dim=dims), dim=dims)
    return (out.real * math.prod((size,) * 3) / full**3).to(volume.dtype)
