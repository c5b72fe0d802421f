"""Noise at a target SNR over the whole box (sim/noise.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.projection import project
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma, signal_variance
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom


@pytest.mark.parametrize("snr", [1 / 3, 1 / 10, 1 / 30])
def test_measured_snr_matches_target_over_the_whole_box(snr):
    """SNR = var(clean) / var(added noise), both over the whole box of all images, is within 2% of
    the target. The noise variance is estimated from n = 200·32² ≈ 2·10⁵ pixels, so its relative
    standard error is √(2/n) ≈ 0.3%: 2% is a > 6-sigma bound."""
    clean = project(phantom(32), random_rotations(200, generator=torch.Generator().manual_seed(0)).float())
    sigma = noise_sigma(clean, snr)
    noisy = add_gaussian_noise(clean, sigma, generator=torch.Generator().manual_seed(1))
    measured = signal_variance(clean) / float((noisy - clean).double().var(correction=0))
    assert measured == pytest.approx(snr, rel=0.02)
    assert math.sqrt(2 / clean.numel()) < 0.02 / 6  # the bound above is > 6 standard errors


def test_signal_variance_is_mean_of_per_image_box_variances():
    """Known answer: images with pixel values ±1 (variance 1) and ±2 (variance 4) → 2.5."""
    a = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    images = torch.stack([a, 2 * a])
    assert signal_variance(images) == pytest.approx(2.5)
    assert noise_sigma(images, 0.1) == pytest.approx(math.sqrt(25.0))


def test_bad_snr_and_shape_messages():
    """SNR ≤ 0 and non-(N, L, L) input are one-line InputErrors naming the parameter."""
    with pytest.raises(InputError, match="snr=0"):
        noise_sigma(torch.zeros(2, 4, 4), 0.0)
    with pytest.raises(InputError, match=r"\(N, L, L\)"):
        signal_variance(torch.zeros(4, 4))
