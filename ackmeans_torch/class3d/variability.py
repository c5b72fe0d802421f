"""Components of variability: the principal directions in which the particles' maps differ
from the consensus map, estimated from every particle at its pose (probabilistic PCA in volume
space, as cryoSPARC's 3D variability analysis and Tagare et al. 2015 do it).

Why a 3D classification needs it: the classes must start apart along the heterogeneity. Maps
of random subsets of m particles differ in their mixture of states by √(p(1 − p)/m) of a state
while their noise falls only as 1/√m, so at SNR 1/10 a small domain's states never dominate the
differences of subset maps (README, "3D classification"), whatever m. The components here are
fitted to all N particles at once, and each particle's coordinates along them are a matched
filter of its residual: grouping the coordinates gives classes that start near the states.

Model, for particle i with CTF c_i, pose projection P_i, amplitude a_i and q components U_j:

    X_i = c_i·P_i(a_i·V̄ + Σ_j z_ij U_j) + Σ_m e_im ∂_m(c_i P_i V̄) + noise,
    z_i ~ N(0, I),   noise ~ N(0, σ²) per pixel

fitted by expectation-maximisation (Tipping & Bishop's PPCA, each particle seeing one slice).
a_i and the pose terms e_i (the first-order effect of a small error in the particle's rotation
and shift, ``class3d/poses.py``) have flat priors: images normalised one by one differ in
scale, and the input poses are a few degrees off; left in the residuals, either is a larger
variation than the states', and the components would take it. Measured on 3,000 particles of
the 70S set (0.5° / 0.25 px pose noise, 30 Å): without the pose terms the components' largest
principal cosine with the true state differences was 0.73 and the coordinates of a homogeneous
set spread 1.8× their prior; with them 0.996 and 1.2×. (The posterior covariance below instead
of least squares changed 0.70 to 0.73.)

* E-step: per particle, the least-squares a_i and e_i with the posterior of z_i, mean
  (AᵀA + σ²/2·I)⁻¹Aᵀr_i and covariance σ²/2·(AᵀA + σ²/2·I)⁻¹ (A = c_i P_i U, jointly solved
  with the flat terms), over the band with the distance's pixel weights (whitening applies);
  σ² from the expected residuals of the round before, and in the first round from the fit of
  the flat terms alone, both summed over every particle (so the start depends on neither the
  chunks nor the processes).
* M-step, each component in turn with the others fixed: U_j = Σ_i c_i·(E[z_ij] r_i −
  Σ_{l≠j} E[z_ij z_il] A_il) / (Σ_i E[z_ij²] c_i² + ε), r_i the residual to the flat terms —
  the back-projector with weights E[z_ij²] — then low-passed to the band under the reference
  mask.

V̄ is the least-squares map Σ c·X / (Σ c² + ε) of all particles over the band; components start
random at 5 % of its norm. ``iterations`` rounds of one E-step and one back-projection per
component over the particles, then the coordinates under the last components, turned to the
components' principal axes (the latent space is fitted only up to a rotation), the largest
spread first. Statistics are summed over chunks and processes as the classification's are. The
poses and the mean never change, so each chunk's trilinear cells and its fixed terms (the mean's
slice and pose derivatives) are made once and serve every round's sampling and insertion
(the start 2.0–3.8× faster on 3,000 particles, 2 or 4 components, with and without pose
terms, at load 3–4.5); the insertion is kept as each chunk's sparse insertion matrix, so all
components' numerators and weights go in with one sparse product a chunk (the start at
30,000 particles, 4 components, 2 threads: 89 → 54 s with the slices' products batched).

The components hold no shell below the second (:func:`high_pass_gains`; the reference mask
spreads a little back): there the CTF is near its amplitude-contrast floor, the data weigh
almost nothing, and a component fitted there is amplified noise. On 30,000 particles of the 70S
set (true poses) the second component was such a low-frequency one (38 % of its power in
shells 0–1) instead of the absent domain's.

What sets the number of particles a state needs: a direction of variance λ is told from the
noise only above a threshold that falls as 1/√N (the sample covariance's noise edge; the
components have thousands of voxels to each particle's few hundred band pixels). On the 70S
set (three states, SNR 1/10, 30 Å) the turned domain's direction is found at 3,000 particles;
the absent domain's 20 % state, whose variance along its own direction is about a fifth of
the first, is not (cosine ≤ 0.05, whatever the rounds, the mask or the start: from the true
directions it drifts to 0.55), and at 30,000 it is (cosine 0.70, grouping 0.86 correct). Near
the threshold EM converges slowly along the weak direction (a plateau of ~10 rounds of small
change before it grows); fitting more components than the caller keeps speeds that up
(``class3d/run.py`` fits 2(K − 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ackmeans_torch.class3d.model import SliceMatch, low_pass_gains
from ackmeans_torch.class3d.poses import (
    consensus_map, gradient_projector, normal_equations, pose_derivatives,
)
from ackmeans_torch.cluster.engine import Reduce, Shard
from ackmeans_torch.ops.fourier import filter_shells
from ackmeans_torch.ops.projection import (
    BackProjector, Cells, FourierProjector, band_window, cell_offsets, insertion_matrix,
    slice_cells, sort_cells,
)

__all__ = ["Variability", "variability"]

#: the lowest shell (1/L units) the components hold at half weight (module docstring)
LOWEST_SHELL = 2


@dataclass
class Variability:
    """``mean (L, L, L)`` the consensus map (band-limited, masked); ``components (q, L, L, L)``
    the fitted U (their scale is the spread of the states along them: coordinates have unit
    prior variance); ``coordinates (N, q)`` every particle's posterior mean; ``change`` the
    subspace change of each round (1 − the mean squared cosine of the principal angles between
    the components before and after it)."""

    mean: Tensor
    components: Tensor
    coordinates: Tensor
    change: list[float]


def high_pass_gains(size: int) -> Tensor:
    """``(L // 2 + 1,)`` gains that keep the components off the lowest shells: 0 at shells 0
    and 1, ½ at :data:`LOWEST_SHELL`, 1 beyond."""
    shells = torch.arange(size // 2 + 1, dtype=torch.float32)
    return ((shells - LOWEST_SHELL + 1) / 2).clamp(0, 1)


def _orthonormal(volumes: Tensor, mask: Tensor) -> Tensor:
    """``(q, M)`` an orthonormal basis of ``volumes (q, L, L, L)`` under ``mask`` (QR)."""
    return torch.linalg.qr((volumes * mask).flatten(1).double().T)[0].T


@dataclass
class _Posterior:
    """One chunk's E-step: ``residual (B, n)`` to the scaled mean, ``parts (q, B, n)`` the
    components' CTF-weighted projections, posterior means ``z (B, q)`` and second moments
    ``zz (B, q, q)``, and the chunk's sums for σ²: ``noise`` (expected squared residual) and
    ``count`` (real degrees of freedom)."""

    residual: Tensor
    parts: Tensor
    z: Tensor
    zz: Tensor
    noise: float
    count: float


def _fixed_basis(band: "_SubBand", data: dict[str, Tensor], rotations: Tensor,
                 mean_projector: FourierProjector, cells: Cells, pose_terms: bool) -> Tensor:
    """``(1 [+ 5], B, n)`` the terms of the chunk's fit that do not change with the components:
    the CTF-weighted slice of the mean (its amplitude) and, with ``pose_terms``, its
    derivatives in the 3 rotations and 2 shifts (``mean_projector``: a
    :func:`gradient_projector` then; ``cells``: the chunk's on the projectors' window)."""
    if pose_terms:
        return pose_derivatives(mean_projector, rotations, band.k2d, data["ctf"])
    return mean_projector.slices(cells, data["ctf"].shape) * data["ctf"]


def _flat_ridge(gram: Tensor, n_fixed: int) -> Tensor:
    """Flat priors on the amplitude and pose terms: a ridge of 10⁻⁹ of their own scale."""
    return 1e-9 * torch.diagonal(gram, dim1=1, dim2=2)[:, :n_fixed].mean(0)


def _fixed_noise(band: "_SubBand", data: dict[str, Tensor], fixed: Tensor) -> Tensor:
    """``(2,)`` float64: Σ w|X − fit|² of a chunk's fit by its fixed terms alone, and the
    count of real values it sums (the noise of the first round, before the components mean
    anything: summed over every chunk and process, so that it depends on neither)."""
    w, x = band.pixel_weight, data["x"]
    gram, rhs = normal_equations(fixed, x, w)
    coef = torch.linalg.solve(gram + torch.diag(_flat_ridge(gram, len(fixed))), rhs)
    fit = x - torch.einsum("ba,abn->bn", coef.to(x.dtype), fixed)
    return torch.tensor([float((w * fit.abs() ** 2).sum()), 2 * float(w.sum()) * x.shape[0]],
                        dtype=torch.float64, device=x.device)


def _posterior(band: "_SubBand", data: dict[str, Tensor], fixed: Tensor, parts: Tensor,
               sigma2: float) -> _Posterior:
    """The E-step of a chunk (module docstring) from its fixed terms ``fixed``, the
    components' CTF-weighted slices ``parts (q, B, n)`` and the noise power ``sigma2``."""
    basis = torch.cat([fixed, parts])  # (1 [+ 5] + q, B, n): amplitude, pose, components
    w, x = band.pixel_weight, data["x"]
    gram, rhs = normal_equations(basis, x, w)
    count = 2 * float(w.sum()) * x.shape[0]
    n_fixed = len(fixed)
    flat = _flat_ridge(gram, n_fixed)
    # a real pixel carries σ²/2 in each of its real and imaginary parts
    prior = torch.cat([flat, torch.full((len(basis) - n_fixed,), sigma2 / 2, dtype=torch.float64,
                                        device=gram.device)])
    precision = gram + torch.diag(prior)
    mean = torch.linalg.solve(precision, rhs)
    covariance = (sigma2 / 2) * torch.linalg.inv(precision)[:, n_fixed:, n_fixed:]
    z = mean[:, n_fixed:]
    residual = x - torch.einsum("ba,abn->bn", mean[:, :n_fixed].to(x.dtype), fixed)
    # (B, n, q) is the layout the components' slices come in
    fit = residual - torch.bmm(parts.permute(1, 2, 0), z[:, :, None].to(parts.dtype))[..., 0]
    noise = (float((w * fit.abs() ** 2).sum())
             + 2 * float((gram[:, n_fixed:, n_fixed:] * covariance).sum()))
    return _Posterior(residual=residual, parts=parts, z=z.float(),
                      zz=(z[:, :, None] * z[:, None, :] + covariance).float(), noise=noise,
                      count=count)


class _SubBand:
    """The pixels of ``provider``'s band that ``back`` inserts (a band within it, lower
    components need fewer frequencies): the provider's cached values at those pixels, and the
    provider's poses, reconstruction and mask."""

    def __init__(self, provider: SliceMatch, back: BackProjector) -> None:
        self.provider = provider
        # both enumerate the half plane's pixels in the same order, within their radius
        self.keep = (provider.k2d**2).sum(-1) <= (back.k2d**2).sum(-1).max()
        if int(self.keep.sum()) != len(back.pixels):
            raise AssertionError("the sub-band is not the inner part of the provider's band")
        self.k2d, self.pixel_weight = provider.k2d[self.keep], provider.pixel_weight[self.keep]
        self.n_items, self.device = provider.n_items, provider.device
        self.rotations = provider.rotations
        self.reference_mask, self.reconstruct = provider.reference_mask, provider.reconstruct

    def read(self, index: Tensor) -> dict[str, Tensor]:
        data = self.provider.read(index)
        return {"x": data["x"][:, self.keep], "ctf": data["ctf"][:, self.keep]}


def variability(provider: SliceMatch, n_components: int, *, iterations: int,
                resolution: float | None, generator: torch.Generator, chunk_size: int,
                shard: Shard, reduce: Reduce, pose_terms: bool = True) -> Variability:
    """The consensus map of the provider's particles, the ``n_components`` leading components of
    variability about it and every particle's coordinates along them (module docstring), all
    out to ``resolution`` Å (None, or finer than the provider's band: the band). ``pose_terms``:
    fit the first-order pose errors as nuisance terms (off for poses refined already: a shift
    also absorbs part of a peripheral domain's presence, which moves the centre of mass)."""
    size, device, n = provider.box_size, provider.device, provider.n_items
    mask = provider.reference_mask
    radius = provider.band if resolution is None else min(
        provider.band, size * provider.pixel_size / resolution)
    gains = (low_pass_gains(size, radius) * high_pass_gains(size)).to(device)
    back = BackProjector(size, padding=provider.padding, device=device, max_radius=radius)
    band = _SubBand(provider, back)
    mean = consensus_map(band, back, band.read, chunk_size=chunk_size, shard=shard,
                         reduce=reduce)
    start = torch.randn((n_components, size, size, size), generator=generator).to(device)
    start = filter_shells(start, gains) * mask
    components = start * (0.05 * mean.norm() / start.flatten(1).norm(dim=1))[:, None, None, None]
    mean_projector = (gradient_projector if pose_terms else FourierProjector)(
        mean, padding=provider.padding, max_radius=radius)
    window = mean_projector.window
    # the statistics' window (band_window without the projectors' zero border, which it has
    # only when the band reaches the grid's edge; then insertion needs cells of its own)
    stats_window = band_window(back.padded_size, provider.padding, radius, border=False)
    volume = stats_window[1] ** 3
    chunks = [shard(torch.arange(first, min(first + chunk_size, n)))
              for first in range(0, n, chunk_size)]
    n_fixed = 6 if pose_terms else 1
    # the projectors' cells (64 B a pixel), the insertion matrix (64 B) and the points' order
    # in it (8 B), the fixed terms; and the matrix's row starts (4 B a voxel a chunk)
    per_pixel = 64 + 64 + 8 + 8 * n_fixed
    kept: dict[int, tuple[Cells, tuple[Tensor, Tensor], Tensor]] | None = (
        {} if n * len(band.k2d) * per_pixel + 4 * volume * len(chunks) <= provider.cache_bytes
        else None)
    steps = list(cell_offsets(stats_window[1]))

    def chunk_terms(c: int, data: dict[str, Tensor]
                    ) -> tuple[Cells, tuple[Tensor, Tensor], Tensor]:
        """The chunk's cells on the projectors' window, the order of its points on the
        statistics' window by cell with the :func:`insertion_matrix` of that order (every
        component's statistics in one sparse product), and its fixed terms: the poses and the
        mean never change, so they are made once where they fit in the provider's
        ``cache_bytes`` (else in every round; the matrix then costs about what it saves)."""
        if kept is not None and c in kept:
            return kept[c]
        rotations = band.rotations[chunks[c].to(device)]
        cells = mean_projector.cells(rotations, band.k2d)
        insert = cells if stats_window == window else slice_cells(
            band.k2d, rotations, padding=provider.padding, padded_size=back.padded_size,
            start=stats_window[0], side=stats_window[1])
        order, first, corners = sort_cells(insert)
        fixed = _fixed_basis(band, data, rotations, mean_projector, cells, pose_terms)
        terms = (cells, (order, insertion_matrix(first, corners, steps, volume)), fixed)
        if kept is not None:
            kept[c] = terms
        return terms

    weight_row = back.row_weight
    noise = torch.zeros(2, dtype=torch.float64, device=device)
    for c, index in enumerate(chunks):
        if len(index):
            data = band.read(index)
            noise += _fixed_noise(band, data, chunk_terms(c, data)[2])
    noise = reduce({"noise": noise})["noise"]
    sigma2, change = float(noise[0] / noise[1]), []
    for round_ in range(iterations + 1):
        projector = FourierProjector(components, padding=provider.padding, max_radius=radius)
        last = round_ == iterations
        coordinates = torch.zeros((n, n_components), device=device)
        # per voxel: the components' numerators (real, imaginary), then their weights
        totals = {"statistics": torch.zeros((volume, 3 * n_components), device=device),
                  "noise": torch.zeros(2, dtype=torch.float64, device=device)}
        for c, index in enumerate(chunks):
            if not len(index):
                continue
            data = band.read(index)
            cells, (order, matrix), fixed = chunk_terms(c, data)
            parts = projector.slices(cells, data["ctf"].shape) * data["ctf"]
            post = _posterior(band, data, fixed, parts, sigma2)
            coordinates[index.to(device)] = post.z
            totals["noise"] += torch.tensor([post.noise, post.count], dtype=torch.float64,
                                            device=device)
            if last:
                continue
            ctf = data["ctf"]
            others = post.zz.clone()
            others.diagonal(dim1=1, dim2=2).zero_()
            # per pixel and component j, Σ c·(E[z_j]·r − Σ_{l≠j} E[z_j z_l]·A_l) and
            # Σ E[z_j²]·c²: (B, n, q), the layout the components' slices come in
            parts = post.parts.permute(1, 2, 0)
            values = ((post.z[:, None, :] * post.residual[:, :, None]
                       - torch.bmm(parts, others.transpose(1, 2).to(parts.dtype)))
                      * (ctf * weight_row)[:, :, None])
            power = (ctf.square() * weight_row)[:, :, None] * torch.diagonal(
                post.zz, dim1=1, dim2=2)[:, None, :]
            channels = torch.cat([torch.view_as_real(values).flatten(2), power], 2)
            # (the plain CSR × dense product, the one the projectors' sampling uses on CUDA too)
            totals["statistics"] += matrix @ channels.view(-1, 3 * n_components)[order]
        totals = reduce(totals)
        sigma2 = float(totals["noise"][0] / totals["noise"][1])
        if last:
            coordinates = reduce({"z": coordinates})["z"]
            break
        side, statistics = stats_window[1], totals["statistics"]
        numerators = torch.complex(statistics[:, 0:2 * n_components:2],
                                   statistics[:, 1:2 * n_components:2])
        updated = torch.stack([band.reconstruct(numerators[:, j].reshape((side,) * 3),
                                                statistics[:, 2 * n_components + j].reshape(
                                                    (side,) * 3))
                               for j in range(n_components)])
        updated = filter_shells(updated, gains) * mask
        cosines = torch.linalg.svdvals(_orthonormal(components, mask)
                                       @ _orthonormal(updated, mask).T)
        change.append(float(1 - (cosines**2).mean()))
        components = updated
    # the latent space is fitted only up to a rotation: turn it to the components' principal
    # axes, the largest spread first, so that a caller may keep the leading ones
    flat = (components * mask).flatten(1).double()
    _, axes = torch.linalg.eigh(flat @ flat.T)
    axes = axes.flip(1).to(components.dtype)
    components = torch.einsum("jl,j...->l...", axes, components)
    coordinates = coordinates @ axes.to(coordinates.device)
    return Variability(mean=mean, components=components, coordinates=coordinates.cpu(),
                       change=change)
