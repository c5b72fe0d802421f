"""The simulated data set (sim/dataset.py): reproducibility, ground truth that re-creates the
images, SNR, view clustering, parameter checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.ctf import ctf
from ackmeans_torch.ops.fourier import ifft2c
from ackmeans_torch.ops.projection import FourierProjector, relion_origin_to_shift
from ackmeans_torch.ops.rotations import angle_between_directions, euler_to_matrix, viewing_direction
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN, simulate_dataset
from ackmeans_torch.sim.noise import signal_variance
from ackmeans_torch.sim.views import half_sphere_points
from ackmeans_torch.sim.volume import phantom

SMALL = dict(n_centres=4, per_centre=5, max_shift_px=3.0, snr=0.1)


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    return phantom(24)


def test_same_seed_identical_different_seed_different(volume):
    """Same seed → bit-identical images and table; another batch size draws the same numbers
    (table identical, images equal to float32 rounding of the batched FFTs); another seed →
    different images and angles."""
    a_img, a_tab = simulate_dataset(volume, 3.0, seed=7, batch_size=6, **SMALL)
    b_img, b_tab = simulate_dataset(volume, 3.0, seed=7, batch_size=6, **SMALL)
    assert torch.equal(a_img, b_img)
    pd.testing.assert_frame_equal(a_tab, b_tab)
    d_img, d_tab = simulate_dataset(volume, 3.0, seed=7, batch_size=20, **SMALL)
    pd.testing.assert_frame_equal(a_tab, d_tab)
    torch.testing.assert_close(a_img, d_img, atol=1e-5, rtol=0)
    c_img, c_tab = simulate_dataset(volume, 3.0, seed=8, **SMALL)
    assert not torch.equal(a_img, c_img)
    assert not np.allclose(a_tab["rlnAngleRot"], c_tab["rlnAngleRot"])


def test_table_is_ground_truth_that_recreates_the_clean_images(volume):
    """Re-projecting from the table alone (RELION angles, Å origins → shifts by the RELION sign,
    CTF parameters) reproduces the clean CTF-modulated images (no noise, no flip) to float32
    rounding; labels are 1..n_centres with per_centre each; shifts lie in the requested range."""
    images, table = simulate_dataset(volume, 3.0, n_centres=3, per_centre=4, max_shift_px=2.5,
                                     snr=None, phase_flip=False, astigmatism=500.0, seed=1)
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    angles = torch.tensor(table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    origins = torch.tensor(table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()) / pixel
    values = ctf(size=24, pixel_size=pixel, defocus_u=torch.tensor(table["rlnDefocusU"].to_numpy()),
                 defocus_v=torch.tensor(table["rlnDefocusV"].to_numpy()),
                 defocus_angle=torch.tensor(table["rlnDefocusAngle"].to_numpy()), voltage=300.0,
                 spherical_aberration=2.7, amplitude_contrast=0.1)
    spectra = FourierProjector(volume).spectra(euler_to_matrix(angles).float(), relion_origin_to_shift(origins))
    expected = ifft2c(spectra * values).real
    torch.testing.assert_close(images, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    assert sorted(table[CENTRE_LABEL_COLUMN].value_counts().to_dict().items()) == [(1, 4), (2, 4), (3, 4)]
    assert origins.abs().max() <= 2.5
    assert np.allclose(table["rlnDefocusU"] - table["rlnDefocusV"], 500.0)
    assert set(table["rlnCtfDataArePhaseFlipped"]) == {0}


@pytest.mark.parametrize("flip", [False, True])
def test_dataset_snr_over_whole_box(volume, flip):
    """Noisy minus clean (same seed, so the same poses) has variance var(clean)/SNR within 3% of
    the target, with and without phase flipping (flipping keeps white noise white with the same
    variance). 40·24² = 23,040 noise pixels: relative standard error √(2/n) ≈ 0.9%, so 3% is
    > 3 sigma."""
    kwargs = dict(n_centres=4, per_centre=10, phase_flip=flip, seed=3)
    clean, _ = simulate_dataset(volume, 3.0, snr=None, **kwargs)
    noisy, _ = simulate_dataset(volume, 3.0, snr=0.1, **kwargs)
    if flip:  # the SNR is defined on the CTF-modulated signal before flipping
        unflipped, _ = simulate_dataset(volume, 3.0, snr=None, **{**kwargs, "phase_flip": False})
        signal = signal_variance(unflipped)
    else:
        signal = signal_variance(clean)
    measured = signal / float((noisy - clean).double().var(correction=0))
    assert measured == pytest.approx(0.1, rel=0.03)


def test_views_cluster_around_half_sphere_centres():
    """Each image's viewing direction lies around its label's centre (a Fibonacci point of the
    upper half sphere) with per-axis RMS spread within 10% of spread_deg (1,000 draws: standard
    error ≈ 2.2%)."""
    _, table = simulate_dataset(phantom(16), 2.0, n_centres=10, per_centre=100, spread_deg=6.0,
                                snr=None, defocus_range=None, phase_flip=False, seed=5)
    centres = half_sphere_points(10)[torch.tensor(table[CENTRE_LABEL_COLUMN].to_numpy()) - 1]
    directions = viewing_direction(torch.tensor(table[["rlnAngleRot", "rlnAngleTilt"]].to_numpy()))
    theta = angle_between_directions(directions, centres)
    assert float(theta.pow(2).mean().sqrt() / math.sqrt(2)) == pytest.approx(6.0, rel=0.1)
    assert float(torch.tensor(table["rlnAnglePsi"].to_numpy()).std()) == pytest.approx(360 / math.sqrt(12), rel=0.1)


def test_box_size_downsamples_and_scales_pixel_size(volume):
    """box_size 16 from a 24 px map at 3 Å gives 16 px images at 4.5 Å."""
    images, table = simulate_dataset(volume, 3.0, n_centres=2, per_centre=2, box_size=16, seed=0)
    assert images.shape == (4, 16, 16)
    assert float(table["rlnImagePixelSize"].iloc[0]) == pytest.approx(4.5)
    assert int(table["rlnImageSize"].iloc[0]) == 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(snr=-1.0), "snr=-1"),
        (dict(defocus_range=None, phase_flip=True), "phase_flip=True needs a CTF"),
        (dict(defocus_range=(2e4, 1e4)), "defocus_range"),
        (dict(box_size=40), "box_size=40"),
        (dict(n_centres=0), "n_centres=0"),
        (dict(max_shift_px=-1.0), "max_shift_px=-1"),
    ],
)
def test_bad_parameters_messages(volume, kwargs, message):
    """Each bad parameter is a one-line InputError naming it."""
    with pytest.raises(InputError, match=message):
        simulate_dataset(volume, 3.0, **kwargs)
