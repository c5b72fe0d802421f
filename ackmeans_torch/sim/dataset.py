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

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops import ctf as ctf_module
from ackmeans_torch.ops.fourier import fourier_crop_volume, ifft2c
from ackmeans_torch.ops.projection import FourierProjector, relion_origin_to_shift
from ackmeans_torch.ops.rotations import direction_to_rot_tilt, euler_to_matrix
from ackmeans_torch.sim.noise import add_gaussian_noise, noise_sigma
from ackmeans_torch.sim.views import gaussian_directions_around, half_sphere_points, uniform_psi

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
    with_ctf = defocus_range is not None
    if with_ctf:
        lo, hi = defocus_range
        defocus_u = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
        defocus_v = defocus_u - astigmatism
        defocus_angle = torch.rand(n, generator=gen, dtype=torch.float64) * 180.0

    def ctf_batch(sl: slice) -> torch.Tensor:
        return ctf_module.ctf(
            size=size, pixel_size=pixel_size, defocus_u=defocus_u[sl], defocus_v=defocus_v[sl],
            defocus_angle=defocus_angle[sl], voltage=voltage,
            spherical_aberration=spherical_aberration, amplitude_contrast=amplitude_contrast,
            phase_shift=phase_shift, b_factor=b_factor, device=device,
        )

    projector = FourierProjector(volume.to(device), padding=2)
    rotations = euler_to_matrix(angles).to(torch.float32)
    images = torch.empty((n, size, size), dtype=torch.float32)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        spectra = projector.spectra(rotations[sl].to(device), shifts[sl].to(device))
        if with_ctf:
            spectra = spectra * ctf_batch(sl)
        images[sl] = ifft2c(spectra).real.cpu()

    if snr is not None:
        sigma = noise_sigma(images, snr)
        images = add_gaussian_noise(images, sigma, generator=gen)
    if with_ctf and phase_flip:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            images[sl] = ctf_module.phase_flip(images[sl].to(device), ctf_batch(sl)).cpu()

    # + 0.0 turns the -0.0 of negated zero shifts into 0.0 for clean STAR files.
    origins_angst = relion_origin_to_shift(shifts) * pixel_size + 0.0
    table = {
        "rlnAngleRot": angles[:, 0].numpy(),
        "rlnAngleTilt": angles[:, 1].numpy(),
        "rlnAnglePsi": angles[:, 2].numpy(),
        "rlnOriginXAngst": origins_angst[:, 0].numpy(),
        "rlnOriginYAngst": origins_angst[:, 1].numpy(),
    }
    if with_ctf:
        table |= {
            "rlnDefocusU": defocus_u.numpy(),
            "rlnDefocusV": defocus_v.numpy(),
            "rlnDefocusAngle": defocus_angle.numpy(),
            "rlnPhaseShift": np.full(n, float(phase_shift)),
            "rlnCtfBfactor": np.full(n, float(b_factor)),
        }
    table |= {
        # the microscope's optics, even without a CTF applied: RELION's readers require them
        # in the optics table (relion_reconstruct stops on a table without them)
        "rlnVoltage": np.full(n, float(voltage)),
        "rlnSphericalAberration": np.full(n, float(spherical_aberration)),
        "rlnAmplitudeContrast": np.full(n, float(amplitude_contrast)),
        "rlnCtfDataArePhaseFlipped": np.full(n, int(with_ctf and phase_flip)),
        "rlnImagePixelSize": np.full(n, pixel_size),
        "rlnImageSize": np.full(n, size),
        "rlnOpticsGroup": np.ones(n, dtype=int),
        CENTRE_LABEL_COLUMN: (centre_index + 1).numpy(),
    }
    return images, pd.DataFrame(table)


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
