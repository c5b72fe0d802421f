"""Simulated particle data sets: the ACK-means paper's protocol and smaller variants, one function.

Paper ("Benchmark with simulated data"): 10,000 projections of the E. coli 70S ribosome; 100
orientations chosen uniformly over half a sphere, each a Gaussian centre with 100 projections
around it; CTF applied; Gaussian noise at SNR 1/3, 1/10 or 1/30; the inputs phase-flipped. The
paper does not give the Gaussian spread, the defocus range or the microscope; the defaults here
(5° per tangent axis, defocus U uniform in 1.0–3.0 µm, 300 kV, Cs 2.7 mm, amplitude contrast 0.1)
are typical values, recorded in the table so a run is reproducible from its output.

Pipeline per image i (batched): view direction d_i ~ Gaussian(centre c_i, spread) on the sphere →
(rot, tilt) from d_i, psi uniform → projection by the Fourier-slice theorem with a uniform random
content shift in [-max_shift_px, max_shift_px]² → × CTF in Fourier space → clean image; then
white Gaussian noise at the whole-box SNR of ``sim/noise.py`` (the CTF-modulated clean signal);
then phase flipping. Images are in random order (a permutation drawn from the seed), not grouped
by centre, because sequential classifiers (the paper's one-by-one update) depend on order.
The stages after the view draws (``Optics`` for the CTF draws and optics columns,
``render_images``, ``pose_columns``) and the map/imaging settings (``MapImaging``) are shared with
the heterogeneous 3D simulator (``sim/hetero.py``).

Ground-truth table: one row per image, RELION-4 column names without the leading underscore,
optics merged per particle. The orientation-centre label (1..n_centres) is in
``CENTRE_LABEL_COLUMN`` = ``rlnBeamTiltClass``: a RELION-legal integer particle label that RELION
>= 3.1 no longer uses (beam-tilt classes were replaced by optics groups; only RELION 3.0-era
beam-tilt estimation and the re-extraction of an optics-less STAR read it), so relion_refine 2D/3D
classification ignores it. The alternatives are taken: ``rlnClassNumber`` holds classification
results, ``rlnGroupNumber`` defines relion_refine's noise/scale groups (it would leak the truth into
a RELION run), ``rlnRandomSubset`` its half-sets, ``rlnHelicalTubeID`` switches on helical logic,
and an invented label would be dropped with a warning by RELION.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.mrc import load_volume
from ackmeans_torch.ops import ctf as ctf_module
from ackmeans_torch.ops.fourier import fourier_crop_volume, ifft2c
from ackmeans_torch.ops.projection import FourierProjector, relion_origin_to_shift
from ackmeans_torch.ops.rotations import direction_to_rot_tilt, euler_to_matrix
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.views import gaussian_directions_around, half_sphere_points, uniform_psi
from ackmeans_torch.sim.volume import phantom

#: column of the particle table holding the orientation-centre label (1-based); see the module
#: docstring for why this RELION label.
CENTRE_LABEL_COLUMN = "rlnBeamTiltClass"


def simulate_dataset(
    volume: torch.Tensor,
    voxel_size: float,
    *,
    n_centres: int = 100,
    per_centre: int = 100,
    spread_deg: float = 5.0,
    snr: float | None = 0.1,
    defocus_range: tuple[float, float] | None = (10000.0, 30000.0),
    astigmatism: float = 0.0,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift: float = 0.0,
    b_factor: float = 0.0,
    phase_flip: bool = True,
    max_shift_px: float = 0.0,
    box_size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_size: int = 1000,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Simulate ``n_centres × per_centre`` particle images of ``volume (L, L, L)`` (z, y, x).

    Args:
        volume: the map; ``voxel_size`` its voxel size in Å.
        n_centres, per_centre: orientation centres spread uniformly over the half sphere z ≥ 0
            (``rotations.half_sphere_points``) and images drawn around each.
        spread_deg: Gaussian spread of the viewing direction around its centre, degrees per
            tangent axis (``rotations.gaussian_directions_around``).
        snr: whole-box SNR of ``sim/noise.py``; ``None`` for clean images.
        defocus_range: (min, max) Å; rlnDefocusU is uniform in it, rlnDefocusV = U − astigmatism,
            rlnDefocusAngle uniform in [0, 180). ``None``: no CTF (and no phase flip).
        voltage (kV), spherical_aberration (mm), amplitude_contrast, phase_shift (deg),
            b_factor (Å²): the remaining CTF parameters (``ops/ctf.py``), the same for all images.
        phase_flip: phase-flip the noisy images (the paper's inputs are).
        max_shift_px: content shifts uniform in [-max, max]² px (0: centred particles).
        box_size: output box; smaller than L downsamples the map by Fourier cropping first (the
            pixel size grows by L / box_size).
        seed: every random draw comes from ``torch.Generator().manual_seed(seed)`` on the CPU, in
            a fixed order: the same seed gives identical images and table; another
            ``batch_size`` or device draws the same numbers (images then agree to float32
            rounding of the batched FFTs).
        device: where the projections run (default: the volume's device); ``batch_size`` images
            per projection batch bound the memory.

    Returns:
        ``images (N, L', L') float32`` on the CPU, N = n_centres × per_centre, and the particle
        table (one row per image, RELION-4 names without underscore): rlnAngleRot/Tilt/Psi (deg),
        rlnOriginX/YAngst (Å, RELION sign), rlnVoltage, rlnSphericalAberration,
        rlnAmplitudeContrast, rlnDefocusU/V/Angle, rlnPhaseShift, rlnCtfBfactor (when a CTF is
        applied), rlnCtfDataArePhaseFlipped, rlnImagePixelSize, rlnImageSize, rlnOpticsGroup and
        ``CENTRE_LABEL_COLUMN``.
    """
    _check(volume, voxel_size, n_centres, per_centre, snr, defocus_range, astigmatism,
           phase_flip, max_shift_px, box_size, batch_size)
    device = torch.device(device) if device is not None else volume.device
    size = volume.shape[-1]
    if box_size is not None and box_size != size:
        volume = fourier_crop_volume(volume, box_size)
        pixel_size = voxel_size * size / box_size
        size = box_size
    else:
        pixel_size = float(voxel_size)
    n = n_centres * per_centre
    gen = torch.Generator().manual_seed(seed)

    # All per-image parameters are drawn first (small), in a fixed order, on the CPU.
    order = torch.randperm(n, generator=gen)
    centre_index = torch.arange(n_centres).repeat_interleave(per_centre)[order]
    centres = half_sphere_points(n_centres)
    directions = gaussian_directions_around(centres[centre_index], spread_deg, generator=gen)
    angles = torch.cat([direction_to_rot_tilt(directions), uniform_psi(n, generator=gen)[:, None]], 1)
    shifts = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * max_shift_px
    optics = Optics.draw(
        n, size=size, pixel_size=pixel_size, defocus_range=defocus_range,
        astigmatism=astigmatism, voltage=voltage, spherical_aberration=spherical_aberration,
        amplitude_contrast=amplitude_contrast, phase_shift=phase_shift, b_factor=b_factor,
        phase_flip=phase_flip, generator=gen)
    images = render_images([volume], torch.zeros(n, dtype=torch.long), euler_to_matrix(angles),
                           shifts, optics, snr=snr, generator=gen, device=device,
                           batch_size=batch_size)
    table = pose_columns(angles, shifts, pixel_size) | optics.columns(n)
    table[CENTRE_LABEL_COLUMN] = (centre_index + 1).numpy()
    return images, pd.DataFrame(table)


