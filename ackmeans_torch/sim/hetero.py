"""Heterogeneous particle sets for 3D classification: several states of one map, known poses.

The scenario is the refined consensus (a practitioner's particles already aligned to one map):
poses uniform over SO(3), each particle drawn from one of S states of a base map by population
fractions, imaged with CTF and white noise (``sim/dataset.py``'s ``render_images``), and the
poses written to the STAR perturbed by **pose noise** (the images are made with the true poses),
as refinement error would leave them.

States differ in one *domain*: a soft-edged sphere of the base map (centre and radius as fractions
of the box, ``ops.polar.spherical_mask``). A state either removes it (*compositional*: the domain
absent, ``V·(1 − m)``) or turns it by an angle about an axis through a hinge point
(*conformational*: ``V·(1 − m) + rotated(V·m)``, resampled trilinearly by ``grid_sample``; the rest
of the map is unchanged). An optional *second domain* (another soft sphere) is removed in the states
that say so (``state_second_absent``), whatever the first domain does: two independent compositional
changes. The *continuous* variant draws each particle's angle uniformly from a range around its
state's angle; the range is cut into equal bins no wider than ``angle_bin_deg`` and each particle is
imaged with the map at its bin's centre, which is its recorded true angle.

Conventions: positions and axes are (x, y, z), fractions of the box side from the centre voxel
``L // 2``; angles are degrees, a positive angle turns the domain counter-clockwise about the axis
(right hand). Pose noise: the written rotation is ``Q·A`` with ``Q`` a rotation about a random
axis whose rotation vector has i.i.d. Gaussian components, so the RMS angle between true and
written pose is ``angle_noise_deg``; written origins are the true ones plus Gaussian noise of
``shift_noise_px`` per axis. The true state (1-based) is in ``CENTRE_LABEL_COLUMN`` of the STAR
(a column RELION's classification ignores; ``sim/dataset.py`` says why); the true poses and
angles are in ``truth.tsv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.mrc import write_stack, write_volume
from ackmeans_torch.io.star import write_particles
from ackmeans_torch.ops.fourier import fourier_crop_volume
from ackmeans_torch.ops.rotations import euler_to_matrix, matrix_to_euler
from ackmeans_torch.sim.dataset import (
    CENTRE_LABEL_COLUMN, MapImaging, Optics, pose_columns, render_images,
)
from ackmeans_torch.ops.polar import spherical_mask
from ackmeans_torch.sim.views import _quaternion_to_matrix, random_rotations


def axis_angle_matrix(rotation_vectors: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (axis × angle in radians, x, y, z) → active rotation
    matrices ``(..., 3, 3)`` (right-hand rule), through the unit quaternion."""
    angle = rotation_vectors.norm(dim=-1, keepdim=True)
    axis = rotation_vectors / angle.clamp_min(1e-30)
    q = torch.cat([(angle / 2).cos(), axis * (angle / 2).sin()], -1)
    return _quaternion_to_matrix(q)


