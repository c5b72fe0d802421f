"""Synthetic micrographs with ground truth: projections of a map at random poses placed without
overlap at known coordinates, a CTF per micrograph, noise at a stated SNR, a slowly varying ice
background, an optional carbon edge, junk and empty regions.

Model of one micrograph (``size × size`` px, rows y, columns x: RELION's coordinate frame):

1. Positions. Particle and junk centres are drawn uniformly and accepted in turn when at least
   ``min_distance`` px (default 0.8 × box, the diameter of a map that fills 80% of its box) from
   every accepted centre (random sequential addition), at least half a box from the edges (every
   true box lies inside the micrograph), outside the ``empty_regions`` discs (radius size/8) and
   off the carbon. Too crowded a request is an error, never a silently smaller truth.
2. Density. Each particle is the projection (``ops/projection.py``) of the map in a Haar-random
   pose (``sim/views.py``), its box centre (pixel ``L // 2``) on the integer true centre. Junk is
   not from the map: half aggregates (3–7 overlapping Gaussian blobs), half ice blobs (a soft-edged
   disc of 1.5× the density), at the particles' peak level.
3. CTF. The density is multiplied by the micrograph's CTF (``ops/ctf.py``) over the whole
   micrograph, so delocalised fringes cross box edges as in real data. Defocus U is uniform in
   [defocus_min, defocus_max] per micrograph, V = U − astigmatism, the angle uniform in [0, 180).
4. Contrast and noise. Particles are dark, as in real micrographs (the image is −CTF·density):
   extract with ``invert_contrast=true`` for white particles. White Gaussian noise (``sim/noise.py``)
   of one σ for the set, chosen so that SNR = mean over particles of the variance of the CTF-modulated
   signal in the particle's L × L box / σ² (the same whole-box definition as the particle
   simulator, over the true boxes). Then the ice background (a Gaussian random field smoothed to
   about four cycles per micrograph, std ``ice`` × σ) and the carbon film (a half plane behind a
   random straight edge, a soft dark step of ``carbon_edge`` × σ) are added.

Randomness: one seed; positions from ``numpy.random.default_rng(seed)``, poses and noise from a
``torch.Generator`` seeded with it: the same seed gives the same micrographs on CPU.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.coords import PickSet, write_box, write_cbox, write_csv, write_relion_star, write_topaz
from ackmeans_torch.io.mrc import read_volume
from ackmeans_torch.io.star import write_star
from ackmeans_torch.micrographs.extract import box_windows
from ackmeans_torch.micrographs.io import Micrograph, write_micrograph
from ackmeans_torch.ops.ctf import ctf
from ackmeans_torch.ops.fourier import fft2c, frequency_grid, ifft2c
from ackmeans_torch.ops.projection import FourierProjector
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom

#: side (px) and pixel size (Å) of the built-in phantom used when no map is given.
PHANTOM_BOX, PHANTOM_PIXEL = 64, 4.0
#: truth formats written by :func:`write_simulated`: folder -> (suffix, writer).
TRUTH_FORMATS = {"box": (".box", write_box), "star": (".star", write_relion_star), "cbox": (".cbox", write_cbox),
                 "topaz": (".txt", write_topaz), "csv": (".csv", write_csv)}


@dataclass(frozen=True, kw_only=True)
class MicrographSimulation:
    """What to simulate (see the module docstring for the model).

    n_micrographs; size: side H = W px; pixel_size: Å, also taken as the map's voxel size (None:
    the map header's, 4 Å for the phantom); volume: a map path (None: the built-in phantom, ``sim/volume.py``); box_size: particle
    box px (None: the map's side); particles_per_micrograph; min_distance: px between centres (None:
    0.8 × box_size); defocus_min/max, astigmatism: Å; voltage kV, spherical_aberration mm,
    amplitude_contrast; snr; ice and carbon_edge: in units of the noise σ (0: none); junk_fraction:
    junk objects per particle; empty_regions: particle-free discs per micrograph.
    """

    n_micrographs: int = 8
    size: int = 1024
    pixel_size: float | None = None
    volume: str | None = None
    box_size: int | None = None
    particles_per_micrograph: int = 150
    min_distance: float | None = None
    defocus_min: float = 10000.0
    defocus_max: float = 30000.0
    astigmatism: float = 300.0
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.1
    snr: float = 0.05
    ice: float = 0.5
    carbon_edge: float = 0.0
    junk_fraction: float = 0.1
    empty_regions: int = 1

    def __post_init__(self) -> None:
        check_int("n_micrographs", self.n_micrographs, 1)
        check_int("size", self.size, 64)
        check_int("particles_per_micrograph", self.particles_per_micrograph, 0)
        check_int("empty_regions", self.empty_regions, 0)
        if self.box_size is not None:
            check_int("box_size", self.box_size, 8)
        for name in ("defocus_min", "defocus_max", "astigmatism", "ice", "carbon_edge", "junk_fraction"):
            check_number(name, getattr(self, name), 0.0)
        check_number("snr", self.snr, 1e-6)
        check_number("voltage", self.voltage, 1.0)
        check_number("spherical_aberration", self.spherical_aberration, 0.0)
        check_number("amplitude_contrast", self.amplitude_contrast, 0.0, 0.999)
        if self.defocus_max < self.defocus_min:
            raise InputError(f"defocus_max={self.defocus_max} must be >= defocus_min={self.defocus_min} (Å)")
        if self.astigmatism > self.defocus_min:
            raise InputError(f"astigmatism={self.astigmatism} must be <= defocus_min={self.defocus_min} (Å)")
        if self.pixel_size is not None:
            check_number("pixel_size", self.pixel_size, 1e-3)
        if self.min_distance is not None:
            check_number("min_distance", self.min_distance, 0.0)


@dataclass
class SimulatedMicrographs:
    """The result of :func:`simulate_micrographs`: ``micrographs`` (in memory, names
    ``mic_0000``...), their ``images`` ``(size, size) float32``, the true particle boxes
    ``truth[name]`` and the junk ``junk[name]`` (centres px, box side = particle box, score 1), the
    ``spec``, the ``seed`` and the noise ``sigma``."""

    micrographs: list[Micrograph]
    images: list[np.ndarray]
    truth: dict[str, PickSet]
    junk: dict[str, PickSet]
    spec: MicrographSimulation
    seed: int
    sigma: float


def _volume(spec: MicrographSimulation) -> tuple[torch.Tensor, float]:
    if spec.volume is None:
        return phantom(spec.box_size or PHANTOM_BOX), spec.pixel_size or PHANTOM_PIXEL
    data, header = read_volume(spec.volume)
    voxel = spec.pixel_size or header
    if not voxel:
        raise InputError(f"{spec.volume}: the map header has no voxel size; give pixel_size (Å)")
    volume = torch.from_numpy(data)
    if spec.box_size is not None and spec.box_size != volume.shape[-1]:
        raise InputError(f"box_size={spec.box_size} differs from the map's side {volume.shape[-1]} px "
                         f"({spec.volume}); leave box_size null for a map")
    return volume, voxel


def _place(spec: MicrographSimulation, box: int, distance: float, n: int, rng: np.random.Generator,
           name: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) integer centres (x, y) and a carbon mask (size, size) bool of one micrograph."""
    size = spec.size
    carbon = np.zeros((size, size), dtype=bool)
    if spec.carbon_edge > 0:
        y, x = np.mgrid[:size, :size]
        angle = rng.uniform(0, 2 * math.pi)
        normal = np.array([math.cos(angle), math.sin(angle)])
        # the edge crosses the micrograph so that the carbon covers about 15-30% of it
        offset = rng.uniform(0.2, 0.35) * size
        carbon = (x - size / 2) * normal[0] + (y - size / 2) * normal[1] > offset
    holes = rng.uniform(0, size, (spec.empty_regions, 2))
    radius = size / 8
    lo, hi = box // 2, size - (box - box // 2)
    candidates = rng.integers(lo, hi + 1, (max(40 * n, 1000), 2))
    ok = ~carbon[candidates[:, 1], candidates[:, 0]]
    for h in holes:
        ok &= ((candidates - h) ** 2).sum(1) >= radius**2
    accepted = np.empty((n, 2), dtype=np.int64)
    count = 0
    for c in candidates[ok]:
        if count == n:
            break
        if count == 0 or ((accepted[:count] - c) ** 2).sum(1).min() >= distance**2:
            accepted[count] = c
            count += 1
    if count < n:
        raise InputError(f"{name}: only {count} of {n} particles and junk fit at min_distance={distance:g} px "
                         f"on {size}² px; lower particles_per_micrograph, junk_fraction or min_distance")
    return accepted, carbon


