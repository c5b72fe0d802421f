"""Centred Fourier transforms and Fourier cropping (ops/fourier.py): the centre convention in n
dimensions, the 2D transforms as its special case, 3D cropping of volumes."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import fft2c, fftnc, fourier_crop_volume, ifft2c, ifftnc
from ackmeans_torch.sim.volume import phantom


@pytest.mark.parametrize("size", [8, 9])
def test_fftnc_centre_convention(size):
    """A delta at index L // 2 on every axis is the spatial origin: its spectrum is 1 everywhere.
    The zero frequency sits at L // 2 and holds the sum; a point-symmetric real volume about the
    centre has a real spectrum."""
    c = size // 2
    delta = torch.zeros((size,) * 3, dtype=torch.float64)
    delta[c, c, c] = 1.0
    torch.testing.assert_close(fftnc(delta, 3), torch.ones((size,) * 3, dtype=torch.complex128))
    v = torch.rand((size,) * 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert complex(fftnc(v, 3)[c, c, c]) == pytest.approx(float(v.sum()))
    inner = v[1:, 1:, 1:] if size % 2 == 0 else v  # the part with a mirror partner about c
    symmetric = torch.zeros_like(v)
    symmetric[-inner.shape[0] :, -inner.shape[1] :, -inner.shape[2] :] = inner + inner.flip(0, 1, 2)
    assert float(fftnc(symmetric, 3).imag.abs().max()) < 1e-12


def test_fftnc_batches_leading_dims_and_inverts():
    """Leading dimensions are a batch; ifftnc inverts fftnc."""
    x = torch.randn(2, 3, 6, 7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spectra = fftnc(x, 3)
    torch.testing.assert_close(spectra[1, 2], fftnc(x[1, 2], 3))
    torch.testing.assert_close(ifftnc(spectra, 3).real, x)
    assert float(ifftnc(spectra, 3).imag.abs().max()) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fft2c_is_fftnc_over_two_dims(dtype):
    """fft2c and ifft2c are fftnc and ifftnc over the last two axes, bit for bit."""
    x = torch.randn(3, 16, 17, generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert torch.equal(fft2c(x), fftnc(x, 2))
    assert torch.equal(ifft2c(fft2c(x)), ifftnc(fftnc(x, 2), 2))


def test_fourier_crop_volume_preserves_mean_and_low_frequencies():
    """Cropping 33³ → 16³ keeps the mean voxel value × volume ratio (sum scales by (16/33)³) and
    equals the identity at the same size; bad sizes are rejected."""
    v = phantom(33)
    small = fourier_crop_volume(v, 16)
    assert small.shape == (16, 16, 16)
    assert float(small.mean()) == pytest.approx(float(v.mean()), rel=1e-4)
    assert fourier_crop_volume(v, 33) is v
    with pytest.raises(InputError, match="size=40"):
        fourier_crop_volume(v, 40)