@dataclass(frozen=True, kw_only=True)
class MapImaging:
    """The map and imaging settings the simulators' specs share (``data.simulated.Simulation``,
    ``sim.hetero.HeteroSimulation``), checked when made.

    ``volume``: a map (.mrc) or None for the built-in asymmetric phantom of ``phantom_box`` px at
    ``phantom_voxel_size`` Å; ``voxel_size`` Å overrides the map header; ``box_size`` the output
    box (None: the map's). CTF (``ctf``: on/off): defocus uniform in [``defocus_min``,
    ``defocus_max``] Å, ``astigmatism`` Å, ``voltage`` kV, ``spherical_aberration`` mm,
    ``amplitude_contrast``, ``b_factor`` Å², ``phase_flip`` the noisy images. ``snr`` (None:
    clean). ``batch_size`` images per projection batch (memory only)."""

    volume: str | None = None
    voxel_size: float | None = None
    phantom_box: int = 64
    phantom_voxel_size: float = 4.0
    box_size: int | None = None
    ctf: bool = True
    defocus_min: float = 10000.0
    defocus_max: float = 30000.0
    astigmatism: float = 0.0
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.1
    b_factor: float = 0.0
    phase_flip: bool = True
    snr: float | None = 0.1
    batch_size: int = 512

    def __post_init__(self) -> None:
        check_int("sim.phantom_box", self.phantom_box, 8)
        check_number("sim.phantom_voxel_size", self.phantom_voxel_size, 1e-6)
        if self.snr is not None:
            check_number("sim.snr", self.snr, 1e-12)
        check_int("sim.batch_size", self.batch_size, 1)
        for name in ("ctf", "phase_flip"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"sim.{name}={getattr(self, name)!r} must be true or false")

    def load_map(self) -> tuple[torch.Tensor, float]:
        """The map ``(L, L, L)`` and its voxel size Å: ``volume`` read, or the phantom."""
        if self.volume is None:
            return phantom(self.phantom_box), float(self.phantom_voxel_size)
        return load_volume(self.volume, voxel_size=self.voxel_size)