def _junk(n: int, box: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """(n, box, box) junk densities: aggregates of Gaussian blobs and soft-edged ice discs."""
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    out = np.zeros((n, box, box), dtype=np.float32)
    for i in range(n):
        if i % 2 == 0:
            for _ in range(rng.integers(3, 8)):
                cx, cy = rng.normal(0, 0.12 * box, 2)
                s = rng.uniform(0.05, 0.1) * box
                out[i] += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
            out[i] *= level / max(out[i].max(), 1e-12)
        else:
            r = rng.uniform(0.25, 0.4) * box
            out[i] = 1.5 * level / (1 + np.exp((np.hypot(x, y) - r) / 1.5))
    return out


def _smooth_field(size: int, generator: torch.Generator) -> torch.Tensor:
    """(size, size) Gaussian random field of std 1, smoothed to about four cycles across: made on
    a 32² grid (Gaussian spectrum of σ = 2 cycles per side) and interpolated up, since a field this
    smooth needs no more samples."""
    coarse = 32
    white = torch.randn(coarse, coarse, generator=generator)
    ky, kx = frequency_grid(coarse)
    smooth = ifft2c(fft2c(white) * torch.exp(-(kx**2 + ky**2) * coarse**2 / (2 * 2.0**2))).real
    field = torch.nn.functional.interpolate(smooth[None, None], size=(size, size), mode="bicubic",
                                            align_corners=False)[0, 0]
    return (field - field.mean()) / field.std()


def simulate_micrographs(spec: MicrographSimulation, *, seed: int = 0) -> SimulatedMicrographs:
    """Simulate ``spec.n_micrographs`` micrographs with their true particle and junk boxes."""
    volume, pixel = _volume(spec)
    box = volume.shape[-1]
    distance = 0.8 * box if spec.min_distance is None else spec.min_distance
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    projector = FourierProjector(volume)
    n_part = spec.particles_per_micrograph
    n_junk = int(round(spec.junk_fraction * n_part))
    names = [f"mic_{i:04d}" for i in range(spec.n_micrographs)]
    signal, carbons, truth, junk, ctfs, boxes = [], [], {}, {}, [], []
    level = None
    for name in names:
        centres, carbon = _place(spec, box, distance, n_part + n_junk, rng, name)
        rng.shuffle(centres)
        projections = projector(random_rotations(n_part, generator=generator)) if n_part else volume.new_zeros(
            (0, box, box))
        if level is None:
            level = float(projections.amax(dim=(-2, -1)).mean()) if n_part else 1.0
        density = np.zeros((spec.size, spec.size), dtype=np.float32)
        pieces = np.concatenate([projections.numpy(), _junk(n_junk, box, level, rng)])
        lo = centres - box // 2
        for (x0, y0), piece in zip(lo, pieces):
            density[y0:y0 + box, x0:x0 + box] += piece
        u = rng.uniform(spec.defocus_min, spec.defocus_max)
        params = {"rlnDefocusU": u, "rlnDefocusV": u - spec.astigmatism, "rlnDefocusAngle": rng.uniform(0, 180),
                  "rlnVoltage": spec.voltage, "rlnSphericalAberration": spec.spherical_aberration,
                  "rlnAmplitudeContrast": spec.amplitude_contrast}
        transfer = ctf(size=spec.size, pixel_size=pixel, defocus_u=params["rlnDefocusU"],
                       defocus_v=params["rlnDefocusV"], defocus_angle=params["rlnDefocusAngle"],
                       voltage=spec.voltage, spherical_aberration=spec.spherical_aberration,
                       amplitude_contrast=spec.amplitude_contrast)[0]
        modulated = -ifft2c(fft2c(torch.from_numpy(density)) * transfer).real
        signal.append(modulated)
        carbons.append(carbon)
        ctfs.append(params)
        part, rest = centres[:n_part].astype(np.float64), centres[n_part:].astype(np.float64)
        truth[name] = PickSet(part, np.full(n_part, float(box)), np.ones(n_part), has_scores=False)
        junk[name] = PickSet(rest, np.full(n_junk, float(box)), np.ones(n_junk), has_scores=False)
        if n_part:
            boxes.append(torch.from_numpy(box_windows(modulated.numpy(), part, box)))
    sigma = noise_sigma(torch.cat(boxes), spec.snr) if boxes else 1.0
    images, micrographs = [], []
    for name, modulated, carbon, params in zip(names, signal, carbons, ctfs):
        image = add_gaussian_noise(modulated, sigma, generator=generator)
        if spec.ice > 0:
            image = image + spec.ice * sigma * _smooth_field(spec.size, generator)
        if spec.carbon_edge > 0:
            soft = torch.from_numpy(carbon.astype(np.float32))
            ky, kx = frequency_grid(spec.size)
            soft = ifft2c(fft2c(soft) * torch.exp(-(kx**2 + ky**2) * (2 * math.pi * 3.0) ** 2 / 2)).real
            image = image - spec.carbon_edge * sigma * soft  # denser film: darker, as the particles
        array = image.numpy().astype(np.float32)
        images.append(array)
        micrographs.append(Micrograph(name, None, pixel, params, data=array))
    return SimulatedMicrographs(micrographs, images, truth, junk, spec, seed, float(sigma))


def write_simulated(sim: SimulatedMicrographs, out_dir: str | os.PathLike) -> Path:
    """Write ``Micrographs/<name>.mrc``, ``micrographs_ctf.star`` (RELION 4 optics + micrographs,
    names relative to ``out_dir``, the RELION project directory), the true boxes as
    ``truth/<format>/<name>.<suffix>`` in every format the consensus reads (box, star, cbox, topaz,
    csv), the junk as ``junk/box/``, and ``simulation.json`` (spec, seed, noise σ). Returns the STAR path."""
    out = Path(out_dir)
    for m, image in zip(sim.micrographs, sim.images):
        write_micrograph(out / "Micrographs" / f"{m.name}.mrc", image, m.pixel_size)
        for fmt, (suffix, writer) in TRUTH_FORMATS.items():
            extra = {"image_name": m.name} if writer is write_topaz else {}
            writer(out / "truth" / fmt / f"{m.name}{suffix}", sim.truth[m.name], **extra)
        write_box(out / "junk" / "box" / f"{m.name}.box", sim.junk[m.name])
    spec = sim.spec
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [sim.micrographs[0].pixel_size], "rlnVoltage": [spec.voltage],
                           "rlnSphericalAberration": [spec.spherical_aberration],
                           "rlnAmplitudeContrast": [spec.amplitude_contrast]})
    table = pd.DataFrame([{"rlnMicrographName": f"Micrographs/{m.name}.mrc", "rlnOpticsGroup": 1,
                           "rlnDefocusU": m.ctf["rlnDefocusU"], "rlnDefocusV": m.ctf["rlnDefocusV"],
                           "rlnDefocusAngle": m.ctf["rlnDefocusAngle"]} for m in sim.micrographs])
    star = out / "micrographs_ctf.star"
    write_star(star, {"optics": optics, "micrographs": table})
    with atomic_output(out / "simulation.json") as tmp:
        Path(tmp).write_text(json.dumps({"seed": sim.seed, "noise_sigma": sim.sigma, "spec": asdict(spec)}, indent=1))
    return star
