"""Projection of a volume by the Fourier-slice theorem, as RELION's ``relion_project`` does it.

The 2D transform of the projection of ``V`` in pose ``A`` (RELION ZYZ matrix, see
``ops/rotations.py``) is the central slice of the 3D transform through ``Aᵀ (kx, ky, 0)``. As in
RELION's ``Projector`` the volume is zero-padded ``padding`` times (default 2) before its 3D FFT,
divided beforehand by the trilinear gridding correction sinc²(r / (padding·L)), the slice is
sampled by trilinear interpolation, and frequencies beyond radius ``L // 2`` (in 1/L units) are
zeroed. The result is the line integral of the volume along the viewing direction (the sum of
voxel values along the ray, so the identity pose gives ``volume.sum(0)``), centre at pixel
``L // 2``. Agreement with relion_project: ≤ 0.6% relative error on the shared anchors
(tests/test_ops_projection.py).

Shapes: volume ``(L, L, L)`` (z, y, x); rotations ``(B, 3, 3)``; shifts ``(B, 2)`` px (x, y);
spectra/images ``(B, L, L)``. Everything runs on the volume's device, in float32/complex64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import centred_frequencies, fftnc, ifft2c, phase_shift


def relion_origin_to_shift(origin_px: torch.Tensor) -> torch.Tensor:
    """RELION origin ``(..., 2)`` = (rlnOriginX, rlnOriginY) in px → the content shift ``(..., 2)``
    (x, y) px of ``ops.fourier.phase_shift`` that turns the centred projection into the image.

    The sign is measured on ``../shared/data/relion_projections/*_shifted`` (tests/
    test_ops_projection.py): ``relion_project`` moves the projected content by **-origin**, so the
    particle centre sits at pixel ``L // 2 - origin`` and translating the image by ``+origin``
    centres it (RELION >= 3.0). The same holds for the Å origins of RELION 3.1+
    (``rlnOriginXAngst``) after division by the pixel size. The one owner of this sign; being a
    negation it is its own inverse (content shift → origin is the same call)."""
    return -origin_px


class FourierProjector:
    """Holds the padded, gridding-corrected 3D spectrum of one volume and projects it in batches.

    ``FourierProjector(volume, padding=2)``; ``spectra(rotations, shifts)`` gives centred 2D
    spectra ``(B, L, L)`` complex (for CTF multiplication before the inverse FFT), ``__call__``
    gives real images ``(B, L, L)``.
    """

    def __init__(self, volume: torch.Tensor, *, padding: int = 2) -> None:
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise InputError(f"volume must be a cube (L, L, L), got {tuple(volume.shape)}")
        if padding < 1:
            raise InputError(f"padding={padding} must be >= 1")
        self.box_size = size = volume.shape[-1]
        self.padding = padding
        padded_size = padding * size
        vol = volume.to(torch.float32)
        # RELION's griddingCorrect: undo the sinc² that trilinear interpolation in Fourier space
        # imposes on real space, with r the distance from the centre in units of the padded box.
        axis = torch.arange(size, device=vol.device, dtype=torch.float32) - size // 2
        r = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
        vol = vol / torch.sinc(r / padded_size) ** 2
        padded = vol.new_zeros((padded_size,) * 3)
        lo = padded_size // 2 - size // 2
        padded[lo : lo + size, lo : lo + size, lo : lo + size] = vol
        spectrum = fftnc(padded, 3)
        # grid_sample interpolates real channels: (1, 2, P, P, P) = real and imaginary parts.
        self._spectrum = torch.stack([spectrum.real, spectrum.imag])[None].contiguous()
        freqs = centred_frequencies(size, device=vol.device) * size  # integer frequency indices
        ky, kx = torch.meshgrid(freqs, freqs, indexing="ij")
        self._inside = (kx**2 + ky**2) <= (size // 2) ** 2
        # Only rows with ky >= 0 (and, for even L, the unpaired Nyquist row 0) are interpolated;
        # the others follow from Hermitian symmetry F(-k) = conj F(k) of a real projection, which
        # halves the dominant cost.
        self._rows = torch.arange(size // 2, size, device=vol.device)
        if size % 2 == 0:
            self._rows = torch.cat([self._rows.new_zeros(1), self._rows])
        self._k2d = torch.stack([kx, ky], -1)[self._rows]  # (rows, L, 2) in 1/L units

    @property
    def device(self) -> torch.device:
        return self._spectrum.device

    def spectra(
        self, rotations: torch.Tensor, shifts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Centred 2D spectra ``(B, L, L)`` complex64 of the projections in poses ``rotations
        (B, 3, 3)``, their content moved by ``shifts (B, 2)`` px (x, y) when given."""
        if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
            raise InputError(f"rotations must have shape (B, 3, 3), got {tuple(rotations.shape)}")
        rot = rotations.to(device=self.device, dtype=torch.float32)
        size, padded_size = self.box_size, self.padding * self.box_size
        # 3D frequency (x, y, z) = Aᵀ (kx, ky, 0) = kx·A[0, :] + ky·A[1, :], in padded-grid units.
        k3 = torch.einsum("ijc,bcd->bijd", self._k2d, rot[:, :2, :]) * self.padding
        # grid_sample with align_corners=True maps index 0 → -1 and P-1 → +1; grid order (x, y, z).
        grid = (k3 + padded_size // 2) * (2.0 / (padded_size - 1)) - 1.0
        sampled = F.grid_sample(
            self._spectrum, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]  # (2, B, rows, L)
        half = torch.complex(sampled[0], sampled[1])
        c = size // 2
        out = half.new_zeros((rot.shape[0], size, size))
        out[:, self._rows] = half
        # Row i < c is the conjugate of row 2c − i with columns mirrored about c (j ↔ 2c − j);
        # for even L column 0 (kx = −L/2) has no partner but lies outside the mask for ky ≠ 0.
        first = 1 if size % 2 == 0 else 0
        out[:, first:c, first:] = out[:, c + 1 :, first:].flip(-2, -1).conj()
        out = out * self._inside
        if shifts is not None:
            out = phase_shift(out, shifts.to(self.device))
        return out

    def __call__(self, rotations: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """Real projections ``(B, L, L)`` float32 (see :meth:`spectra`)."""
        return ifft2c(self.spectra(rotations, shifts)).real


def project(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor | None = None,
    *,
    padding: int = 2,
    batch_size: int = 512,
) -> torch.Tensor:
    """Projections ``(B, L, L)`` float32 of ``volume (L, L, L)`` in poses ``rotations (B, 3, 3)``
    with content shifts ``(B, 2)`` px, computed ``batch_size`` at a time on the volume's device."""
    projector = FourierProjector(volume, padding=padding)
    parts = [
        projector(rotations[i : i + batch_size], None if shifts is None else shifts[i : i + batch_size])
        for i in range(0, rotations.shape[0], batch_size)
    ]
    return torch.cat(parts) if parts else volume.new_zeros((0, volume.shape[-1], volume.shape[-1]))

