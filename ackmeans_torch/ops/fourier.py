"""Centred 2D Fourier transforms, frequency grids, shifts as phase ramps, Fourier cropping.

Conventions (the one owner of each; everything else imports these):

* The centre of an L-box is index ``L // 2`` for even and odd L (RELION/FFT convention). The
  centred transform ``fft2c`` puts the zero frequency at ``(L // 2, L // 2)`` and treats pixel
  ``(L // 2, L // 2)`` as the spatial origin, so a centred real, point-symmetric image has a real
  spectrum.
* Frequencies are in cycles per pixel, in ``[-1/2, 1/2)``; axis order ``(..., y, x)``.
* A shift ``t = (tx, ty)`` in pixels moves the image *content* by ``+t`` (towards larger x/y
  indices): ``F'(k) = F(k) · exp(-2πi (kx·tx + ky·ty))``. Shifts are circular (periodic box).

Shapes: images ``(..., L, L)`` real; spectra ``(..., L, L)`` complex; shifts ``(..., 2)`` as
``(x, y)`` broadcast against the leading dimensions.
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(images: torch.Tensor) -> torch.Tensor:
    """Centred 2D FFT of ``(..., L, L)`` images (origin and zero frequency at ``L // 2``)."""
    shifted = torch.fft.ifftshift(images, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(shifted, dim=_DIMS), dim=_DIMS)


def ifft2c(spectra: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c`; returns a complex tensor (take ``.real`` for real images)."""
    shifted = torch.fft.ifftshift(spectra, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(shifted, dim=_DIMS), dim=_DIMS)


def centred_frequencies(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n,)`` frequencies in cycles/pixel ordered to match a centred axis (0 at ``n // 2``)."""
    return torch.fft.fftshift(torch.fft.fftfreq(n, device=device, dtype=dtype))


def frequency_grid(
    size: int, *, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ky, kx)``, each ``(L, L)``, the centred 2D frequency grid in cycles/pixel."""
    f = centred_frequencies(size, device=device, dtype=dtype)
    return torch.meshgrid(f, f, indexing="ij")


def _axis_ramp(size: int, shift: torch.Tensor) -> torch.Tensor:
    """``(..., L)`` phase ramp ``exp(-2πi k t)`` along one centred axis for shifts ``(...)``.

    For even L the Nyquist bin (index 0, k = -1/2) has no partner of opposite frequency, so a
    complex ramp there would make the shifted image non-real; it gets the real factor
    ``cos(2π k t)`` instead (exact for integer shifts, the Hermitian-symmetric choice otherwise).
    """
    freqs = centred_frequencies(size, device=shift.device, dtype=shift.dtype)
    angle = -2 * torch.pi * freqs * shift[..., None]
    ramp = torch.polar(torch.ones_like(angle), angle)
    if size % 2 == 0:
        ramp[..., 0] = torch.cos(angle[..., 0])
    return ramp


def phase_shift(spectra: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift the content of images given by their centred spectra ``(..., L, L)`` by
    ``shifts (..., 2)`` pixels ``(x, y)`` (see the module docstring for the sign)."""
    size = spectra.shape[-1]
    shifts = shifts.to(device=spectra.device, dtype=spectra.real.dtype)
    ramp_x = _axis_ramp(size, shifts[..., 0])
    ramp_y = _axis_ramp(size, shifts[..., 1])
    return spectra * ramp_y[..., :, None] * ramp_x[..., None, :]


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Real ``(..., L, L)`` images with their content moved by ``shifts (..., 2)`` px ``(x, y)``
    (sub-pixel, circular)."""
    return ifft2c(phase_shift(fft2c(images), shifts)).real.to(images.dtype)


def fourier_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample ``(..., L, L)`` images to ``(..., size, size)`` by keeping the central
    ``size × size`` block of the centred spectrum (an ideal low-pass, no aliasing); pixel values
    keep their scale (the mean is preserved). ``size == L`` returns the input."""
    full = images.shape[-1]
    if size == full:
        return images
    if not 1 <= size < full:
        raise ValueError(f"fourier_crop size={size} must be between 1 and the box size {full}")
    lo = full // 2 - size // 2
    block = fft2c(images)[..., lo : lo + size, lo : lo + size]
    return (ifft2c(block).real * (size * size) / (full * full)).to(images.dtype)
