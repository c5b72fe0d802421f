"""The trilinear cells of central slices (ops/projection.py: slice_cells, interpolate, splat,
insertion_matrix, band_window, the pruned transforms, invert on a window): the projector's
gathers are the trilinear interpolation with zero padding that ``grid_sample`` computes, a band
window changes nothing inside its band, the splat is the exact adjoint of the interpolation and
the insertion matrix is that splat, the pruned transforms are the full padded ones at the
frequencies or voxels they keep, and a reconstruction from a centred window is the one from the
full grid that holds it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import fftnc
from ackmeans_torch.ops.projection import (
    BackProjector, FourierProjector, band_window, cell_offsets, insertion_matrix, interpolate,
    invert, padded_inverse, padded_spectrum, slice_cells, sort_cells, splat, splat_corners,
    trilinear_kernel_transform,
)
from ackmeans_torch.sim.views import random_rotations

L = 16  # padded grid 32³: milliseconds per check
# Slice coordinates are float32 near 2L (an ulp of 4e-6): the same point reached by another
# route (grid_sample's normalised grid, another window offset) moves by that much, and the
# value of a white spectrum with it by up to ~1e-5 of its largest value.
ATOL = 1e-5


def _volumes(k: int, seed: int) -> torch.Tensor:
    return torch.randn((k, L, L, L), generator=torch.Generator().manual_seed(seed))


def _rotations(n: int, seed: int) -> torch.Tensor:
    return random_rotations(n, generator=torch.Generator().manual_seed(seed)).float()


def test_sample_is_grid_sample_trilinear_with_zero_padding():
    """At every pixel of the full L × L grid (corners beyond the padded grid's edge included),
    the K volumes' slice values are grid_sample's trilinear interpolation (zero padding) of each
    padded, gridding-corrected spectrum: the gathered table reproduces the standard operator."""
    volumes = _volumes(3, seed=0)
    rotations = _rotations(7, seed=1)
    freqs = torch.arange(L, dtype=torch.float32) - L // 2
    ky, kx = torch.meshgrid(freqs, freqs, indexing="ij")
    k2d = torch.stack([kx, ky], -1)
    got = FourierProjector(volumes).sample(rotations, k2d)  # (K, B, L, L)

    padded_size = 2 * L
    padded = volumes.new_zeros((3,) + (padded_size,) * 3)
    lo = padded_size // 2 - L // 2
    padded[:, lo:lo + L, lo:lo + L, lo:lo + L] = volumes / trilinear_kernel_transform(L, 2)
    spectrum = fftnc(padded, 3)
    k3 = torch.einsum("nc,bcd->bnd", k2d.reshape(-1, 2), rotations[:, :2, :]) * 2
    grid = (k3 + padded_size // 2) * (2.0 / (padded_size - 1)) - 1.0
    for part, values in ((spectrum.real, got.real), (spectrum.imag, got.imag)):
        want = F.grid_sample(part[None], grid[None, :, :, None], mode="bilinear",
                             padding_mode="zeros", align_corners=True)[0, ..., 0]
        scale = float(want.abs().max())
        torch.testing.assert_close(values.reshape(want.shape) / scale, want / scale,
                                   atol=ATOL, rtol=0)


def test_band_window_changes_nothing_inside_the_band():
    """A projector that keeps only the window of a band gives the full projector's values at
    every pixel within the band, and its window is smaller than the padded grid."""
    volumes = _volumes(2, seed=2)
    rotations = _rotations(9, seed=3)
    band = 5.3
    pixels = BackProjector(L, max_radius=band).k2d
    windowed = FourierProjector(volumes, max_radius=band)
    assert windowed.window[1] < 2 * L
    want = FourierProjector(volumes).sample(rotations, pixels)
    scale = float(want.abs().max())
    torch.testing.assert_close(windowed.sample(rotations, pixels) / scale, want / scale,
                               atol=ATOL, rtol=0)


def test_splat_is_the_adjoint_of_interpolate():
    """⟨interpolate(T, cells), v⟩ = ⟨T, splat(v, cells)⟩ for random tables and values, real and
    complex: the M-step's insertion is exactly the transpose of the E-step's interpolation."""
    generator = torch.Generator().manual_seed(4)
    start, side = band_window(2 * L, 2, 6.0, border=False)
    cells = slice_cells(BackProjector(L, max_radius=6.0).k2d, _rotations(5, seed=5), padding=2,
                        padded_size=2 * L, start=start, side=side)
    for dtype in (torch.float64, torch.complex128):
        table = torch.randn(side**3, dtype=dtype, generator=generator)
        values = torch.randn(cells.columns.shape[0], dtype=dtype, generator=generator)
        cells64 = cells._replace(weights=cells.weights.double())
        forward = interpolate(torch.view_as_real(table) if dtype.is_complex else table[:, None],
                              cells64)
        forward = torch.view_as_complex(forward) if dtype.is_complex else forward[:, 0]
        target = torch.zeros(side**3, dtype=dtype)
        splat(cells64, [(target, values)])
        torch.testing.assert_close((forward * values).sum(), (table * target).sum())


def test_insertion_matrix_is_the_splat_of_each_channel():
    """``insertion_matrix(...) @ values`` adds each of C channels of the sorted points into the
    window as ``splat_corners`` does one grid at a time, and is a valid CSR matrix (ascending
    columns in every row, which cuSPARSE also expects); no points give an empty matrix."""
    generator = torch.Generator().manual_seed(8)
    for radius in (3.0, 6.0, None):
        start, side = band_window(2 * L, 2, radius, border=False)
        cells = slice_cells(BackProjector(L, max_radius=radius).k2d, _rotations(7, seed=9),
                            padding=2, padded_size=2 * L, start=start, side=side)
        order, first, corners = sort_cells(cells)
        steps = list(cell_offsets(side))
        matrix = insertion_matrix(first, corners, steps, side**3)
        values = torch.randn((len(order), 3), generator=generator)
        expected = torch.zeros((3, side**3))
        splat_corners(corners, steps, [(expected[c], values[:, c].contiguous()) for c in range(3)],
                      first.long())
        torch.testing.assert_close(matrix @ values, expected.T, atol=1e-5, rtol=1e-5)
        rows, columns = matrix.crow_indices(), matrix.col_indices()
        torch.sparse_csr_tensor(rows, columns, matrix.values(), size=matrix.shape,
                                check_invariants=True)
        runs = torch.repeat_interleave(rows.diff())
        assert bool(((columns[1:] > columns[:-1]) | (runs[1:] != runs[:-1])).all())
    empty = insertion_matrix(first[:0], corners[:, :0], steps, side**3)
    assert empty.shape == (side**3, 0) and float((empty @ values[:0]).abs().sum()) == 0.0


def _centred_padded_spectrum(volumes: torch.Tensor, padded_size: int) -> torch.Tensor:
    """The plain way: zero-pad about the centre and take the full centred transform."""
    size = volumes.shape[-1]
    grid = volumes.new_zeros(volumes.shape[:-3] + (padded_size,) * 3)
    at = slice(padded_size // 2 - size // 2, padded_size // 2 - size // 2 + size)
    grid[..., at, at, at] = volumes
    return fftnc(grid, 3)


@pytest.mark.parametrize("size,padding,low,high", [
    (16, 2, 9, 24), (16, 2, 0, 32), (15, 2, 3, 28), (15, 1, 0, 15), (12, 3, 11, 26),
    (12, 3, 0, 36)])
def test_pruned_spectrum_is_the_padded_fft_at_its_frequencies(size, padding, low, high):
    """:func:`padded_spectrum` of a stack of volumes, odd and even, paddings 1–3, a band or the
    whole grid, equals the full zero-padded centred transform at the kept frequencies."""
    volumes = torch.randn((2, size, size, size), generator=torch.Generator().manual_seed(10))
    padded = padding * size
    full = _centred_padded_spectrum(volumes, padded)[..., low:high, low:high, low:high]
    torch.testing.assert_close(padded_spectrum(volumes, padded, low, high), full,
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size,padding,side", [(16, 2, 13), (16, 2, 32), (15, 2, 21),
                                               (15, 1, 15), (12, 3, 36), (12, 3, 17)])
def test_pruned_inverse_is_the_padded_inverse_in_its_box(size, padding, side):
    """:func:`padded_inverse` of a Hermitian spectrum held on a centred window (or the whole
    grid) equals the box about the centre of the full inverse transform of the padded grid."""
    padded = padding * size
    box = torch.randn((size,) * 3, generator=torch.Generator().manual_seed(11))
    grid = _centred_padded_spectrum(box, padded)
    window = slice(padded // 2 - side // 2, padded // 2 - side // 2 + side)
    held = torch.zeros_like(grid)
    held[window, window, window] = grid[window, window, window]
    if side < padded:  # a symmetric window keeps the spectrum Hermitian
        assert side % 2
    at = slice(padded // 2 - size // 2, padded // 2 - size // 2 + size)
    expected = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(held))).real[at, at, at]
    part = held[window, window, window] if side < padded else held
    torch.testing.assert_close(padded_inverse(part, size, padded), expected, atol=1e-5, rtol=1e-5)
    if side == padded:  # nothing is lost: the box itself comes back
        torch.testing.assert_close(padded_inverse(part, size, padded), box, atol=1e-5, rtol=1e-5)


def test_invert_of_a_window_is_invert_of_the_grid_holding_it():
    """Statistics inserted within a band and kept on its centred window invert to the same map
    as the full padded grids that hold them (zeros elsewhere)."""
    back = BackProjector(L, max_radius=5.0)
    images = torch.randn((20, L, L), generator=torch.Generator().manual_seed(6))
    back.insert(images, _rotations(20, seed=7))
    start, side = band_window(back.padded_size, 2, 5.0, border=False)
    window = slice(start, start + side)
    assert float(back.weight.sum()) == pytest.approx(
        float(back.weight[window, window, window].sum()))
    full = invert(back.numerator, back.weight, box_size=L, regulariser=0.1)
    part = invert(back.numerator[window, window, window], back.weight[window, window, window],
                  box_size=L, regulariser=0.1)
    torch.testing.assert_close(part, full)


def test_invert_rejects_a_grid_of_the_wrong_size():
    """A grid that is neither the padded grid nor an odd centred window of it is refused with
    the sizes it expected."""
    grid = torch.zeros((10, 10, 10))
    with pytest.raises(InputError, match=r"\(32,\)\*3 grids of box_size=16"):
        invert(grid.to(torch.complex64), grid, box_size=L)