@dataclass(frozen=True, kw_only=True)
class Optics:
    """The imaging of a simulated set: box ``size`` px at ``pixel_size`` Å, the microscope
    constants of ``ops/ctf.py`` and, when a CTF is applied, each image's defocus U/V (Å) and
    astigmatism angle (deg) as ``(N,)`` float64 tensors (``None``: no CTF, no phase flip)."""

    size: int
    pixel_size: float
    voltage: float
    spherical_aberration: float
    amplitude_contrast: float
    phase_shift: float
    b_factor: float
    phase_flip: bool
    defocus_u: torch.Tensor | None = None
    defocus_v: torch.Tensor | None = None
    defocus_angle: torch.Tensor | None = None

    @classmethod
    def draw(cls, n: int, *, defocus_range: tuple[float, float] | None, astigmatism: float,
             generator: torch.Generator, **constants) -> Optics:
        """Draw ``n`` images' defoci from ``generator``: U uniform in ``defocus_range`` Å,
        V = U − ``astigmatism``, angle uniform in [0, 180); ``defocus_range=None``: no CTF."""
        if defocus_range is None:
            return cls(**constants)
        lo, hi = defocus_range
        defocus_u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        defocus_angle = torch.rand(n, generator=generator, dtype=torch.float64) * 180.0
        return cls(**constants, defocus_u=defocus_u, defocus_v=defocus_u - astigmatism,
                   defocus_angle=defocus_angle)

    @property
    def with_ctf(self) -> bool:
        return self.defocus_u is not None

    def ctf(self, sl: slice | torch.Tensor, device: torch.device) -> torch.Tensor:
        """The CTFs ``(B, L, L)`` of images ``sl`` (a slice or indices) on ``device``."""
        return ctf_module.ctf(
            size=self.size, pixel_size=self.pixel_size, defocus_u=self.defocus_u[sl],
            defocus_v=self.defocus_v[sl], defocus_angle=self.defocus_angle[sl],
            voltage=self.voltage, spherical_aberration=self.spherical_aberration,
            amplitude_contrast=self.amplitude_contrast, phase_shift=self.phase_shift,
            b_factor=self.b_factor, device=device,
        )

    def columns(self, n: int) -> dict[str, np.ndarray]:
        """The CTF and optics columns of ``n`` rows of the particle table."""
        table = {}
        if self.with_ctf:
            table |= {
                "rlnDefocusU": self.defocus_u.numpy(),
                "rlnDefocusV": self.defocus_v.numpy(),
                "rlnDefocusAngle": self.defocus_angle.numpy(),
                "rlnPhaseShift": np.full(n, float(self.phase_shift)),
                "rlnCtfBfactor": np.full(n, float(self.b_factor)),
            }
        return table | {
            # the microscope's optics, even without a CTF applied: RELION's readers require them
            # in the optics table (relion_reconstruct stops on a table without them)
            "rlnVoltage": np.full(n, float(self.voltage)),
            "rlnSphericalAberration": np.full(n, float(self.spherical_aberration)),
            "rlnAmplitudeContrast": np.full(n, float(self.amplitude_contrast)),
            "rlnCtfDataArePhaseFlipped": np.full(n, int(self.with_ctf and self.phase_flip)),
            "rlnImagePixelSize": np.full(n, self.pixel_size),
            "rlnImageSize": np.full(n, self.size),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }


