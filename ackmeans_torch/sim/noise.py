"""Additive white Gaussian noise at a target signal-to-noise ratio.

SNR = variance of the clean signal / variance of the noise (paper, "Benchmark with simulated
data": SNR = 1/3, 1/10, 1/30). **Region: the whole box**, all pixels of all images together:
the signal variance is the mean over images of each clean image's pixel variance over its full
L×L box (for the paper protocol: the CTF-modulated projections, before phase flipping). One noise
level σ² = signal variance / SNR is used for the whole data set — the detector's noise does not
depend on the particle's view — so the SNR holds for the set, not exactly per image. Note that a
whole-box SNR depends on how much of the box the particle fills; the same map in a larger box has
a lower SNR at the same σ.
"""

from __future__ import annotations

import torch

from ackmeans_torch.errors import InputError


def signal_variance(images: torch.Tensor) -> float:
    """Mean over images of the per-image pixel variance over the whole box, for ``images
    (N, L, L)`` (the numerator of the SNR; population variance, ddof = 0)."""
    if images.ndim != 3:
        raise InputError(f"images must have shape (N, L, L), got {tuple(images.shape)}")
    return float(images.to(torch.float64).var(dim=(-2, -1), correction=0).mean())


def noise_sigma(images: torch.Tensor, snr: float) -> float:
    """Standard deviation of the white noise that gives ``images (N, L, L)`` the whole-box SNR
    ``snr`` (> 0)."""
    if not snr > 0:
        raise InputError(f"snr={snr} must be > 0 (variance of signal / variance of noise)")
    return (signal_variance(images) / snr) ** 0.5


def add_gaussian_noise(
    images: torch.Tensor, sigma: float, *, generator: torch.Generator
) -> torch.Tensor:
    """``images (..., L, L)`` plus i.i.d. Gaussian noise of standard deviation ``sigma``, drawn
    from ``generator`` (on the generator's device, then moved to the images' device)."""
    noise = torch.randn(
        images.shape, generator=generator, dtype=images.dtype, device=generator.device
    )
    return images + sigma * noise.to(images.device)