def rotate_domain(volume: torch.Tensor, mask: torch.Tensor, angle_deg: float, axis: torch.Tensor,
                  hinge: torch.Tensor) -> torch.Tensor:
    """``volume (L, L, L)`` with its masked domain ``volume·mask`` turned by ``angle_deg`` about
    ``axis (3,)`` through ``hinge (3,)`` (x, y, z) px from voxel ``L // 2``; the rest
    ``volume·(1 − mask)`` unchanged. The domain is resampled trilinearly (``grid_sample``)."""
    if angle_deg == 0:
        return volume.clone()
    size = volume.shape[-1]
    turn = axis_angle_matrix(axis.to(torch.float64) / axis.norm() * math.radians(angle_deg))
    axis_px = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(axis_px, axis_px, axis_px, indexing="ij")
    points = torch.stack([x, y, z], -1) - hinge.to(torch.float64)
    # the output voxel p shows the domain's density from hinge + Rᵀ (p − hinge)
    source = points @ turn + hinge.to(torch.float64)
    grid = ((source + size // 2) * (2.0 / (size - 1)) - 1.0).to(torch.float32)
    domain = (volume * mask)[None, None]
    turned = F.grid_sample(domain, grid[None].to(volume.device), mode="bilinear",
                           padding_mode="zeros", align_corners=True)[0, 0]
    return volume * (1 - mask) + turned


@dataclass(frozen=True, kw_only=True)
class HeteroSimulation(MapImaging):
    """What heterogeneous set to simulate (the module docstring gives the model).

    Map, CTF, noise and batch settings: ``sim.dataset.MapImaging`` (``box_size`` Fourier-crops
    the map first; ``phase_flip`` defaults to off here: RELION's input is usually not flipped).
    States: ``populations`` (fractions, one per state, summing to 1), ``state_angles`` (deg) and
    ``state_absent`` (the domain removed) per state; ``angle_spread_deg`` > 0 makes the angle of
    each particle uniform in [angle − spread/2, angle + spread/2] (continuous variant, bins of at
    most ``angle_bin_deg``). Domain: ``domain_centre`` (x, y, z) and ``domain_radius`` (fractions
    of the box), ``domain_edge_px`` soft edge, rotation ``axis`` (x, y, z) through ``hinge``
    (fractions; None: the point of the domain sphere nearest the box centre, where it attaches).
    Second domain: ``second_domain_centre`` (None: none) and ``second_domain_radius``
    (fractions), removed in the states where ``state_second_absent`` (one per state) is true.
    Particles: ``n_particles``, true content shifts uniform in [−``max_shift_px``, max]², pose
    noise ``angle_noise_deg`` (RMS rotation angle) and ``shift_noise_px`` (s.d. per axis) on the
    written poses."""

    n_particles: int = 3000
    populations: tuple[float, ...] = (0.5, 0.3, 0.2)
    state_angles: tuple[float, ...] = (0.0, 25.0, 0.0)
    state_absent: tuple[bool, ...] = (False, False, True)
    angle_spread_deg: float = 0.0
    angle_bin_deg: float = 1.0
    domain_centre: tuple[float, float, float] = (0.0, 0.27, 0.03)
    domain_radius: float = 0.1
    domain_edge_px: float = 2.0
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    hinge: tuple[float, float, float] | None = None
    second_domain_centre: tuple[float, float, float] | None = None
    second_domain_radius: float = 0.1
    state_second_absent: tuple[bool, ...] | None = None
    max_shift_px: float = 0.0
    angle_noise_deg: float = 2.0
    shift_noise_px: float = 1.0
    phase_flip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # YAML lists arrive as list-like configs; hold plain tuples
        for name in ("populations", "state_angles", "state_absent", "domain_centre", "axis",
                     "hinge", "second_domain_centre", "state_second_absent"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                    raise InputError(f"sim.{name}={value!r} must be a list")
                object.__setattr__(self, name, tuple(value))
        check_int("sim.n_particles", self.n_particles, 1)
        n_states = len(self.populations)
        if n_states < 1 or len(self.state_angles) != n_states or len(self.state_absent) != n_states:
            raise InputError(
                f"sim.populations, sim.state_angles and sim.state_absent must have one entry per "
                f"state; got {len(self.populations)}, {len(self.state_angles)} and "
                f"{len(self.state_absent)}")
        for i, (fraction, angle) in enumerate(zip(self.populations, self.state_angles)):
            check_number(f"sim.populations[{i}]", fraction, 0.0, 1.0)
            check_number(f"sim.state_angles[{i}]", angle, -180.0, 180.0)
        for i, absent in enumerate(self.state_absent):
            if not isinstance(absent, bool):
                raise InputError(f"sim.state_absent[{i}]={absent!r} must be true or false")
        if abs(sum(self.populations) - 1) > 1e-6:
            raise InputError(f"sim.populations={list(self.populations)} must sum to 1")
        check_number("sim.angle_spread_deg", self.angle_spread_deg, 0.0, 180.0)
        check_number("sim.angle_bin_deg", self.angle_bin_deg, 1e-3)
        check_number("sim.domain_radius", self.domain_radius, 1e-3, 0.5)
        check_number("sim.domain_edge_px", self.domain_edge_px, 0.0)
        if self.second_domain_centre is not None:
            check_number("sim.second_domain_radius", self.second_domain_radius, 1e-3, 0.5)
            second = self.state_second_absent or ()
            if len(second) != n_states or not all(isinstance(a, bool) for a in second):
                raise InputError(f"sim.second_domain_centre needs sim.state_second_absent: one "
                                 f"true/false per state ({n_states}), got "
                                 f"{self.state_second_absent}")
        for name in (("domain_centre", "axis") + (("hinge",) if self.hinge is not None else ())
                     + (("second_domain_centre",) if self.second_domain_centre is not None
                        else ())):
            value = getattr(self, name)
            if len(value) != 3:
                raise InputError(f"sim.{name}={list(value)} must be three numbers (x, y, z)")
            for i, c in enumerate(value):
                check_number(f"sim.{name}[{i}]", c, -1.0, 1.0)
        if math.hypot(*self.axis) == 0:
            raise InputError("sim.axis=[0, 0, 0] must be a non-zero direction (x, y, z)")
        check_number("sim.max_shift_px", self.max_shift_px, 0.0)
        check_number("sim.angle_noise_deg", self.angle_noise_deg, 0.0, 90.0)
        check_number("sim.shift_noise_px", self.shift_noise_px, 0.0)
        check_number("sim.defocus_min", self.defocus_min, 1e-6)
        check_number("sim.defocus_max", self.defocus_max, self.defocus_min)
        check_number("sim.astigmatism", self.astigmatism, 0.0, self.defocus_min)
        if self.phase_flip and not self.ctf:
            raise InputError("sim.phase_flip=true needs sim.ctf=true")

    def base_map(self) -> tuple[torch.Tensor, float]:
        """The base map ``(L, L, L)`` (after any Fourier crop to ``box_size``) and its voxel Å."""
        volume, voxel = self.load_map()
        size = volume.shape[-1]
        if self.box_size is not None and self.box_size != size:
            if not 8 <= self.box_size <= size:
                raise InputError(f"sim.box_size={self.box_size} must be between 8 and the map "
                                 f"size {size}")
            volume, voxel = fourier_crop_volume(volume, self.box_size), voxel * size / self.box_size
        return volume, voxel

    def domain(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For an L box: the domain mask ``(L, L, L)``, the hinge and the unit axis ``(3,)``
        (x, y, z), positions in px from voxel ``L // 2``."""
        centre = torch.tensor(self.domain_centre, dtype=torch.float64) * size
        radius = self.domain_radius * size
        if self.hinge is not None:
            hinge = torch.tensor(self.hinge, dtype=torch.float64) * size
        else:
            distance = float(centre.norm())
            hinge = centre * max(0.0, 1 - radius / distance) if distance > 0 else centre
        axis = torch.tensor(self.axis, dtype=torch.float64)
        mask = spherical_mask(size, radius, centre=centre, soft_edge=self.domain_edge_px)
        return mask, hinge, axis / axis.norm()

    def state_map(self, volume: torch.Tensor, state: int, angle_deg: float | None = None,
                  ) -> torch.Tensor:
        """The map ``(L, L, L)`` of ``state`` (0-based) from the base ``volume``, its domain
        turned by ``angle_deg`` (default: the state's angle) unless the state removes it, and its
        second domain removed where the state says so."""
        size = volume.shape[-1]
        mask, hinge, axis = self.domain(size)
        mask = mask.to(volume.device)
        if self.second_domain_centre is not None and self.state_second_absent[state]:
            second = spherical_mask(
                size, self.second_domain_radius * size, soft_edge=self.domain_edge_px,
                centre=torch.tensor(self.second_domain_centre, dtype=torch.float64) * size)
            volume = volume * (1 - second.to(volume.device))
        if self.state_absent[state]:
            return volume * (1 - mask)
        angle = self.state_angles[state] if angle_deg is None else angle_deg
        return rotate_domain(volume, mask, float(angle), axis, hinge)

    def angle_bins(self, state: int) -> torch.Tensor:
        """``(n_bins,)`` float64 angles (deg) the particles of ``state`` are imaged at: the state's
        angle alone, or the centres of equal bins of width ≤ ``angle_bin_deg`` across the spread
        (an absent domain has no angle: one bin, NaN)."""
        if self.state_absent[state]:
            return torch.full((1,), math.nan, dtype=torch.float64)
        centre = float(self.state_angles[state])
        if self.angle_spread_deg == 0:
            return torch.full((1,), centre, dtype=torch.float64)
        n_bins = math.ceil(self.angle_spread_deg / self.angle_bin_deg - 1e-9)
        width = self.angle_spread_deg / n_bins
        return centre - self.angle_spread_deg / 2 + width * (torch.arange(n_bins) + 0.5).double()

    def run(self, *, seed: int = 0, device: str | torch.device = "cpu") -> HeteroSet:
        """:func:`simulate_hetero` of this spec."""
        return simulate_hetero(self, seed=seed, device=device)


@dataclass(frozen=True)
class HeteroSet:
    """A simulated heterogeneous set: ``images (N, L, L)`` float32, the RELION-4 ``particles``
    table (written, noisy poses; true 1-based state in ``CENTRE_LABEL_COLUMN``), ``state_maps
    (S, L, L, L)`` float32, ``voxel_size`` Å, ``angles (N,)`` float64 true domain angles (deg, NaN
    where the domain is absent) or None for discrete states, and ``truth`` (N rows: state, angle,
    true rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst)."""

    images: torch.Tensor
    particles: pd.DataFrame
    state_maps: torch.Tensor
    voxel_size: float
    angles: np.ndarray | None
    truth: pd.DataFrame

    @property
    def states(self) -> np.ndarray:
        """``(N,)`` int true state of each particle (1-based)."""
        return self.particles[CENTRE_LABEL_COLUMN].to_numpy()

    def write(self, out_dir: str | Path, *, stack: str = "particles.mrcs",
              star: str = "particles.star") -> Path:
        """Write ``stack`` (images), ``star`` (particles, image names into ``stack``),
        ``state_001.mrc``... and ``truth.tsv`` into ``out_dir``, each atomically; returns the
        STAR path."""
        out_dir = Path(out_dir)
        names = [f"{i + 1:06d}@{stack}" for i in range(len(self.images))]
        write_stack(out_dir / stack, self.images, self.voxel_size)
        for k, state_map in enumerate(self.state_maps):
            write_volume(out_dir / f"state_{k + 1:03d}.mrc", state_map, self.voxel_size)
        with atomic_output(out_dir / "truth.tsv") as tmp:
            self.truth.assign(rlnImageName=names).to_csv(tmp, sep="\t", index=False)
        write_particles(out_dir / star, self.particles.assign(rlnImageName=names))
        return out_dir / star


def _state_counts(populations: tuple[float, ...], n: int) -> torch.Tensor:
    """Particles per state: ``n × fraction`` rounded by largest remainder, so they sum to ``n``."""
    exact = torch.tensor(populations, dtype=torch.float64) * n
    counts = exact.floor().long()
    short = n - int(counts.sum())
    counts[torch.argsort(exact - counts, descending=True, stable=True)[:short]] += 1
    return counts


def simulate_hetero(spec: HeteroSimulation, *, seed: int = 0,
                    device: str | torch.device = "cpu") -> HeteroSet:
    """Simulate ``spec.n_particles`` images of the states of ``spec`` (module docstring).

    Every random draw comes from ``torch.Generator().manual_seed(seed)`` on the CPU in a fixed
    order (states, angles, poses, shifts, pose noise, CTF, image noise): the same seed gives the
    same set. State counts are exact: ``n × fraction`` by largest remainder, in random order.
    Projections run on ``device``, one map per state and angle bin."""
    device = torch.device(device)
    volume, voxel = spec.base_map()
    size, n = volume.shape[-1], spec.n_particles
    gen = torch.Generator().manual_seed(seed)

    counts = _state_counts(spec.populations, n)
    order = torch.randperm(n, generator=gen)
    state = torch.repeat_interleave(torch.arange(len(counts)), counts)[order]
    bins = [spec.angle_bins(k) for k in range(len(counts))]
    n_bins = torch.tensor([len(b) for b in bins])[state]
    draw = torch.rand(n, generator=gen, dtype=torch.float64)
    bin_index = torch.minimum((draw * n_bins).long(), n_bins - 1)
    offsets = torch.tensor([0] + [len(b) for b in bins]).cumsum(0)
    map_index = offsets[state] + bin_index
    angles = torch.cat(bins)[map_index]

    rotations = random_rotations(n, generator=gen)
    true_angles = matrix_to_euler(rotations)
    shifts = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spec.max_shift_px
    vectors = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    vectors = vectors * math.radians(spec.angle_noise_deg) / math.sqrt(3)
    written_angles = matrix_to_euler(axis_angle_matrix(vectors) @ euler_to_matrix(true_angles))
    shift_noise = torch.randn(n, 2, generator=gen, dtype=torch.float64) * spec.shift_noise_px
    written_shifts = shifts + shift_noise
    optics = Optics.draw(
        n, size=size, pixel_size=voxel,
        defocus_range=(spec.defocus_min, spec.defocus_max) if spec.ctf else None,
        astigmatism=spec.astigmatism, voltage=spec.voltage,
        spherical_aberration=spec.spherical_aberration,
        amplitude_contrast=spec.amplitude_contrast, phase_shift=0.0, b_factor=spec.b_factor,
        phase_flip=spec.phase_flip, generator=gen)

    volume = volume.to(device)
    maps = [spec.state_map(volume, k, float(a)) for k in range(len(counts)) for a in bins[k]]
    images = render_images(maps, map_index, euler_to_matrix(true_angles), shifts, optics,
                           snr=spec.snr, generator=gen, device=device, batch_size=spec.batch_size)
    table = pose_columns(written_angles, written_shifts, voxel) | optics.columns(n)
    table[CENTRE_LABEL_COLUMN] = (state + 1).numpy()
    true_poses = pose_columns(true_angles, shifts, voxel)
    truth = pd.DataFrame({"state": (state + 1).numpy(), "angle_deg": angles.numpy(), **true_poses})
    state_maps = torch.stack([spec.state_map(volume, k) for k in range(len(counts))]).cpu()
    continuous = spec.angle_spread_deg > 0
    return HeteroSet(images=images, particles=pd.DataFrame(table), state_maps=state_maps,
                     voxel_size=voxel, angles=angles.numpy() if continuous else None, truth=truth)
