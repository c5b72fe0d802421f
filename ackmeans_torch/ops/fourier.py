"""Centred Fourier transforms (2D and n-D), frequency grids, shifts as phase ramps, Fourier
cropping of images and volumes.

Conventions (the one owner of each; everything else imports these):

* The centre of an L-box is index ``L // 2`` for even and odd L (RELION/FFT convention). The
  centred transform ``fftnc`` (``fft2c`` for images) puts the zero frequency at index ``L // 2``
  of every transformed axis and treats that index as the spatial origin, so a centred real,
  point-symmetric image or volume has a real spectrum.
* Frequencies are in cycles per pixel, in ``[-1/2, 1/2)``; axis order ``(..., y, x)``.
* A shift ``t = (tx, ty)`` in pixels moves the image *content* by ``+t`` (towards larger x/y
  indices): ``F'(k) = F(k) · exp(-2πi (kx·tx + ky·ty))``. Shifts are circular (periodic box).

Shapes: images ``(..., L, L)`` real; spectra ``(..., L, L)`` complex; volumes ``(..., L, L, L)``
indexed ``(z, y, x)``; shifts ``(..., 2)`` as ``(x, y)`` broadcast against the leading dimensions.
"""

from __future__ import annotations

import numpy as np
import torch

from ackmeans_torch.errors import InputError


def _last_dims(ndim: int) -> tuple[int, ...]:
    if ndim < 1:
        raise ValueError(f"ndim={ndim} must be >= 1")
    return tuple(range(-ndim, 0))


