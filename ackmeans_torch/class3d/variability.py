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
  σ² from the expected residuals.
* M-step, each component in turn with the others fixed: U_j = Σ_i c_i·(E[z_ij] r_i −
  Σ_{l≠j} E[z_ij z_il] A_il) / (Σ_i E[z_ij²] c_i² + ε), r_i the residual to the flat terms —
  the back-projector with weights E[z_ij²] — then low-passed to the band under the reference
  mask.

V̄ is the least-squares map Σ c·X / (Σ c² + ε) of all particles over the band; components start
random at 5 % of its norm. ``iterations`` rounds of one E-step and one back-projection per
component over the particles, then the coordinates under the last components. Statistics are
summed over chunks and processes as the classification's are. What it cannot do at 3,000
particles: find a second, weaker direction (the absent domain's 20 % state, whose variance is
about a fifth of the turned domain's) — the first is found, the second is noise.
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
from ackmeans_torch.ops.projection import BackProjector, FourierProjector

__all__ = ["Variability", "variability"]


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


def _posterior(band: "_SubBand", data: dict[str, Tensor], index: Tensor,
               projector: FourierProjector, mean_projector: FourierProjector, pose_terms: bool,
               sigma2: float | None) -> _Posterior:
    """The E-step of the chunk ``index`` (module docstring): ``projector`` holds the components,
    ``mean_projector`` the mean (a :func:`gradient_projector` with ``pose_terms``, whose
    derivatives are then fitted too); ``sigma2`` None: the noise of the fit of the mean (and
    the pose terms) alone (the first round, before the components mean anything)."""
    rotations = band.rotations[index.to(band.device)]
    if pose_terms:
        slices, turns = pose_derivatives(mean_projector, rotations, band.k2d, data["ctf"])
        fixed = torch.cat([slices[None], turns])
    else:
        fixed = mean_projector.sample(rotations, band.k2d) * data["ctf"]
    parts = projector.sample(rotations, band.k2d) * data["ctf"]
    basis = torch.cat([fixed, parts])  # (1 [+ 5] + q, B, n): amplitude, pose, components
    w, x = band.pixel_weight, data["x"]
    gram, rhs = normal_equations(basis, x, w)
    count = 2 * float(w.sum()) * len(index)
    n_fixed = len(fixed)
    # flat priors on the amplitude and pose terms: a ridge of 10⁻⁹ of their own scale
    flat = 1e-9 * torch.diagonal(gram, dim1=1, dim2=2)[:, :n_fixed].mean(0)
    if sigma2 is None:
        coef = torch.linalg.solve(gram[:, :n_fixed, :n_fixed] + torch.diag(flat), rhs[:, :n_fixed])
        fit = x - torch.einsum("ba,abn->bn", coef.to(x.dtype), fixed)
        sigma2 = float((w * fit.abs() ** 2).sum()) / count
    # a real pixel carries σ²/2 in each of its real and imaginary parts
    prior = torch.cat([flat, torch.full((len(basis) - n_fixed,), sigma2 / 2, dtype=torch.float64,
                                        device=gram.device)])
    precision = gram + torch.diag(prior)
    mean = torch.linalg.solve(precision, rhs)
    covariance = (sigma2 / 2) * torch.linalg.inv(precision)[:, n_fixed:, n_fixed:]
    z = mean[:, n_fixed:]
    residual = x - torch.einsum("ba,abn->bn", mean[:, :n_fixed].to(x.dtype), fixed)
    fit = residual - torch.einsum("ba,abn->bn", z.to(parts.dtype), parts)
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
    gains = low_pass_gains(size, radius).to(device)
    back = BackProjector(size, padding=provider.padding, device=device, max_radius=radius)
    band = _SubBand(provider, back)
    mean = consensus_map(band, back, band.read, chunk_size=chunk_size, shard=shard,
                         reduce=reduce)
    start = torch.randn((n_components, size, size, size), generator=generator).to(device)
    start = filter_shells(start, gains) * mask
    components = start * (0.05 * mean.norm() / start.flatten(1).norm(dim=1))[:, None, None, None]
    padded = back.padded_size
    mean_projector = (gradient_projector if pose_terms else FourierProjector)(
        mean, padding=provider.padding, max_radius=radius)
    sigma2, change = None, []
    for round_ in range(iterations + 1):
        projector = FourierProjector(components, padding=provider.padding, max_radius=radius)
        last = round_ == iterations
        coordinates = torch.zeros((n, n_components), device=device)
        totals = {"numerator": torch.zeros((n_components,) + (padded,) * 3,
                                           dtype=torch.complex64, device=device),
                  "weight": torch.zeros((n_components,) + (padded,) * 3, device=device),
                  "noise": torch.zeros(2, dtype=torch.float64, device=device)}
        for first in range(0, n, chunk_size):
            index = shard(torch.arange(first, min(first + chunk_size, n)))
            if not len(index):
                continue
            data = band.read(index)
            post = _posterior(band, data, index, projector, mean_projector, pose_terms, sigma2)
            coordinates[index.to(device)] = post.z
            totals["noise"] += torch.tensor([post.noise, post.count], dtype=torch.float64,
                                            device=device)
            if last:
                continue
            rotations = provider.rotations[index.to(device)]
            for j in range(n_components):
                # E[z_j]·r − Σ_{l≠j} E[z_j z_l]·A_l, inserted with weight E[z_j²] (> 0: the
                # posterior variance), hence divided by it here
                others = post.zz[:, j].clone()
                others[:, j] = 0
                values = (post.z[:, j, None] * post.residual
                          - torch.einsum("bl,lbn->bn", others.to(post.parts.dtype), post.parts))
                second = post.zz[:, j, j]
                back.numerator, back.weight = totals["numerator"][j], totals["weight"][j]
                back.insert_slices(values / second[:, None], rotations, data["ctf"], second)
        totals = reduce(totals)
        sigma2 = float(totals["noise"][0] / totals["noise"][1])
        if last:
            coordinates = reduce({"z": coordinates})["z"]
            break
        updated = torch.stack([band.reconstruct(totals["numerator"][j], totals["weight"][j])
                               for j in range(n_components)])
        updated = filter_shells(updated, gains) * mask
        cosines = torch.linalg.svdvals(_orthonormal(components, mask)
                                       @ _orthonormal(updated, mask).T)
        change.append(float(1 - (cosines**2).mean()))
        components = updated
    return Variability(mean=mean, components=components, coordinates=coordinates.cpu(),
                       change=change)
