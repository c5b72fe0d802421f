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

Back-projection (:class:`BackProjector`, :func:`reconstruct`) is the adjoint on the same padded
grid: direct Fourier inversion Σ CTF·X / (Σ CTF² + 1/τ²) by trilinear insertion of the central
slices, then the same gridding correction. On noiseless projections of the 70S map it agrees
with RELION's ``relion_reconstruct`` of the same STAR file (FSC ≥ 0.98 up to 0.8 × Nyquist) and
with the map (≥ 0.99; tests/test_ops_backprojection.py).

Shapes: volume ``(L, L, L)`` (z, y, x); rotations ``(B, 3, 3)``; shifts ``(B, 2)`` px (x, y);
spectra/images ``(B, L, L)``. Everything runs on the volume's device, in float32/complex64.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.ops.fourier import (
    centred_frequencies, fft2c, ifft2c, phase_shift,
)


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


def trilinear_kernel_transform(size: int, padding: int, *, device=None) -> torch.Tensor:
    """``(L, L, L)`` sinc²(r / (padding·L)), r the distance from voxel ``L // 2``: what trilinear
    interpolation on the padded Fourier grid multiplies real space by. Dividing by it is RELION's
    ``griddingCorrect``, before projection (:class:`FourierProjector`) and after reconstruction
    (:class:`BackProjector`)."""
    axis = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    return torch.sinc(r / (padding * size)) ** 2


class Cells(NamedTuple):
    """Trilinear cells of ``M`` sample points on a cube window of side ``side`` (flat index
    (z·side + y)·side + x): ``columns (M, 8)`` int32, the flat indices of each cell's 8 corners
    in the order of :func:`cell_offsets`, and ``weights (M, 8)`` float32, their trilinear
    weights, zero for a sample whose cell leaves the window. Row by row they are the sparse
    interpolation matrix (M × side³, 8 entries a row) that :func:`interpolate` applies."""

    columns: torch.Tensor
    weights: torch.Tensor


def band_window(padded_size: int, padding: int, radius: float | None, *,
                border: bool) -> tuple[int, int]:
    """``(start, side)``: the cube ``[start, start + side)³`` of padded-grid indices that holds the
    trilinear cells of every central-slice sample within ``radius`` (1/L units; None: Nyquist)
    and every padded voxel of the shells they reach. Index ``side // 2`` of the window is k = 0
    (index ``padded_size // 2`` of the grid), so a window is mirrored by :func:`mirror` and
    inverted by :func:`invert` from its side alone. When it would not fit in the grid it is the
    whole grid, with ``border`` one zero voxel more on each side (the projector's zero padding:
    a sample whose cell straddles the grid's edge reads zeros there, as ``grid_sample`` does)."""
    centre = padded_size // 2
    if radius is not None:
        half = math.ceil(padding * (radius + 0.5)) + 1
        if half <= padded_size - 1 - centre:
            return centre - half, 2 * half + 1
    return (-1, padded_size + 2) if border else (0, padded_size)


def slice_cells(k2d: torch.Tensor, rotations: torch.Tensor, *, padding: int, padded_size: int,
                start: int, side: int) -> Cells:
    """:class:`Cells` of the central slices Aᵀ (kx, ky, 0) at ``k2d (n, 2)`` (1/L units) of the
    poses ``rotations (B, 3, 3)`` on the window ``[start, start + side)³`` of a padded grid
    (:func:`band_window`); sample b·n + j is pixel j of pose b."""
    rot = rotations.to(device=k2d.device, dtype=torch.float32)
    # 3D frequency (x, y, z) = Aᵀ (kx, ky, 0) = kx·A[0, :] + ky·A[1, :], as window indices
    coords = torch.matmul(k2d.to(torch.float32) * padding, rot[:, :2, :])  # (B, n, 3)
    coords = coords.add_(padded_size // 2 - start).view(-1, 3)
    base = coords.floor()
    frac = coords.sub_(base)
    # axis by axis: a reduction over a trailing axis of 3 is several times slower
    inside = torch.ones(len(base), dtype=torch.bool, device=base.device)
    for axis in base.unbind(1):
        inside &= (axis >= 0) & (axis <= side - 2)
    inside = inside.float()
    base = base.clamp_(0, side - 2)
    if side**3 >= 2**24:  # float32 holds integers exactly only below 2²⁴
        base = base.double()
    first = (base @ base.new_tensor([1.0, side, side * side])).int()
    columns = first[:, None] + torch.tensor(cell_offsets(side), dtype=torch.int32,
                                            device=first.device)
    fx, fy, fz = frac.unbind(1)
    z1 = fz * inside
    z0, y0, x0 = inside - z1, 1 - fy, 1 - fx
    # corner by corner into the (M, 8) columns: an outer product of (M, 2) factors broadcast
    # over dimensions of 2 runs 2.8× slower
    weights = torch.empty((len(frac), 8), device=frac.device)
    for i, zy in enumerate((z0 * y0, z0 * fy, z1 * y0, z1 * fy)):
        torch.mul(zy, x0, out=weights[:, 2 * i])
        torch.mul(zy, fx, out=weights[:, 2 * i + 1])
    return Cells(columns, weights)


def cell_offsets(side: int) -> tuple[int, ...]:
    """The flat steps from a cell's lowest corner to its 8 corners on a window of side ``side``,
    in the order of :class:`Cells`: (z, y, x) = (0, 0, 0), (0, 0, 1), (0, 1, 0), ..."""
    return tuple((dz * side + dy) * side + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1))