def fftnc(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred FFT over the last ``ndim`` dimensions of ``x`` (origin and zero frequency at index
    ``L // 2`` of each of them); the leading dimensions are a batch."""
    dims = _last_dims(ndim)
    shifted = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(shifted, dim=dims), dim=dims)


def ifftnc(spectra: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`fftnc`; returns a complex tensor (take ``.real`` for real data)."""
    dims = _last_dims(ndim)
    shifted = torch.fft.ifftshift(spectra, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(shifted, dim=dims), dim=dims)


def fft2c(images: torch.Tensor) -> torch.Tensor:
    """Centred 2D FFT of ``(..., L, L)`` images (origin and zero frequency at ``L // 2``)."""
    return fftnc(images, 2)


def ifft2c(spectra: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c`; returns a complex tensor (take ``.real`` for real images)."""
    return ifftnc(spectra, 2)


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


def shift_values(values: torch.Tensor, k2d: torch.Tensor, shifts: torch.Tensor,
                 size: int) -> torch.Tensor:
    """:func:`phase_shift` of spectra kept only at some pixels: ``values (B, n)`` at the integer
    frequencies ``k2d (n, 2)`` (kx, ky; 1/L units) of an ``size``-pixel box, content moved by
    ``shifts (B, 2)`` px (x, y). No Nyquist special case: the kept pixels are a band inside it."""
    shifts = shifts.to(device=values.device, dtype=values.real.dtype)
    angle = (-2 * torch.pi / size) * (shifts @ k2d.to(shifts).T)
    return values * torch.polar(torch.ones_like(angle), angle)


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Real ``(..., L, L)`` images with their content moved by ``shifts (..., 2)`` px ``(x, y)``
    (sub-pixel, circular)."""
    return ifft2c(phase_shift(fft2c(images), shifts)).real.to(images.dtype)


def fourier_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample ``(..., L, L)`` images to ``(..., size, size)`` by keeping the central
    ``size × size`` block of the centred spectrum (an ideal low-pass, no aliasing); pixel values
    keep their scale (the mean is preserved). ``size == L`` returns the input."""
    return _fourier_crop(images, size, 2, "fourier_crop")


def fourier_crop_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample a ``(..., L, L, L)`` volume to ``(..., size, size, size)`` by keeping the central
    block of its centred 3D spectrum (the 3D analogue of :func:`fourier_crop`). Voxel values keep
    their scale; the new voxel size is ``L/size`` times the old one. ``size == L`` returns the
    input."""
    return _fourier_crop(volume, size, 3, "fourier_crop_volume")


def _fourier_crop(x: torch.Tensor, size: int, ndim: int, name: str) -> torch.Tensor:
    """The central ``size`` block of the centred spectrum of ``x`` over its last ``ndim`` axes,
    transformed back, values rescaled so the mean is kept; ``name`` is the caller, for errors."""
    full = x.shape[-1]
    if size == full:
        return x
    if not 1 <= size < full:
        raise InputError(f"{name} size={size} must be between 1 and the box size {full}")
    lo = full // 2 - size // 2
    block = fftnc(x, ndim)[(..., *(slice(lo, lo + size),) * ndim)]
    return (ifftnc(block, ndim).real * size**ndim / full**ndim).to(x.dtype)


def fsc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fourier shell correlation ``(L // 2 + 1,)`` float64 of two ``(L, L, L)`` volumes: entry s
    is Re Σ A·B̄ / √(Σ|A|² Σ|B|²) over the shell of frequencies whose radius, in 1/L units (index
    steps on the centred grid), rounds to s; s = L // 2 is Nyquist. A shell where either volume
    has no power gives 0."""
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise InputError(f"fsc needs two volumes of one shape (L, L, L), got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    size = a.shape[-1]
    spec_a = fftnc(a.to(torch.float64), 3).flatten()
    spec_b = fftnc(b.to(device=a.device, dtype=torch.float64), 3).flatten()
    axis = torch.arange(size, device=a.device, dtype=torch.float64) - size // 2
    radius = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2
                        + axis[None, None, :] ** 2).round().long().flatten()
    inside = radius <= size // 2
    shell = radius[inside]

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(size // 2 + 1, dtype=torch.float64, device=a.device).index_add_(
            0, shell, values[inside])

    cross = shell_sum((spec_a * spec_b.conj()).real)
    power = shell_sum(spec_a.abs() ** 2) * shell_sum(spec_b.abs() ** 2)
    return torch.where(power > 0, cross / power.clamp_min(1e-300).sqrt(), torch.zeros_like(cross))


#: the half-map FSC (or half-set FRC) threshold of a resolution estimate (Rosenthal & Henderson)
GOLD_STANDARD_THRESHOLD = 0.143
#: the resolution (Å) reported where there is none (RELION's 999)
NO_RESOLUTION = 999.0


def resolution_at(curves, *, box_size: int, pixel_size: float,
                  threshold: float = GOLD_STANDARD_THRESHOLD):
    """Resolution (Å) of FSC/FRC curves ``(..., S)`` (shell s = s / (L·px) Å⁻¹): the last shell
    before the curve first drops below ``threshold`` (the DC shell 0 is not looked at); Nyquist
    when it never does. A NumPy array (or float) shaped like ``curves`` without its last axis."""
    curves = np.asarray(curves, dtype=np.float64)
    below = curves[..., 1:] < threshold
    last_good = np.where(below.any(-1), below.argmax(-1), curves.shape[-1] - 1)
    return box_size * pixel_size / np.maximum(last_good, 1)


def shell_index(size: int, ndim: int, *, device=None) -> torch.Tensor:
    """``(L,)*ndim`` int64 shell (radius in 1/L units, rounded) of each centred frequency: the
    shells of :func:`fsc`."""
    axis = (torch.arange(size, device=device, dtype=torch.float64) - size // 2) ** 2
    radius2 = axis
    for _ in range(ndim - 1):
        radius2 = radius2[..., None] + axis
    return radius2.sqrt().round().long()


def filter_shells(volume: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``volume (..., L, L, L)`` with every Fourier shell s of :func:`shell_index` multiplied by
    ``gains[s]`` (``(S,)``; shells beyond S are zeroed): an FSC weighting or a low-pass."""
    size = volume.shape[-1]
    shells = shell_index(size, 3, device=volume.device)
    table = torch.zeros(int(shells.max()) + 1, dtype=torch.float32, device=volume.device)
    n = min(len(gains), len(table))
    table[:n] = gains[:n].to(device=volume.device, dtype=torch.float32)
    return ifftnc(fftnc(volume, 3) * table[shells], 3).real.to(volume.dtype)