def render_images(
    volumes: Sequence[torch.Tensor], map_index: torch.Tensor, rotations: torch.Tensor,
    shifts: torch.Tensor, optics: Optics, *, snr: float | None, generator: torch.Generator,
    device: torch.device, batch_size: int,
) -> torch.Tensor:
    """Images ``(N, L, L)`` float32 on the CPU: image i is the projection of
    ``volumes[map_index[i]]`` (each ``(L, L, L)``) in pose ``rotations[i] (3, 3)`` with content
    shift ``shifts[i] (2,)`` px, × its CTF; then white noise at the whole-box ``snr`` of
    ``sim/noise.py`` (None: clean) drawn from ``generator``; then phase flipping when
    ``optics.phase_flip``. Projections run on ``device``, ``batch_size`` images of one map at a
    time (one ``FourierProjector`` per map)."""
    n, size = rotations.shape[0], optics.size
    rotations = rotations.to(torch.float32)
    images = torch.empty((n, size, size), dtype=torch.float32)
    for index, volume in enumerate(volumes):
        members = torch.nonzero(map_index == index).flatten()
        if not len(members):
            continue
        projector = FourierProjector(volume.to(device), padding=2)
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            spectra = projector.spectra(rotations[rows].to(device), shifts[rows].to(device))
            if optics.with_ctf:
                spectra = spectra * optics.ctf(rows, device)
            images[rows] = ifft2c(spectra).real.cpu()

    if snr is not None:
        sigma = noise_sigma(images, snr)
        images = add_gaussian_noise(images, sigma, generator=generator)
    if optics.with_ctf and optics.phase_flip:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            images[sl] = ctf_module.phase_flip(images[sl].to(device), optics.ctf(sl, device)).cpu()
    return images


def pose_columns(angles: torch.Tensor, shifts: torch.Tensor,
                 pixel_size: float) -> dict[str, np.ndarray]:
    """The pose columns of the particle table: ``angles (N, 3)`` RELION (rot, tilt, psi) deg and
    content ``shifts (N, 2)`` px → rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst (RELION sign)."""
    # + 0.0 turns the -0.0 of negated zero shifts into 0.0 for clean STAR files.
    origins_angst = relion_origin_to_shift(shifts) * pixel_size + 0.0
    return {
        "rlnAngleRot": angles[:, 0].numpy(),
        "rlnAngleTilt": angles[:, 1].numpy(),
        "rlnAnglePsi": angles[:, 2].numpy(),
        "rlnOriginXAngst": origins_angst[:, 0].numpy(),
        "rlnOriginYAngst": origins_angst[:, 1].numpy(),
    }


def _check(volume, voxel_size, n_centres, per_centre, snr, defocus_range, astigmatism,
           phase_flip, max_shift_px, box_size, batch_size) -> None:
    """Validate the user-facing parameters once, with messages that say what to change."""
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"volume must be a cube (L, L, L), got {tuple(volume.shape)}")
    if not voxel_size > 0:
        raise InputError(f"voxel_size={voxel_size} must be > 0 Å")
    if n_centres < 1 or per_centre < 1:
        raise InputError(f"n_centres={n_centres} and per_centre={per_centre} must be >= 1")
    if snr is not None and not snr > 0:
        raise InputError(f"snr={snr} must be > 0 (or None for clean images)")
    if defocus_range is not None:
        lo, hi = defocus_range
        if not 0 < lo <= hi:
            raise InputError(f"defocus_range={defocus_range} must be (min, max) Å with 0 < min <= max")
        if not 0 <= astigmatism < lo:
            raise InputError(f"astigmatism={astigmatism} Å must be in [0, min defocus {lo})")
    elif phase_flip:
        raise InputError("phase_flip=True needs a CTF; give defocus_range or set phase_flip=False")
    if max_shift_px < 0:
        raise InputError(f"max_shift_px={max_shift_px} must be >= 0")
    if box_size is not None and not 8 <= box_size <= volume.shape[-1]:
        raise InputError(
            f"box_size={box_size} must be between 8 and the volume size {volume.shape[-1]}"
        )
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} must be >= 1")
