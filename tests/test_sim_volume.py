"""Volumes (sim/volume.py): loading maps, the built-in phantom, 3D Fourier cropping."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.mrc import write_volume
from ackmeans_torch.sim.volume import fourier_crop_volume, load_volume, phantom


@pytest.mark.parametrize("size", [8, 33, 64])
def test_phantom_any_size_non_negative_and_asymmetric(size):
    """The phantom exists for any size, is non-negative with max 1, and is neither mirror
    symmetric about any axis nor invariant under 90° rotations (relative difference > 10%)."""
    v = phantom(size)
    assert v.shape == (size,) * 3 and float(v.min()) >= 0 and float(v.max()) == pytest.approx(1.0)
    c = size // 2
    centred = v[: 2 * c, : 2 * c, : 2 * c] if size % 2 == 0 else v  # flips about index c
    inner = centred[1:, 1:, 1:] if size % 2 == 0 else centred
    others = [inner.flip(0), inner.flip(1), inner.flip(2), inner.transpose(1, 2), inner.transpose(0, 2),
              inner.transpose(0, 1), torch.rot90(inner, 1, (1, 2)), torch.rot90(inner, 1, (0, 1))]
    for other in others:
        assert float((other - inner).norm() / inner.norm()) > 0.1


def test_phantom_too_small_message():
    """A phantom below 8 px is a one-line InputError."""
    with pytest.raises(InputError, match="size=4"):
        phantom(4)


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


def test_load_volume_round_trip_and_voxel_size(tmp_path):
    """A map written with voxel size 2.5 Å loads back identical with 2.5; an override wins; a
    header voxel size of 0 without an override asks for voxel_size."""
    v = phantom(16)
    write_volume(tmp_path / "p.mrc", v, 2.5)
    loaded, voxel = load_volume(tmp_path / "p.mrc")
    torch.testing.assert_close(loaded, v)
    assert voxel == pytest.approx(2.5)
    assert load_volume(tmp_path / "p.mrc", voxel_size=5.0)[1] == 5.0
    write_volume(tmp_path / "z.mrc", v, 0.0)
    with pytest.raises(InputError, match="voxel_size"):
        load_volume(tmp_path / "z.mrc")


def test_load_shared_ribosome(shared_data):
    """The paper's ribosome map loads as 65³ float32; its header has no voxel size, so 5 Å is given."""
    volume, voxel = load_volume(shared_data / "volumes" / "ribosome70S_65px.mrc", voxel_size=5.0)
    assert volume.shape == (65, 65, 65) and volume.dtype == torch.float32 and voxel == 5.0