def interpolate(table: torch.Tensor, cells: Cells) -> torch.Tensor:
    """``(M, C)`` trilinear interpolation of ``table (side³, C)`` (a window, channels last) at
    ``cells``: one sparse (CSR) × dense product, each row's 8 corners and C channels in one pass
    of the sparse kernel (MKL on CPU, cuSPARSE on CUDA), several times faster than a gather and
    multiply-add per corner."""
    m = cells.columns.shape[0]
    rows = torch.arange(0, 8 * m + 1, 8, dtype=cells.columns.dtype, device=table.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(rows, cells.columns.reshape(-1),
                                         cells.weights.reshape(-1).to(table.dtype),
                                         size=(m, table.shape[0]), check_invariants=False)
    return matrix @ table


def splat(cells: Cells, grids: list[tuple[torch.Tensor, torch.Tensor]],
          first: torch.Tensor | None = None, points: torch.Tensor | None = None) -> None:
    """For each ``(target, values)`` of ``grids``: add ``values`` (of the contiguous ``target``'s
    dtype, real or complex), each spread over its cell's 8 corners with the trilinear weights,
    into ``target``: the transpose of :func:`interpolate`. ``points (m,)`` int64: the cells the
    values belong to, in their order (default: all M in order); ``first (m,)`` int64: where
    those cells' lowest corners are in the targets (default: their ``columns[:, 0]``; windows
    one after another take offset indices). One 1D ``index_add_`` per corner and target, the
    fast path of ``index_add_`` (the sparse transpose product is slower); it runs fastest when
    the points come in the order of their cells."""
    weights = cells.weights if points is None else cells.weights.index_select(0, points)
    if not len(weights):
        return
    if first is None:
        columns = cells.columns if points is None else cells.columns.index_select(0, points)
        first = columns[:, 0].long()
    # the corners' steps from the lowest one, the same in every row
    steps = (cells.columns[0] - cells.columns[0, 0]).tolist()
    splat_corners(weights.T.contiguous(), steps, grids, first)


def sort_cells(cells: Cells) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, first, weights)``: the points of ``cells`` in the order of their cells' lowest
    corners (``order (M,)`` int64), those corners (``first (M,)`` int32) and the corners'
    weights ``(8, M)`` corner by corner, as :func:`splat_corners` takes them (a caller that
    inserts the same points again keeps them)."""
    # (the sort's values are the sorted corners: no gather of them, 11–14 ms a chunk of 1M)
    first, order = torch.sort(cells.columns[:, 0])
    return order, first, cells.weights.index_select(0, order).T.contiguous()


def insertion_matrix(first: torch.Tensor, weights: torch.Tensor, steps: list[int],
                     volume: int) -> torch.Tensor:
    """``(volume, m)`` sparse CSR float32: the transpose of the interpolation matrix of the
    points of :func:`sort_cells` (lowest corners ``first (m,)`` ascending, corner weights
    ``weights (8, m)``, the corners ``steps`` from the lowest one, on a window of ``volume``
    voxels), so that ``matrix @ values`` with ``values (m, C)`` real in that order is their
    splat into C channels, each voxel's row summed at once by the sparse kernel (MKL on CPU,
    cuSPARSE on CUDA). For points inserted again and again with new values: made once, it
    inserts 12 channels 14× faster than :func:`splat_corners` (the scatter's
    read-modify-write per corner and channel; one thread, 200k points on a 49³ window), and
    made in about the time of one such splat (0.058 against 0.068 s).

    Built by counting, without sorting the 8m entries: row r holds, corner by corner, the points
    whose lowest corner is r − step, a run of consecutive points; the corners go from the last
    to the first, so that each row's columns ascend, as CSR wants them."""
    m, device = len(first), first.device
    index_dtype = torch.int32 if 8 * m < 2**31 and volume < 2**31 else torch.int64
    rows = torch.zeros(volume + 1, dtype=index_dtype, device=device)
    # counts over the rows the points reach, [low, low + span), not the whole window
    low = int(first[0]) if m else 0
    span = int(first[-1]) + steps[-1] + 1 - low if m else 0
    first = (first - low).long()
    count = torch.bincount(first, minlength=span).to(index_dtype)
    group = count.cumsum(0, dtype=index_dtype) - count  # each lowest corner's first point
    padded = torch.nn.functional.pad(count, (steps[-1], 0))
    # per_corner[k][r]: the points that reach row low + r through corner k
    per_corner = [padded[steps[-1] - step:steps[-1] - step + span] for step in steps]
    rows[low + 1:low + span + 1] = torch.stack(per_corner).sum(0).cumsum(0)
    rows[low + span + 1:] = 8 * m
    # where corner k's points begin in row r: after the row's points of the corners beyond k
    begin = rows[low:low + span].clone()
    points = torch.arange(m, dtype=index_dtype, device=device)
    place = torch.empty((len(steps), m), dtype=torch.int64, device=device)
    lowest = span - steps[-1]  # the lowest corners' range
    for k in reversed(range(len(steps))):
        # a corner's points are a run in the point order: each one's place is its own index
        # plus its lowest corner's offset from the run's start to the row's slot
        offset = begin[steps[k]:steps[k] + lowest] - group[:lowest]
        place[k] = points + offset[first]
        begin += per_corner[k]
    place = place.view(-1)
    columns = torch.empty(8 * m, dtype=index_dtype, device=device)
    columns[place] = points.repeat(len(steps))
    values = torch.empty(8 * m, dtype=torch.float32, device=device)
    values[place] = weights.reshape(-1).to(torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(rows, columns, values, size=(volume, m),
                                       check_invariants=False)


def splat_corners(weights: torch.Tensor, steps: list[int],
                  grids: list[tuple[torch.Tensor, torch.Tensor]], first: torch.Tensor) -> None:
    """:func:`splat` of points given by their lowest corners ``first (m,)`` int64 and their
    corners' weights ``weights (8, m)`` (contiguous, corner by corner), the corners ``steps``
    (:func:`cell_offsets`) from the lowest one: for a caller that keeps its points in that form
    (a gather and transposition of the (m, 8) weights costs as much as the insertion)."""
    for target, values in grids:
        flat, spread = target.view(-1), torch.empty_like(values)
        # real views, so a complex value times a real weight is two real products
        value = torch.view_as_real(values) if values.is_complex() else values[:, None]
        product = torch.view_as_real(spread) if values.is_complex() else spread[:, None]
        for step, weight in zip(steps, weights):
            torch.mul(value, weight[:, None], out=product)
            # a view that starts at the corner's step takes the lowest corners' indices as they are
            flat[step:].index_add_(0, first, spread)


def padded_spectrum(volumes: torch.Tensor, padded_size: int, low: int, high: int) -> torch.Tensor:
    """``(K, s, s, s)`` complex64: the centred 3D transform of ``volumes (K, L, L, L)``
    zero-padded to ``padded_size`` P with voxel L // 2 at the origin, at the centred indices
    ``[low, high)`` of each axis (index P // 2 is k = 0; 0 <= low < high <= P). A pruned
    transform: one axis at a time, the padded lines' FFTs kept only in the band before the next
    axis, so only lines that hold voxels are transformed (L² then L·s then s² an axis, of P²;
    the 49³ window of a 30 Å band of a 64 px box is made 3–4× faster than by a full padded
    ``fftn``, the whole grid 1.2×). Each pass turns the next axis last in memory (the padding
    copies it in that order) and transforms it: z, y, then x, so the result comes in the usual
    order."""
    size, half = volumes.shape[-1], padded_size // 2
    first, last = low - half, high - half  # the kept frequencies k, first <= k < last
    spectrum = volumes.to(torch.float32)
    for axis in range(3):
        spectrum = spectrum.permute(0, 2, 3, 1)
        # the last axis still in voxels: voxel x at the uncentred index (x − L//2) mod P
        lines = torch.cat([spectrum[..., size // 2:],
                           spectrum.new_zeros(spectrum.shape[:-1] + (padded_size - size,)),
                           spectrum[..., :size // 2]], -1)
        if axis == 0:
            # real lines: the half transform (k = 0 ... P/2) and F(−k) = conj F(k)
            lines = torch.fft.rfft(lines, dim=-1)
            below = lines[..., 1:1 - min(first, 0)].flip(-1).conj()
        else:
            lines = torch.fft.fft(lines, dim=-1)
            below = lines[..., padded_size + min(first, 0):]
        spectrum = torch.cat([below, lines[..., max(first, 0):last]], -1)
    return spectrum


class FourierProjector:
    """Holds the padded, gridding-corrected 3D spectrum of one volume and projects it in batches.

    ``FourierProjector(volume, padding=2)``; ``spectra(rotations, shifts)`` gives centred 2D
    spectra ``(B, L, L)`` complex (for CTF multiplication before the inverse FFT), ``__call__``
    gives real images ``(B, L, L)``. A stack of K volumes ``(K, L, L, L)`` is held as one
    channels-last table (K complex values per voxel), so :meth:`sample` interpolates all K at the
    same slice coordinates in one pass (3D classification compares each particle with every
    class's projection): one sparse product (:func:`interpolate`) of the samples' trilinear
    cells (:meth:`cells`) with the table. ``max_radius`` (1/L units) keeps only the window of
    the padded spectrum that samples within it reach (:func:`band_window`; beyond the window
    :meth:`sample` reads zeros): a band-limited comparison holds and reads less.
    """

    def __init__(self, volume: torch.Tensor, *, padding: int = 2,
                 max_radius: float | None = None) -> None:
        if volume.ndim not in (3, 4) or len(set(volume.shape[-3:])) != 1:
            raise InputError(f"volume must be a cube (L, L, L) or a stack of cubes (K, L, L, L), "
                             f"got {tuple(volume.shape)}")
        if padding < 1:
            raise InputError(f"padding={padding} must be >= 1")
        volumes = volume[None] if volume.ndim == 3 else volume
        self.n_volumes = volumes.shape[0]
        self.box_size = size = volumes.shape[-1]
        self.padding = padding
        padded_size = padding * size
        vol = volumes.to(torch.float32)
        vol = vol / trilinear_kernel_transform(size, padding, device=vol.device)
        self.padded_size = padded_size
        self.window = start, side = band_window(padded_size, padding, max_radius, border=True)
        window = vol.new_zeros((side,) * 3 + (2, self.n_volumes))
        lo, hi = max(start, 0), min(start + side, padded_size)
        inner = slice(lo - start, hi - start)
        part = padded_spectrum(vol, padded_size, lo, hi)
        part = part.permute(1, 2, 3, 0)
        window[inner, inner, inner, 0], window[inner, inner, inner, 1] = part.real, part.imag
        # (side³, 2K): the real parts of the K volumes at a voxel, then their imaginary parts,
        # gathered together
        self._table = window.reshape(side**3, 2 * self.n_volumes)
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
        return self._table.device

    def sample(self, rotations: torch.Tensor, k2d: torch.Tensor) -> torch.Tensor:
        """Central-slice values ``(K, B, *S)`` complex64 of every held volume at the 2D
        frequencies ``k2d (*S, 2)`` (kx, ky in 1/L units, on the centred grid) of the poses
        ``rotations (B, 3, 3)``; no band limit is applied (the caller chooses ``k2d``)."""
        shape = k2d.shape[:-1]
        return self.slices(self.cells(rotations, k2d.reshape(-1, 2)),
                           (rotations.shape[0], *shape))

    def slices(self, cells: Cells, shape: tuple[int, ...]) -> torch.Tensor:
        """``(K, *shape)`` complex64 values of every held volume at ``cells`` (:meth:`cells` of
        prod(shape) points, pose by pose): :meth:`sample` at cells made before."""
        values = self.sample_cells(cells)
        return torch.complex(values[:, 0], values[:, 1]).T.reshape(self.n_volumes, *shape)

    def cells(self, rotations: torch.Tensor, k2d: torch.Tensor) -> Cells:
        """:func:`slice_cells` of ``k2d (n, 2)`` in ``rotations (B, 3, 3)`` on this projector's
        window (for a caller that samples the same points again, or splats there)."""
        start, side = self.window
        return slice_cells(k2d.to(self.device), rotations.to(self.device), padding=self.padding,
                           padded_size=self.padded_size, start=start, side=side)

    def sample_cells(self, cells: Cells) -> torch.Tensor:
        """``(M, 2, K)`` float32 real and imaginary parts of the held volumes at ``cells``
        (:meth:`cells`)."""
        return interpolate(self._table, cells).view(-1, 2, self.n_volumes)

    def spectra(
        self, rotations: torch.Tensor, shifts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Centred 2D spectra ``(B, L, L)`` complex64 of the projections in poses ``rotations
        (B, 3, 3)``, their content moved by ``shifts (B, 2)`` px (x, y) when given."""
        if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
            raise InputError(f"rotations must have shape (B, 3, 3), got {tuple(rotations.shape)}")
        if self.n_volumes != 1:
            raise InputError(f"spectra() projects one volume; this projector holds "
                             f"{self.n_volumes} (use sample())")
        half = self.sample(rotations, self._k2d)[0]
        size = self.box_size
        c = size // 2
        out = half.new_zeros((rotations.shape[0], size, size))
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



class BackProjector:
    """Direct Fourier inversion, RELION's ``BackProjector`` without its iterative gridding: the
    adjoint of :class:`FourierProjector` on the same padded grid.

    ``insert(images, rotations, shifts, ctf)`` adds each image's centred 2D spectrum X, multiplied
    by its CTF c, into the padded 3D grid ``numerator`` at the central slice Aᵀ (kx, ky, 0) by
    trilinear splatting (each sample spread over its 8 neighbours with the trilinear weights, the
    transpose of the projector's interpolation), and c² into ``weight`` the same way.
    ``reconstruct(regulariser)`` returns the inverse transform of Σ c·X / (Σ c² + regulariser),
    cropped to ``(L, L, L)`` and divided by the trilinear kernel's sinc² (RELION's
    ``griddingCorrect``). Only frequencies within radius ``L // 2`` (1/L units) are used, as in
    the projector.

    The regulariser is a constant 1/τ² in the units of Σ c² (no SSNR or FSC estimate of τ², which
    RELION's Wiener filter with ``--fsc`` makes): 0 divides plainly (voxels with no weight stay 0,
    right for noiseless data); with noise, a value of the order of the weight per voxel divided by
    the expected SSNR damps the frequencies the data barely sample.

    ``numerator`` (complex64) and ``weight`` (float32), both ``(P, P, P)`` with P = padding·L,
    are plain tensors that only ever grow by addition, so per-class or per-process
    back-projectors combine by adding them (``a.numerator += b.numerator``, or an all-reduce)
    before one ``reconstruct``. Like the projector, an image contributes only its rows ky ≥ 0 (the
    row ky = 0 at half weight); ``reconstruct`` completes the other half space by Hermitian
    symmetry F(−k) = conj F(k), so inserting costs half.

    Phase-flipped images: pass |CTF| as ``ctf`` (a flipped image is |CTF|·F). Images are moved to
    the grids' ``device``; ``max_chunk_bytes`` bounds the temporary memory of one insertion step.
    ``max_radius`` (1/L units) inserts only the frequencies within it (a band-limited map costs
    in proportion to its band: 3D classification at a target resolution).
    """

    def __init__(self, box_size: int, *, padding: int = 2, device=None,
                 max_chunk_bytes: int = 256 * 2**20, max_radius: float | None = None) -> None:
        check_int("box_size", box_size, 2)
        check_int("padding", padding, 1)
        check_int("max_chunk_bytes", max_chunk_bytes, 1)
        self.box_size = size = box_size
        self.padding = padding
        self.padded_size = padded = padding * size
        #: the inserted band (1/L units; None: to L // 2)
        self.max_radius = max_radius
        device = torch.device("cpu") if device is None else torch.device(device)
        self.numerator = torch.zeros((padded,) * 3, dtype=torch.complex64, device=device)
        self.weight = torch.zeros((padded,) * 3, dtype=torch.float32, device=device)
        freqs = centred_frequencies(size, device=device) * size  # integer frequency indices
        ky, kx = torch.meshgrid(freqs, freqs, indexing="ij")
        radius = size // 2 if max_radius is None else min(size // 2, max_radius)
        used = ((kx**2 + ky**2) <= radius**2) & (ky >= 0)
        #: the inserted pixels: flat indices into an L × L centred spectrum, their (kx, ky) in
        #: 1/L units ``(n, 2)``, and their weight (the row ky = 0 holds both k and −k; at half
        #: weight its symmetrised sum counts it once)
        self.pixels = used.flatten().nonzero()[:, 0]
        self.k2d = torch.stack([kx, ky], -1).reshape(-1, 2)[self.pixels]
        self.row_weight = torch.where(self.k2d[:, 1] == 0, 0.5, 1.0)
        # Temporaries per used pixel of an image: its full spectrum share, value and weight, 3D
        # coordinates, floors and fractions (≈ 80 B), and its cell's index and 8 weights (≈ 40 B)
        # with one corner's spread values at a time.
        self._chunk = max(1, max_chunk_bytes // (len(self.pixels) * 160))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def insert(self, images: torch.Tensor, rotations: torch.Tensor,
               shifts: torch.Tensor | None = None, ctf: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> None:
        """Add ``images (B, L, L)`` in poses ``rotations (B, 3, 3)`` whose content was moved by
        ``shifts (B, 2)`` px (x, y; as in :meth:`FourierProjector.spectra`, so RELION origins go
        through :func:`relion_origin_to_shift`), with CTF ``ctf (B, L, L)`` on the centred grid
        (None: no CTF, c = 1) and per-image ``weights (B,)`` (None: 1; a soft class membership
        q adds q·c·X and q·c²)."""
        size = self.box_size
        if images.ndim != 3 or images.shape[-2:] != (size, size):
            raise InputError(f"images must have shape (B, {size}, {size}), got {tuple(images.shape)}")
        n = images.shape[0]
        expected = {"rotations": (rotations, (n, 3, 3)), "shifts": (shifts, (n, 2)),
                    "ctf": (ctf, (n, size, size)), "weights": (weights, (n,))}
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise InputError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        for start in range(0, n, self._chunk):
            sl = slice(start, min(start + self._chunk, n))
            ctf_values = None if ctf is None else ctf[sl].to(
                device=self.device, dtype=torch.float32).flatten(1)[:, self.pixels]
            self.insert_slices(self.slice_values(images[sl], None if shifts is None else shifts[sl]),
                               rotations[sl], ctf_values,
                               None if weights is None else weights[sl])

    def slice_values(self, images: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, n)`` complex64: the centred spectra of ``images (B, L, L)`` at :attr:`pixels`,
        their content moved back by ``shifts (B, 2)`` (what :meth:`insert_slices` takes)."""
        spectra = fft2c(images.to(device=self.device, dtype=torch.float32))
        if shifts is not None:
            # the image is the projection moved by +shift; moving it back centres the slice
            spectra = phase_shift(spectra, -shifts.to(self.device))
        return spectra.flatten(1)[:, self.pixels]

    def insert_slices(self, values: torch.Tensor, rotations: torch.Tensor,
                      ctf: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """Add slice values ``(B, n)`` (:meth:`slice_values`) in poses ``rotations (B, 3, 3)``,
        with CTF values ``ctf (B, n)`` at :attr:`pixels` and per-image ``weights (B,)`` (see
        :meth:`insert`). A caller that keeps the values of its images across passes (3D
        classification) inserts them without a new transform; chunked like :meth:`insert`."""
        for start in range(0, values.shape[0], self._chunk):
            sl = slice(start, start + self._chunk)
            self._splat(values[sl], rotations[sl], None if ctf is None else ctf[sl],
                        None if weights is None else weights[sl])

    def _splat(self, values, rotations, ctf, image_weights) -> None:
        device = self.device
        values = values.to(device) * self.row_weight
        weights = self.row_weight.expand_as(values)
        if ctf is not None:
            c = ctf.to(device=device, dtype=torch.float32)
            values, weights = values * c, weights * c**2
        if image_weights is not None:
            q = image_weights.to(device=device, dtype=torch.float32)[:, None]
            values, weights = values * q, weights * q
        # A sample whose 2×2×2 cell leaves the grid has |k| ≥ L/2 − 1/padding along an axis
        # (the outermost shell); its weights are zero, so it is dropped.
        cells = slice_cells(self.k2d, rotations.to(device), padding=self.padding,
                            padded_size=self.padded_size, start=0, side=self.padded_size)
        splat(cells, [(self.numerator, values.reshape(-1)), (self.weight, weights.reshape(-1))])

    def reconstruct(self, regulariser: float = 0.0) -> torch.Tensor:
        """The volume ``(L, L, L)`` float32 of Σ c·X / (Σ c² + ``regulariser``) (see the class
        docstring for what the regulariser is); the grids are left as they are."""
        return invert(self.numerator, self.weight, box_size=self.box_size, padding=self.padding,
                      regulariser=regulariser)


def invert(numerator: torch.Tensor, weight: torch.Tensor, *, box_size: int, padding: int = 2,
           regulariser: float = 0.0) -> torch.Tensor:
    """:meth:`BackProjector.reconstruct` of grids held elsewhere (``(P, P, P)`` complex
    numerator and float weight of a :class:`BackProjector` of ``box_size`` and ``padding``, e.g.
    per-class statistics summed over processes), or of their centred windows ``(s, s, s)``
    (:func:`band_window`; zero outside): the division and the band mask are made on the window
    only, the inverse transform is a real one (the symmetrised spectrum is Hermitian)."""
    check_number("regulariser", regulariser, 0.0)
    size, padded = box_size, padding * box_size
    side = numerator.shape[-1]
    if numerator.shape != (side,) * 3 or weight.shape != numerator.shape or not (
            side == padded or (side % 2 and side < padded)):
        raise InputError(f"numerator {tuple(numerator.shape)} and weight {tuple(weight.shape)} "
                         f"must be the ({padded},)*3 grids of box_size={size}, padding={padding} "
                         "or the same odd-sided centred window of them")
    denominator = weight + mirror(weight) + regulariser
    axis = torch.arange(side, device=numerator.device, dtype=torch.float32) - side // 2
    radius2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    used = (denominator > 0) & (radius2 <= (padding * (size // 2)) ** 2)
    # one real factor per voxel: 1 / (Σ c² + regulariser) where divided, 0 elsewhere
    factor = torch.where(used, denominator.clamp_min(1e-30).reciprocal(), 0.0)
    spectrum = (numerator + mirror(numerator).conj()) * factor
    return (padded_inverse(spectrum, size, padded)
            / trilinear_kernel_transform(size, padding, device=numerator.device))


def padded_inverse(spectrum: torch.Tensor, size: int, padded_size: int) -> torch.Tensor:
    """``(L, L, L)`` real: the box of side ``size`` about voxel L // 2 of the inverse transform
    of the Hermitian ``spectrum`` — a centred window ``(s, s, s)`` (s odd) of a P³ grid, P =
    ``padded_size``, zero outside, or the whole grid (s = P) — the adjoint of
    :func:`padded_spectrum`'s pruning: one axis at a time, z and y transformed and kept at the
    box before the next, x last as a real transform of its half kx >= 0, so only lines that
    hold frequencies are transformed and only the box's lines are made."""
    side, centre = spectrum.shape[-1], spectrum.shape[-1] // 2
    # the half kx >= 0 (P // 2 + 1 of them); on the whole even grid, k = −P/2 stands for +P/2
    # (its index 0), elsewhere the frequencies beyond the window are zeros
    top = spectrum[..., :1] if side == padded_size and padded_size % 2 == 0 else (
        spectrum.new_zeros(spectrum.shape[:-1] + (padded_size // 2 + 1 - (side - centre),)))
    lines = torch.cat([spectrum[..., centre:], top], -1)  # (kz, ky, kx) with kx = 0 ... P/2
    for _ in range(2):
        # the first axis still in frequencies: k at the uncentred index k mod P, made last
        lines = lines.permute(1, 2, 0)
        lines = torch.cat([lines[..., centre:],
                           lines.new_zeros(lines.shape[:-1] + (padded_size - side,)),
                           lines[..., :centre]], -1)
        lines = torch.fft.ifft(lines, dim=-1)
        # voxel x at the uncentred index (x − L//2) mod P
        lines = torch.cat([lines[..., padded_size - size // 2:],
                           lines[..., :size - size // 2]], -1)
    # (ky, kx, z) then (kx, z, y): x last, a real transform
    lines = torch.fft.irfft(lines.permute(1, 2, 0), n=padded_size, dim=-1)
    return torch.cat([lines[..., padded_size - size // 2:], lines[..., :size - size // 2]], -1)


def mirror(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` at −k for every k of a centred (P, P, P) grid (k = 0 at index P // 2)."""
    flipped = grid.flip(0, 1, 2)  # index i ↦ P − 1 − i: −k for odd P
    if grid.shape[0] % 2:
        return flipped
    # even P: −k is at (P − i) mod P, one further; index 0 (k = −P/2, no partner) wraps onto itself
    return torch.roll(flipped, shifts=(1, 1, 1), dims=(0, 1, 2))


def reconstruct(
    source_or_images,
    *,
    particles=None,
    pixel_size: float | None = None,
    use_ctf: bool = True,
    regulariser: float = 0.0,
    padding: int = 2,
    chunk_size: int = 1024,
    device=None,
) -> torch.Tensor:
    """Reconstruct ``(L, L, L)`` from particle images and the poses in their RELION particle
    table: an ``ImageSource`` (its ``particles`` and ``pixel_size``; images read ``chunk_size``
    at a time), or images ``(N, L, L)`` with ``particles`` (a DataFrame, RELION-4 column names
    without underscore) and ``pixel_size`` Å.

    Poses: ``rlnAngleRot/Tilt/Psi`` (RELION ZYZ, degrees), origins ``rlnOriginXAngst/YAngst`` ÷
    ``rlnImagePixelSize`` (zero when absent). With ``use_ctf`` and every CTF column present the
    CTF weights each image (``relion_reconstruct --ctf``), as |CTF| for images the table marks
    ``rlnCtfDataArePhaseFlipped`` 1 (``--ctf_phase_flipped``); a missing flag counts as 0, as
    RELION reads it. Runs on ``device`` (default: where the images are). ``regulariser`` and
    ``padding``: :class:`BackProjector`."""
    # data/ imports ops/, so reading a particle table's CTF is imported here, not at the top
    from ackmeans_torch.data.prepared import ctf_of, has_ctf, needs_phase_flip
    from ackmeans_torch.io.star import origins_px
    from ackmeans_torch.ops.rotations import euler_to_matrix

    if isinstance(source_or_images, torch.Tensor):
        if particles is None or pixel_size is None:
            raise InputError("reconstruct from an images tensor needs particles= and pixel_size=")
        images = source_or_images
        if images.ndim != 3 or len(particles) != images.shape[0]:
            raise InputError(f"images {tuple(images.shape)} must be (N, L, L) with one particle "
                             f"row each ({len(particles)} rows)")
        chunks = ((np.arange(s, min(s + chunk_size, len(images))), images[s : s + chunk_size])
                  for s in range(0, len(images), chunk_size))
        device = images.device if device is None else device
        size = images.shape[-1]
    else:
        particles, pixel_size = source_or_images.particles, source_or_images.pixel_size
        chunks = source_or_images.chunks(chunk_size)
        device = source_or_images.device if device is None else device
        size = source_or_images.box_size
    particles = particles.reset_index(drop=True)
    angles = torch.from_numpy(
        particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64, copy=True))
    rotations = euler_to_matrix(angles).to(torch.float32)
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(particles.columns):
        shifts = relion_origin_to_shift(torch.from_numpy(origins_px(particles))).to(torch.float32)
    else:
        shifts = torch.zeros(len(particles), 2)
    with_ctf = use_ctf and has_ctf(particles)
    flipped = with_ctf and not needs_phase_flip(particles)
    back = BackProjector(size, padding=padding, device=device)
    for idx, images in chunks:
        ctf = None
        if with_ctf:
            ctf = ctf_of(particles.iloc[idx], size=size, pixel_size=pixel_size, device=back.device)
            ctf = ctf.abs() if flipped else ctf
        back.insert(images, rotations[idx], shifts[idx], ctf)
    return back.reconstruct(regulariser)
