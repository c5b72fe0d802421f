"""The contrast transfer function (CTF) in RELION/CTFFIND conventions, and phase flipping.

This module owns the CTF sign and the electron wavelength. With spatial frequency ``k`` (1/Å, on
the centred grid of ``ops.fourier``), ``θ = atan2(ky, kx)`` and ``λ`` the relativistic electron
wavelength, as RELION's ``CTF::getCTF`` (``src/ctf.h``):

    Δf(θ) = (U + V)/2 + (U − V)/2 · cos 2(θ − α)                       (defocus, Å; U, V > 0 underfocus)
    χ(k)  = π λ Δf(θ) k² − (π/2) Cs λ³ k⁴ + φ + arctan(w / √(1 − w²))
    CTF(k) = sin χ(k) · exp(−B k² / 4)

with α = rlnDefocusAngle (degrees, counter-clockwise from the x axis), Cs in mm
(rlnSphericalAberration), w the amplitude contrast (rlnAmplitudeContrast), φ the phase shift
(rlnPhaseShift, degrees) and B the B-factor (rlnCtfBfactor, Å²). CTF(0) = w > 0, so the first lobe
keeps the sign of the projected density. Image rows are y, columns x, as stored in MRC files.

Shapes: every parameter is a float or a ``(B,)`` tensor (broadcast to a common B); the result is
``(B, L, L)`` on the centred grid, on ``device`` in ``dtype``.
"""

from __future__ import annotations

import math

import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import fft2c, frequency_grid, ifft2c

ParamLike = float | torch.Tensor


def electron_wavelength(voltage_kv: ParamLike) -> ParamLike:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (RELION's
    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with V in volts; 300 kV → 0.01969 Å)."""
    volts = voltage_kv * 1e3
    if isinstance(volts, torch.Tensor):
        return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))
    return 12.2643247 / math.sqrt(volts * (1.0 + volts * 0.978466e-6))


def ctf(
    *,
    size: int,
    pixel_size: float,
    defocus_u: ParamLike,
    defocus_v: ParamLike,
    defocus_angle: ParamLike,
    voltage: ParamLike,
    spherical_aberration: ParamLike,
    amplitude_contrast: ParamLike,
    phase_shift: ParamLike = 0.0,
    b_factor: ParamLike = 0.0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """CTF values ``(B, L, L)`` on the centred ``size × size`` grid (see the module docstring for
    the formula and units: Å, degrees, kV, mm, Å²). Scalar parameters give B = 1."""
    if pixel_size <= 0:
        raise InputError(f"pixel_size={pixel_size} must be > 0 Å")
    params = [
        torch.as_tensor(p, dtype=torch.float64, device=device).reshape(-1)
        for p in (
            defocus_u, defocus_v, defocus_angle, voltage, spherical_aberration,
            amplitude_contrast, phase_shift, b_factor,
        )
    ]
    du, dv, angle, kv, cs, w, phase, bfac = (p[:, None, None] for p in torch.broadcast_tensors(*params))
    if bool(((w < 0) | (w >= 1)).any()):
        raise InputError("amplitude_contrast must be in [0, 1)")
    # Per-pixel terms once; per image only multiply-adds and one sine. cos 2(θ − α) is expanded
    # as cos 2θ cos 2α + sin 2θ sin 2α so no per-image trigonometry runs on the grid. Per-image
    # coefficients are formed in float64; the (B, L, L) work runs in float32 unless float64 is
    # asked for (χ ≲ 10² rad, so float32 keeps it to ~1e-5 rad).
    work = torch.float64 if dtype == torch.float64 else torch.float32
    ky, kx = frequency_grid(size, device=device, dtype=torch.float64)
    k2 = (kx**2 + ky**2) / pixel_size**2
    theta = torch.atan2(ky, kx)
    cos2t, sin2t, k4 = torch.cos(2 * theta).to(work), torch.sin(2 * theta).to(work), (k2**2).to(work)
    alpha = torch.deg2rad(angle)
    lam = electron_wavelength(kv)
    mean_term = (math.pi * lam * 0.5 * (du + dv)).to(work)
    astig = math.pi * lam * 0.5 * (du - dv)
    astig_cos, astig_sin = (astig * torch.cos(2 * alpha)).to(work), (astig * torch.sin(2 * alpha)).to(work)
    cs_term = (0.5 * math.pi * (cs * 1e7) * lam**3).to(work)
    offset = (torch.deg2rad(phase) + torch.atan(w / torch.sqrt(1 - w**2))).to(work)
    k2 = k2.to(work)
    chi = (mean_term + astig_cos * cos2t + astig_sin * sin2t) * k2 - cs_term * k4 + offset
    values = torch.sin(chi)
    if bool((bfac != 0).any()):
        values = values * torch.exp(-bfac.to(work) * k2 / 4)
    return values.to(dtype)


def phase_flip(images: torch.Tensor, ctf_values: torch.Tensor) -> torch.Tensor:
    """Phase-flip ``images (B, L, L)``: multiply their centred spectra by sign(CTF) (``ctf_values
    (B, L, L)`` or ``(L, L)``; zeros count as +1) — the paper's CTF correction ("CTF-corrected by
    phase flipping"). Amplitudes are untouched, so white noise stays white with the same
    variance."""
    if images.shape[-2:] != ctf_values.shape[-2:]:
        raise InputError(
            f"images {tuple(images.shape)} and CTF {tuple(ctf_values.shape)} differ in box size"
        )
    sign = torch.where(ctf_values < 0, -1.0, 1.0).to(device=images.device, dtype=images.dtype)
    return ifft2c(fft2c(images) * sign).real.to(images.dtype)
