"""3D classification with known poses as a :class:`~ackmeans_torch.cluster.engine.Dissimilarity`:
the E-step compares each particle with every class map projected in the particle's pose, the
M-step reconstructs each class from its members, so the ACK-means loop (any size rule, the
scale-out and checkpoint hooks) runs 3D classification unchanged.

E-step, for particle i with pose A_i, origin t_i and CTF c_i and class map V_k:

    d_ik = Σ_f w_f |X_i(f) − c_i(f) · P_{A_i}(V_k)(f)|²

over the half plane of 2D frequencies f with ky ≥ 0 (the row ky = 0 at half weight: the other
half is the conjugate) out to the target resolution; X_i is the spectrum of the particle image
under the soft circular particle mask, moved back by its origin. ``w_f`` is 1, or 1/σ²(shell)
with ``whiten`` (σ² the members' residual power per shell, measured in the previous M-step:
RELION's noise model). With ``scale`` (the default of ``run_class3d``) every projection of
particle i is scaled by one factor a_i, the least-squares a = max(0, Re⟨X, cP_k⟩ / ‖cP_k‖²)
of the class k it fits best when each class has its own (RELION's per-particle scale correction,
which it takes from the particle's reference). Per-image normalisation leaves the particles'
contrast a few % apart, and states that differ by a small mass (the 70S benchmark: a domain of
4 % present, turned or absent) are then told apart by it: a brighter particle is nearer the
heavier map, a fainter one the lighter (``tests/test_class3d.py``). Without the factor, K-means
from the maps of the true partition of the 30,000-particle benchmark set drained the lighter
state round by round (6,000 → 332 particles in 8 rounds, 0.754 correct after 12 at a 0.2 %
criterion), with stronger reconstruction regularisation faster; with it the classes held
(0.904 after 10 rounds with the own-class correction; from the variability start grouped by
K-means 0.870). A
factor per class instead fits away the mass by which the states differ (0.873 from the true
partition's maps), and one fitted to the mean of the K slices favours the lighter map under
soft EM (its class grew from 6,663 to 9,055 expected members in 12 rounds).
All K projections of a chunk come from one sparse product (:meth:`FourierProjector.sample_cells`:
each pixel's 8 trilinear corners, every class at once, without the CTF), Σ w·Re(X̄·cP_k) and
Σ w·|cP_k|² are batched products over the pixels with the CTF in the weights, and the own-class
correction is made for each particle's current class only, from the same kept projections.

Where the time goes (one round: every particle compared with K maps, then inserted into its
class): per band pixel, the 8 corners of its trilinear cell on the padded grid. The poses never
change, so each particle's cells are made once and kept, and so are each chunk's points sorted
by cell as the M-step inserts them, while they fit in ``cache_bytes`` (``CACHE_BYTES``); the
statistics hold only the window of the padded grid the band
reaches (:func:`~ackmeans_torch.ops.projection.band_window`), so the grids and the inversions
are that much smaller; every chunk is inserted straight into the pass's grids
(:meth:`SliceMatch.add_statistics`), and once few particles change class a round only takes
those out of their old class and puts them into the new one (the engine's incremental M-step).

M-step, per class, from the summed statistics: the numerator Σ c·X and weight Σ c² of each half
set (particles split once by ``rlnRandomSubset`` when the table has it, else alternately), as
:class:`BackProjector` inserts them, on the band's window, all classes and halves of a chunk in
one splat (:func:`~ackmeans_torch.ops.projection.splat_corners`), so the statistics add over
chunks and processes. Each class gives two half maps and the full map, each Σ c·X / (Σ c² + ε) with
ε = ``regularisation`` × the class's mean weight per voxel (a constant Wiener term that keeps
sparsely sampled voxels from dividing by almost nothing). During the loop only the band out to the target resolution is
back-projected (the references are low-passed there anyway; the cost grows with the band's
area); the final maps are made once more from the final classes to Nyquist
(:meth:`SliceMatch.full_band`). The half maps' FSC (under the reference mask) gives the class's
resolution at 0.143. The class map that is written is the full map weighted by √(2·FSC / (1 +
FSC)) per shell (the figure of merit of the full map, Rosenthal & Henderson 2003). The
reference the next E-step scores particles against is shrunk harder: the full map weighted by
w = (2·FSC / (1 + FSC))^p per shell (``fsc_power`` p; p = 1 is the Wiener filter of a map whose
per-shell SNR is 2·FSC / (1 − FSC)), low-passed to the target resolution and multiplied by the
reference mask. A reference's noise adds to every particle's distance to it in the shells
where it is noisy, the more so for the smaller classes, and a shell the two half maps barely
agree in tells the classes apart by their noise; the higher power takes those shells out of
the distance sooner. Measured on the 70S benchmark set (3 states, 64 px, SNR 1/10, 12 Å, poses
refined 2 rounds), by the held-out maps of the true partition (each tenth of the particles
scored by the maps of the other nine tenths): at 3,000 particles p = 0.5 assigns 0.781, 1
0.812, 2 0.833, 3 0.832, 4 0.835, 6 0.827; at 30,000, p = 0.5 0.881, 1 0.889, 2 0.897, 4 0.903
(the true maps: 0.912). Without the FSC weight (p = 0) 0.685 at 3,000. An empty class keeps
its map.

A particle is part of its own class's map, which fits its noise: measured on 2,000 particles in
three states (40 px, SNR 1/10), removing one particle from its class raises its distance by
1.3 % (a 2D class mean of the same size: 0.3 %), and the true partition then scores worse than
wrong ones. :meth:`leave_one_out` (the engine's own-class correction) removes it per Fourier
pixel: with α = c²·s / W̄ the particle's share of the voxels its slice passes through (W̄ the
class's weight Σ c² + ε averaged over the shell, s = (2/3)³ / padding³ the mean overlap of
trilinear insertion and interpolation spread over the padded grid by the crop to L³) and g the
filter gain there (FSC weight × low-pass), the residual to the map without the particle is
(r − α(1 − g)·X) / (1 − α), r = X − c·P. On the same set this predicts 0.8 % for the
measured 1.3 % (it under-corrects: the crop and the mask spread a voxel further than the
padding³ assumes; with padding² it would over-correct, 1.7 %); it raised the fraction of
correctly assigned particles there from 0.67 to 0.70. On the 70S benchmark set (30,000
particles, 64 px) it predicts 1/1.90 of the measured effect of taking 1,500 particles out of
the true partition's maps (1.90, 1.88, 1.91 for the three classes); a probe of unit-weight
masked white noise through the same insertion, division, crop, mask and interpolation gives
1.92: the particle mask correlates neighbouring Fourier pixels, which the crop couples. Scaled
up by that factor the correction lowers the loop's accuracy there (K-means from the variability
start with a scale factor per class 0.872 → 0.862, and the loop then swings between two
labellings, ~4 % changing each round), so it is left as it is; in 3D the loop runs without it
by default (``classify3d`` config: ``leave_one_out: false``), since even uncalibrated it makes
the labels swing (1.15 % of the particles each round after 10 rounds, where without it 0.11 %
change after 4, at the same accuracy: 0.870 with, 0.872 without). Without it the loop moves less
from its start, as a member's own noise holds it in its class (from the true partition's maps:
0.941 kept, where the held-out maps of that partition assign 0.881).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ackmeans_torch.cluster.engine import Dissimilarity
from ackmeans_torch.data.prepared import ctf_of, has_ctf, needs_phase_flip
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError, check_number
from ackmeans_torch.io.star import origins_px
from ackmeans_torch.ops.fourier import filter_shells, fsc, resolution_at, shell_index
from ackmeans_torch.ops.polar import circular_mask, spherical_mask
from ackmeans_torch.ops.projection import (
    BackProjector, Cells, FourierProjector, band_window, cell_offsets, invert, mirror,
    relion_origin_to_shift, slice_cells, sort_cells, splat_corners,
)
from ackmeans_torch.ops.rotations import euler_to_matrix

__all__ = ["SliceMatch", "POSE_COLUMNS", "low_pass_gains"]

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
#: width (px) of the raised-cosine edge of the particle and sphere masks and of the low-pass
SOFT_EDGE = 3.0
#: memory for what is kept across passes, in this order while the sum fits (each part else made
#: afresh in every pass): every particle's spectrum and CTF at the band's pixels (12 B a pixel),
#: their trilinear cells on the padded grid, as the poses never change (64 B a pixel), and each
#: chunk's points sorted by cell as the M-step inserts them (:meth:`SliceMatch._points`, 52 B a
#: pixel): 30,000 particles at 64 px and a 12 Å band of 5.08 Å pixels (1,184 pixels) take 4.5 GB
CACHE_BYTES = 7 * 2**30
#: mean overlap Π (1 − f)² + f² of trilinear insertion and interpolation at the same point,
#: f uniform in each axis (leave_one_out)
OVERLAP = (2 / 3) ** 3
#: voxels with less weight than this fraction of a grid's largest count as not reached (ε)
WEIGHT_FLOOR = 1e-6
#: default power p of the references' per-shell weight (2·FSC / (1 + FSC))^p (module docstring)
FSC_POWER = 4.0


def low_pass_gains(size: int, radius: float) -> Tensor:
    """``(L // 2 + 1,)`` gains of a low-pass at ``radius`` shells (1/L units) with a raised-cosine
    fall of :data:`SOFT_EDGE` shells ending there."""
    shells = torch.arange(size // 2 + 1, dtype=torch.float32)
    ramp = ((radius - shells) / SOFT_EDGE).clamp(0, 1)
    return torch.sin(ramp * (math.pi / 2)) ** 2


def _consecutive(index: Tensor) -> bool:
    """``index (B,)`` is a consecutive range of two or more, as the loop's chunks are."""
    return len(index) > 1 and bool((index.diff() == 1).all())


def _rows(index: Tensor, device) -> slice | Tensor:
    """``index (B,)`` as rows of a per-particle table: a slice (a view, no gather) when it is a
    consecutive range, else the index on ``device``."""
    if _consecutive(index):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index.to(device)


class SliceMatch(Dissimilarity):
    """The 3D classification data of ``source`` (particle images with poses and CTF in their
    table) for the clustering loop; centres are class maps ``(K, L, L, L)`` (module docstring).

    ``resolution``: the target resolution (Å) of the E-step band and of the references' low-pass
    (None: Nyquist). ``mask_radius``: the particle mask (px). ``reference_mask``: ``(L, L, L)``
    values in [0, 1] the maps are multiplied by (None: a soft sphere of ``mask_radius``).
    ``whiten``, ``scale``, ``regularisation``, ``fsc_power``: module docstring. ``padding``: of
    the projector and back-projector (RELION's 2). ``use_ctf``: weight by the CTF when the table
    has one.
    ``cache_bytes``: memory for what is kept across passes (:data:`CACHE_BYTES`).
    """

    def __init__(self, source: ImageSource, *, resolution: float | None = None,
                 mask_radius: float | None = None, reference_mask: Tensor | None = None,
                 whiten: bool = False, scale: bool = False, regularisation: float = 0.01,
                 fsc_power: float = FSC_POWER, padding: int = 2, use_ctf: bool = True,
                 cache_bytes: int = CACHE_BYTES) -> None:
        particles = source.particles.reset_index(drop=True)
        missing = [c for c in POSE_COLUMNS if c not in particles]
        if missing:
            raise InputError(f"the particle table has no {', '.join(missing)}: 3D classification "
                             "needs the poses of a refinement (rlnAngleRot/Tilt/Psi)")
        check_number("regularisation", regularisation, 0.0)
        check_number("fsc_power", fsc_power, 0.0)
        check_number("cache_bytes", cache_bytes, 0.0)
        self.cache_bytes = cache_bytes
        self.source = source
        self.n_items = len(source)
        self.box_size = size = source.box_size
        self.pixel_size = source.pixel_size
        self.padding = padding
        self.device = device = source.device
        self.whiten, self.scale, self.regularisation = whiten, scale, regularisation
        self.fsc_power = fsc_power
        angles = torch.from_numpy(particles[list(POSE_COLUMNS)].to_numpy(np.float64, copy=True))
        self.rotations = euler_to_matrix(angles).to(device=device, dtype=torch.float32)
        if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(particles.columns):
            self.shifts = relion_origin_to_shift(
                torch.from_numpy(origins_px(particles))).to(device=device, dtype=torch.float32)
        else:
            self.shifts = torch.zeros(len(particles), 2, device=device)
        self.particles = particles
        self.with_ctf = use_ctf and has_ctf(particles)
        # |CTF| for images whose phases are flipped already (the data carry |c|·F)
        self.flipped = self.with_ctf and (source.phase_flipped or not needs_phase_flip(particles))
        if "rlnRandomSubset" in particles:
            subset = particles["rlnRandomSubset"].to_numpy()
            if not set(np.unique(subset)) <= {1, 2}:
                raise InputError("rlnRandomSubset must be 1 or 2 for every particle")
            self.halves = torch.from_numpy(subset.astype(np.int64) - 1)
        else:
            self.halves = torch.arange(self.n_items) % 2
        nyquist = size // 2
        if resolution is not None:
            check_number("resolution", resolution, 2 * self.pixel_size)
        self.band = nyquist if resolution is None else min(
            nyquist, size * self.pixel_size / resolution)
        mask_radius = nyquist - 1 if mask_radius is None else mask_radius
        self.particle_mask = circular_mask(size, mask_radius, soft_edge=SOFT_EDGE, device=device)
        self.reference_mask = (
            spherical_mask(size, mask_radius, soft_edge=SOFT_EDGE, device=device)
            if reference_mask is None else reference_mask.to(device))
        self.n_shells = nyquist + 1
        self.shell_weight = torch.ones(self.n_shells, device=device)
        # the own-class correction (leave_one_out): per class and shell W̄ and gains, known
        # after the first M-step; the last E-step's particles, their values and plain distances
        self._share: Tensor | None = None
        self._gain: Tensor | None = None
        self._n_classes = 0
        self._last: tuple[Tensor, dict[str, Tensor], Tensor] | None = None
        # the loop's maps need only the band; :meth:`full_band` widens it for the final maps
        self._use(BackProjector(size, padding=padding, device=device, max_radius=self.band),
                  cache=True)
        #: what the last complete M-step made (maps, half maps, FSC, resolution per class)
        self.last: dict[str, Tensor | np.ndarray] = {}

    # -- particles --------------------------------------------------------------------------
    def _use(self, back: BackProjector, *, cache: bool) -> None:
        """Compare and insert at ``back``'s pixels; with ``cache``, keep every particle's
        values, then their cells, then each chunk's sorted points across passes while the sum
        fits in ``cache_bytes`` (:data:`CACHE_BYTES`)."""
        self._back = back
        self._projector = None  # its kept slices are at the old pixels
        self._cells: tuple[Tensor, tuple[int, int], Cells] | None = None
        #: the window of the padded grid the statistics hold (:func:`band_window`): the band's
        #: cells and shells; the whole grid to Nyquist
        self.window = band_window(back.padded_size, self.padding, back.max_radius, border=False)
        #: the band's pixels (flat indices into the centred L × L spectrum), their (kx, ky) and
        #: half-plane weights, and their shells (the back-projector's; public for the callers that
        #: compare or insert the cached spectra themselves, class3d/variability.py)
        self._pixels, self.k2d, self.row_weight = back.pixels, back.k2d, back.row_weight
        side = self.window[1]
        axis = (torch.arange(side, device=self.device, dtype=torch.float64) - side // 2) ** 2
        radius = (axis[:, None, None] + axis[None, :, None] + axis[None, None, :]).sqrt()
        self._padded_shells = (radius / self.padding).round().long().flatten()
        self.pixel_shell = shell_index(self.box_size, 2, device=self.device).flatten()[back.pixels]
        n_pix = len(back.pixels)
        per_pixel = {"values": 12, "cells": 64, "points": 52}
        kept, used = set(), 0
        for part, size in per_pixel.items():
            if cache and used + self.n_items * n_pix * size <= self.cache_bytes:
                kept.add(part)
                used += self.n_items * n_pix * size
        self._cache = None
        if "values" in kept:
            self._cache = {"x": torch.zeros((self.n_items, n_pix), dtype=torch.complex64,
                                            device=self.device),
                           "ctf": torch.ones((self.n_items, n_pix), device=self.device),
                           "filled": torch.zeros(self.n_items, dtype=torch.bool)}
        self._cell_cache = None
        if "cells" in kept:
            self._cell_cache = {
                "columns": torch.zeros((self.n_items, n_pix, 8), dtype=torch.int32,
                                       device=self.device),
                "weights": torch.zeros((self.n_items, n_pix, 8), device=self.device),
                "filled": torch.zeros(self.n_items, dtype=torch.bool)}
        self._points_cache = {} if "points" in kept else None

    def _compute(self, index: Tensor) -> dict[str, Tensor]:
        """The particles' masked spectra at the pixels, moved back by their origins, and their
        CTF values there (1 without a CTF)."""
        idx = index.cpu().numpy()
        images = self.source.images(idx).to(self.device) * self.particle_mask
        values = {"x": self._back.slice_values(images, self.shifts[index.to(self.device)])}
        if self.with_ctf:
            ctf = ctf_of(self.particles.iloc[idx], size=self.box_size, pixel_size=self.pixel_size,
                         device=self.device).flatten(1)[:, self._pixels]
            values["ctf"] = ctf.abs() if self.flipped else ctf
        else:
            values["ctf"] = torch.ones(values["x"].shape, device=self.device)
        return values

    def read(self, index: Tensor) -> dict[str, Tensor]:
        """:meth:`_compute` of ``index``, from the cache where the particles were seen before
        (images, FFTs and CTFs are the same every pass)."""
        if self._cache is None:
            return self._compute(index)
        cache = self._cache
        new = index[~cache["filled"][index.cpu()].to(index.device)]
        if len(new):
            computed = self._compute(new)
            rows = new.to(self.device)
            cache["x"][rows], cache["ctf"][rows] = computed["x"], computed["ctf"]
            cache["filled"][new.cpu()] = True
        rows = index.to(self.device)
        return {"x": cache["x"][rows], "ctf": cache["ctf"][rows]}

    def _slice_cells(self, index: Tensor, window: tuple[int, int]) -> Cells:
        """The trilinear cells of the particles' band pixels on ``window``: the last chunk's are
        kept (its E-step and M-step sample and splat at the same points), and every particle's
        on the statistics' window where they fit in ``cache_bytes`` (the poses never
        change, so neither do the cells: ``rotations`` must not change after the first pass)."""
        kept = self._cells
        if kept is not None and kept[1] == window and torch.equal(kept[0], index):
            return kept[2]
        start, side = window
        cache = self._cell_cache if window == self.window else None
        if cache is None:
            cells = slice_cells(self.k2d, self.rotations[index.to(self.device)],
                                padding=self.padding, padded_size=self._back.padded_size,
                                start=start, side=side)
        else:
            new = index[~cache["filled"][index.cpu()].to(index.device)]
            if len(new):
                made = slice_cells(self.k2d, self.rotations[new.to(self.device)],
                                   padding=self.padding, padded_size=self._back.padded_size,
                                   start=start, side=side)
                rows = new.to(self.device)
                cache["columns"][rows] = made.columns.view(len(new), -1, 8)
                cache["weights"][rows] = made.weights.view(len(new), -1, 8)
                cache["filled"][new.cpu()] = True
            rows = _rows(index, self.device)
            cells = Cells(cache["columns"][rows].view(-1, 8), cache["weights"][rows].view(-1, 8))
        self._cells = (index.clone(), window, cells)
        return cells

    def _slices(self, index: Tensor, centers: Tensor) -> Tensor:
        """``(B, n, 2, K)`` real and imaginary parts of P_A(V_k) at the pixels (no CTF); the
        last chunk's are kept (the loop asks for its distances, then for its own-class
        correction, and with ``whiten`` for its residuals to the same maps)."""
        if self._projector is None or self._projector[0] is not centers:
            # held with the centres it was made from: the same tensor object within a pass
            self._projector = (centers, FourierProjector(centers, padding=self.padding,
                                                         max_radius=self._back.max_radius), None)
        last = self._projector[2]
        if last is not None and torch.equal(last[0], index):
            return last[1]
        projector = self._projector[1]
        cells = self._slice_cells(index, projector.window)
        slices = projector.sample_cells(cells).view(len(index), -1, 2, centers.shape[0])
        self._projector = (*self._projector[:2], (index.clone(), slices))
        return slices

    @property
    def pixel_weight(self) -> Tensor:
        """``(n,)`` the distance's weight of each band pixel: half-plane weight × noise weight."""
        return self.row_weight * self.shell_weight[self.pixel_shell]

    def items(self, index: Tensor) -> Tensor:
        raise InputError("3D classes start from maps (class3d init: simple, maps or reference), "
                         "not from particle images")

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        data = self.read(index)
        x, ctf = data["x"], data["ctf"]
        p = self._slices(index, centers)
        b, n, _, k = p.shape
        w = self.pixel_weight
        # Σ w|X|², Σ w·Re(X̄·cP_k) and Σ w|cP_k|² as batched matrix-vector products over the
        # pixels' real parts, the CTF in the weights: no (B, n, K) temporaries beyond P²
        # (sums over a trailing axis of 2 are slow: real and imaginary parts are named instead).
        # Each as (B, ·, n)·(B, n, 1), which runs 1.5–2× faster than (B, 1, n)·(B, n, ·); |P|²
        # weighs its real and imaginary parts alike, so both are summed over the n pixels
        # at once and added after
        xx = torch.addcmul(x.real * x.real, x.imag, x.imag) @ w
        xw = torch.view_as_real(x) * (w * ctf)[..., None]
        sxp = (p.view(b, 2 * n, k).transpose(1, 2) @ xw.view(b, 2 * n, 1)).view(b, k)
        parts = p.square().view(b, n, 2 * k).transpose(1, 2) @ (w * ctf.square())[..., None]
        spp = parts.view(b, 2, k).sum(1)
        plain = xx[:, None] - 2 * sxp + spp
        if self.scale:
            # one factor per particle for every class (module docstring): the least-squares
            # factor of the class it fits best with its own (the scaled distance is then
            # Σ w|X|² − a·Σ w·Re(X̄·cP))
            fit = (sxp / spp.clamp_min(1e-30)).clamp_min(0)
            a = fit.gather(1, (xx[:, None] - fit * sxp).argmin(1, keepdim=True))
            d = xx[:, None] - 2 * a * sxp + a.square() * spp
        else:
            d = plain
        self._last = (index, data, plain)
        return d.clamp_min(0.0)

    def leave_one_out(self, d: Tensor, current: Tensor, members: Tensor) -> Tensor:
        """Own-class distances to the class map without the particle (module docstring) for
        the rows of the last :meth:`dissimilarity` call (the loop corrects each chunk's
        distances as it makes them): d_ik × the ratio of the distance without the particle to
        the plain one, for its current class k only."""
        if self._share is None or self._n_classes != d.shape[1] or not len(d):
            return d
        index, data, plain = self._last
        if d.shape[0] != len(index):
            raise InputError(f"leave_one_out takes the {len(index)} rows of the last "
                             f"dissimilarity call, got {d.shape[0]}")
        own = current.clamp_min(0)  # (a particle in no class yet is left as it is)
        p = self._slices(index, self._projector[0])
        p = p.gather(3, own[:, None, None, None].expand(*p.shape[:3], 1))[..., 0]
        factor = self._own_class_factor(data["x"], data["ctf"], p, own,
                                        plain.gather(1, own[:, None])[:, 0])
        rows = torch.nonzero(current >= 0).squeeze(1)
        out = d.clone()
        out[rows, own[rows]] = d[rows, own[rows]] * factor[rows]
        return out

    def _own_share(self, k: int, weight: Tensor, gains: Tensor) -> None:
        """Class ``k``'s shell-averaged weight W̄ (with ε, as :meth:`reconstruct` divides) and
        filter gains, for :meth:`leave_one_out`."""
        epsilon = self._epsilon(weight)
        symmetric = (weight + mirror(weight)).flatten().double()
        shells = self._padded_shells
        total = torch.zeros(max(int(shells.max()) + 1, self.n_shells), dtype=torch.float64,
                            device=self.device)
        count = torch.zeros_like(total)
        total.index_add_(0, shells, symmetric)
        count.index_add_(0, shells, torch.ones_like(symmetric))
        mean = (total / count.clamp_min(1))[: self.n_shells] + epsilon
        if self._share is None:
            self._share = torch.full((self._n_classes, self.n_shells), math.inf,
                                     dtype=torch.float64, device=self.device)
            self._gain = torch.ones((self._n_classes, self.n_shells), device=self.device)
        self._share[k] = mean
        self._gain[k] = gains[: self.n_shells].to(self.device)

    def _own_class_factor(self, x: Tensor, ctf: Tensor, p: Tensor, own: Tensor,
                          before: Tensor) -> Tensor:
        """``(B,)`` ratio of each particle's distance to its class's map without it to the
        distance with it (module docstring), from its values ``x``, ``ctf (B, n)``, its class's
        projection ``p (B, n, 2)`` (no CTF), its class ``own (B,)`` and its plain distance
        ``before (B,)``: with r = X − cP and β = α(1 − g), |r − βX|² = (1 − β)²|X|²
        − 2(1 − β) Re(X̄·cP) + |cP|², so no complex residual is formed."""
        shell = self.pixel_shell
        # per class and pixel (K, n), then each particle's class's row
        share = (OVERLAP / self.padding**3 / self._share[:, shell]).float().index_select(0, own)
        loss = (1 - self._gain[:, shell]).index_select(0, own)
        c2 = ctf.square()
        alpha = (c2 * share).clamp_(max=0.5)
        keep = loss.mul_(alpha).neg_().add_(1)  # 1 − β
        scale = (1 - alpha).square_().reciprocal_().mul_(self.pixel_weight)
        re, im, p_re, p_im = x.real, x.imag, p[..., 0], p[..., 1]
        x2 = torch.addcmul(re * re, im, im)
        xp = torch.addcmul(re * p_re, im, p_im).mul_(ctf)
        p2 = torch.addcmul(p_re * p_re, p_im, p_im).mul_(c2)
        after = keep * x2
        after.sub_(xp, alpha=2).mul_(keep).add_(p2).mul_(scale)
        return after.sum(1) / before.clamp_min(1e-30)

    # -- M-step ----------------------------------------------------------------------------
    def _empty(self, k: int) -> dict[str, Tensor]:
        side = self.window[1]
        return {"numerator": torch.zeros((k, 2) + (side,) * 3, dtype=torch.complex64,
                                         device=self.device),
                "weight": torch.zeros((k, 2) + (side,) * 3, dtype=torch.float32, device=self.device),
                "residual": torch.zeros((self.n_shells,), dtype=torch.float64, device=self.device),
                "residual_count": torch.zeros((self.n_shells,), dtype=torch.float64,
                                              device=self.device)}

    def _insert(self, stats: dict[str, Tensor], points: dict[str, Tensor], slots: Tensor,
                weights: Tensor | None, sign: int = 1) -> None:
        """Back-project the particles of ``points`` (:meth:`_points`) into the windows
        ``slots (B,)`` (class·2 + half; −1: none) of the statistics, multiplied by
        ``weights (B,)`` (soft memberships; None: 1) and ``sign`` (−1 takes them out again), in
        one splat of the points in the order of their cells: ``index_add_`` then walks each
        window almost in order (the slots' windows interleave, each in order), measured 3–4
        times faster than in pixel order."""
        particle, first, corners = points["particle"], points["first"], points["weights"]
        value, power = points["value"], points["power"]
        point_slot = slots.to(self.device).index_select(0, particle)
        if bool((point_slot < 0).any()):
            keep = point_slot >= 0
            particle, first, corners = particle[keep], first[keep], corners[:, keep]
            value, power, point_slot = value[keep], power[keep], point_slot[keep]
        if weights is not None:
            q = weights.to(self.device).float().index_select(0, particle)
            value, power = value * q, power * q
        if sign != 1:
            value, power = -value, -power  # (not in place: the kept points are read again)
        first = first.long() + point_slot * self.window[1] ** 3
        splat_corners(corners, list(cell_offsets(self.window[1])),
                      [(stats["numerator"], value), (stats["weight"], power)], first)

    def _points(self, index: Tensor, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """The chunk's points (particle × band pixel) sorted by their cells' lowest corners on
        the statistics' window: those corners ``first`` (int32), the corners' ``weights (8, m)``
        corner by corner, ``value`` c·X and ``power`` c² times the half-plane weight, and each
        point's ``particle`` (its row in the chunk, int32). Kept for the loop's chunks
        (consecutive ranges, the same every pass) while they fit in ``cache_bytes``:
        sorting and gathering them again in every pass cost more than inserting them (measured
        0.105 s against 0.043 s a chunk of 1,024 particles at 620 pixels); made afresh for other
        particles (those that change class, taken out of one class and put into another)."""
        key = (int(index[0]), len(index)) if _consecutive(index) else None
        if self._points_cache is not None and key in self._points_cache:
            return self._points_cache[key]
        order, first, corners = sort_cells(self._slice_cells(index, self.window))
        ctf = data["ctf"]
        points = {
            "first": first, "weights": corners,
            "value": (data["x"] * (ctf * self.row_weight)).view(-1).index_select(0, order),
            "power": (ctf.square() * self.row_weight).view(-1).index_select(0, order),
            "particle": torch.div(order, len(self._pixels), rounding_mode="floor").int()}
        if self._points_cache is not None and key is not None:
            self._points_cache[key] = points
        return points

    def _add_residuals(self, stats, index, labels, centers, data, sign: int = 1) -> None:
        """Σ |X − c·P_own|² per shell of each particle against its class (the noise model),
        times ``sign``."""
        p = self._slices(index, centers)
        own = p.gather(3, labels.to(self.device)[:, None, None, None].expand(*p.shape[:3], 1))
        own = own[..., 0] * data["ctf"][..., None]
        residual = (torch.view_as_real(data["x"]) - own).square().sum(-1)
        power = (self.row_weight * residual).double().sum(0)
        stats["residual"].index_add_(0, self.pixel_shell, power, alpha=sign)
        stats["residual_count"].index_add_(
            0, self.pixel_shell, self.row_weight.double().expand(len(index), -1).sum(0),
            alpha=sign)

    @property
    def incremental(self) -> bool:
        """The statistics are the members' insertions alone (:attr:`Dissimilarity.incremental`),
        unless the noise model's residuals (against the maps) are among them, or nothing
        regularises the division (where every particle was taken out, float rounding would be
        divided by float rounding)."""
        return not self.whiten and self.regularisation > 0

    def statistics(self, index: Tensor, labels: Tensor, centers: Tensor) -> dict[str, Tensor]:
        return self.add_statistics(None, index, labels, centers)

    def add_statistics(self, total: dict[str, Tensor] | None, index: Tensor, labels: Tensor,
                       centers: Tensor, *, sign: int = 1) -> dict[str, Tensor]:
        """:meth:`statistics` of the particles inserted straight into ``total``'s grids (no
        grids per chunk to allocate, zero and add: measured 4 s of a 23 s pass at 30k)."""
        stats = self._empty(centers.shape[0]) if total is None else total
        if not len(index):
            return stats
        data = self.read(index)
        labels = labels.to(self.device)
        halves = self.halves[index.cpu()].to(self.device)
        self._insert(stats, self._points(index, data), labels * 2 + halves, None, sign)
        if self.whiten:
            self._add_residuals(stats, index, labels, centers, data, sign)
        return stats

    def move_statistics(self, total: dict[str, Tensor], index: Tensor, old: Tensor, new: Tensor,
                        centers: Tensor) -> dict[str, Tensor]:
        """:meth:`Dissimilarity.move_statistics` with the particles' points made once for both
        insertions (they are not the loop's chunks, so not kept: making them costs more than
        one insertion)."""
        if self.whiten:
            return super().move_statistics(total, index, old, new, centers)
        data = self.read(index)
        points = self._points(index, data)
        halves = self.halves[index.cpu()].to(self.device)
        self._insert(total, points, old.to(self.device) * 2 + halves, None, -1)
        self._insert(total, points, new.to(self.device) * 2 + halves, None)
        return total

    def soft_statistics(self, index: Tensor, q: Tensor, centers: Tensor) -> dict[str, Tensor]:
        """Statistics with memberships ``q (B, K)``: each particle enters every class with its
        weight (below 10⁻³ of the row's largest it is skipped: it would change nothing)."""
        stats = self._empty(centers.shape[0])
        if not len(index):
            return stats
        data = self.read(index)
        q = q.to(self.device)
        keep = q >= 1e-3 * q.amax(1, keepdim=True)
        halves = self.halves[index.cpu()].to(self.device)
        points = self._points(index, data)
        for k in range(q.shape[1]):
            if bool(keep[:, k].any()):
                self._insert(stats, points, torch.where(keep[:, k], k * 2 + halves, -1), q[:, k])
        if self.whiten:
            self._add_residuals(stats, index, q.argmax(1), centers, data)
        return stats

    def full_band(self) -> None:
        """Back-project every frequency to Nyquist from now on (the final maps, their half-map
        FSC and resolution are not limited by the target resolution of the loop): one more pass,
        read afresh, so the band's cache is let go."""
        self._use(BackProjector(self.box_size, padding=self.padding, device=self.device),
                  cache=False)

    def reconstruct(self, numerator: Tensor, weight: Tensor) -> Tensor:
        """The map Σ c·X / (Σ c² + ε) of padded grids ``numerator``/``weight`` (module docstring)."""
        return invert(numerator, weight, box_size=self.box_size, padding=self.padding,
                      regulariser=self._epsilon(weight))

    def _epsilon(self, weight: Tensor) -> float:
        """ε = ``regularisation`` × the mean weight of the voxels the members reach: those above
        :data:`WEIGHT_FLOOR` of the largest (an incremental M-step leaves float rounding, not
        exact zeros, where it took every particle out)."""
        if not weight.numel():
            return 0.0
        # sums under the mask, not a gather of the masked voxels (3× faster on a 97³ window)
        used = weight > WEIGHT_FLOOR * weight.max()
        count = int(used.sum())
        if not count:
            return 0.0
        return self.regularisation * float(torch.where(used, weight, 0.0).sum()) / count

    def update(self, statistics: dict[str, Tensor], previous: Tensor) -> Tensor:
        counts = statistics["counts"]
        numerator, weight = statistics["numerator"], statistics["weight"]
        k, size = previous.shape[0], self.box_size
        if self._n_classes != k:
            self._n_classes, self._share = k, None
        references, maps = previous.clone(), previous.clone()
        halves = previous.new_zeros((k, 2, size, size, size))
        curves = np.zeros((k, self.n_shells))
        gains = low_pass_gains(size, self.band).to(self.device)
        filters = []
        for j in range(k):
            if not float(counts[j]) > 0:
                continue
            for h in (0, 1):
                halves[j, h] = self.reconstruct(numerator[j, h], weight[j, h])
            full = self.reconstruct(numerator[j].sum(0), weight[j].sum(0))
            curve = fsc(halves[j, 0] * self.reference_mask, halves[j, 1] * self.reference_mask)
            curves[j] = curve.cpu().numpy()
            wiener = (2 * curve / (1 + curve)).clamp(0, 1).float()
            maps[j] = filter_shells(full, wiener.sqrt()) * self.reference_mask
            gain = wiener ** self.fsc_power * gains
            references[j] = filter_shells(full, gain) * self.reference_mask
            filters.append((j, gain))
        # a complete M-step (not the reseeding of one class from part of another) is recorded
        if float(counts.sum()) >= self.n_items - 0.5:
            for j, gain in filters:
                self._own_share(j, weight[j].sum(0), gain)
            two = (weight.flatten(2).amax(-1) > 0).all(1).cpu().numpy() & (counts.cpu().numpy() > 0)
            resolution = np.where(two, resolution_at(curves, box_size=size,
                                                     pixel_size=self.pixel_size), 999.0)
            self.last = {"maps": maps.clone(), "half_maps": halves, "fsc": curves,
                         "resolution": resolution}
            if self.whiten and float(statistics["residual_count"].sum()) > 0:
                sigma2 = statistics["residual"] / statistics["residual_count"].clamp_min(1)
                floor = sigma2[sigma2 > 0].min() if bool((sigma2 > 0).any()) else 1.0
                # 1/σ² per shell, scaled to mean 1 so distances keep their units roughly
                inv = 1.0 / sigma2.clamp_min(floor)
                self.shell_weight = (inv / inv.mean()).float()
        return references
