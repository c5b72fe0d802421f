"""Particle images as the classifiers see them: phase-flipped (when the metadata has a CTF and
the images are not flipped yet), Fourier-cropped to a target box, optionally low-passed, and
normalised against the background outside the particle mask (RELION's normalisation: background
mean 0, background standard deviation 1).

Shapes: the result is ``(N, L', L') float32``; ``mask_radius`` in output pixels.

:class:`PreparedImages` applies all of it per chunk on the fly, so a classifier can read a
memory-mapped stack larger than memory a chunk at a time (issue 7: nothing N×L×L is cached);
``materialise()`` gives the in-memory tensor for data that fits. Every step works on each image
alone, so both give the same pixels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.fourier import fft2c, fourier_crop, frequency_grid, ifft2c
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.sim.ctf import ctf, phase_flip

_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                "rlnSphericalAberration", "rlnAmplitudeContrast")


def needs_phase_flip(particles: pd.DataFrame) -> bool:
    """True when every CTF column is present and the images are not phase-flipped yet."""
    if not has_ctf(particles):
        return False
    flipped = particles.get("rlnCtfDataArePhaseFlipped", pd.Series(0, index=particles.index))
    return not bool((flipped.astype(int) == 1).all())


def has_ctf(particles: pd.DataFrame) -> bool:
    """True when the table has every CTF column."""
    return all(c in particles for c in _CTF_COLUMNS)


def ctf_of(rows: pd.DataFrame, *, size: int, pixel_size: float, device=None) -> torch.Tensor:
    """``(B, L, L)`` CTF of particle rows ``rows`` on the centred ``size`` grid of pixel size
    ``pixel_size`` Å (``sim.ctf.ctf``; absent phase shift and B-factor count as 0)."""
    def col(name: str, default: float = 0.0) -> np.ndarray:
        # a copy: torch warns on (and must not write to) pandas' read-only buffers
        return rows[name].to_numpy(np.float64, copy=True) if name in rows else np.full(len(rows), default)

    return ctf(size=size, pixel_size=pixel_size, defocus_u=col("rlnDefocusU"),
               defocus_v=col("rlnDefocusV"), defocus_angle=col("rlnDefocusAngle"),
               voltage=col("rlnVoltage"), spherical_aberration=col("rlnSphericalAberration"),
               amplitude_contrast=col("rlnAmplitudeContrast"), phase_shift=col("rlnPhaseShift"),
               device=device)


def _flip(images: torch.Tensor, rows: pd.DataFrame, pixel_size: float) -> torch.Tensor:
    return phase_flip(images, ctf_of(rows, size=images.shape[-1], pixel_size=pixel_size,
                                     device=images.device))


def normalise_background(images: torch.Tensor, mask_radius: float) -> torch.Tensor:
    """Images ``(B, L, L)`` with the pixels outside ``mask_radius`` (px) at mean 0 and std 1."""
    outside = circular_mask(images.shape[-1], mask_radius, soft_edge=0, device=images.device) == 0
    if int(outside.sum()) < 2:
        raise InputError(f"mask_radius={mask_radius} px leaves no background in a "
                         f"{images.shape[-1]} px box; lower the mask diameter")
    background = images[:, outside]
    mean, std = background.mean(1), background.std(1)
    return (images - mean[:, None, None]) / std.clamp_min(1e-12)[:, None, None]


def low_pass(images: torch.Tensor, resolution: float, pixel_size: float) -> torch.Tensor:
    """Zero every spatial frequency finer than ``resolution`` Å (a hard cut, so no frequency the
    aligner uses is half-weighted)."""
    ky, kx = frequency_grid(images.shape[-1], device=images.device)
    keep = (kx**2 + ky**2).sqrt() <= pixel_size / resolution
    return ifft2c(fft2c(images) * keep).real.to(images.dtype)


class PreparedImages:
    """``source`` as the classifiers see it (module docstring), read on demand.

    ``box_size``: output box L' (Fourier crop; None keeps it). ``mask_diameter``: particle mask
    in Å (None: 90% of the box). ``phase_flip_images``: None = flip when the table has a CTF and
    does not say the images are flipped. ``device``: where :meth:`read` puts the images.
    Attributes: ``box_size`` L', ``pixel_size`` Å, ``mask_radius`` px (both of the output box),
    ``phase_flipped``; ``len()`` is N and ``shape`` is ``(N, L', L')``.
    """

    def __init__(self, source: ImageSource, *, box_size: int | None = None,
                 mask_diameter: float | None = None, lowpass_resolution: float | None = None,
                 phase_flip_images: bool | None = None,
                 device: str | torch.device = "cpu") -> None:
        full = source.box_size
        box = full if box_size is None else int(box_size)
        if not 8 <= box <= full:
            raise InputError(f"box_size={box_size} must be between 8 and the images' box "
                             f"{full} px")
        pixel_size = source.pixel_size * full / box
        radius = 0.45 * box if mask_diameter is None else 0.5 * mask_diameter / pixel_size
        if not 0 < radius <= box / 2:
            raise InputError(f"mask_diameter={mask_diameter} Å must be > 0 and fit the "
                             f"{box * pixel_size:.1f} Å box")
        flip = (needs_phase_flip(source.particles) if phase_flip_images is None
                else phase_flip_images)
        if flip and not has_ctf(source.particles):
            raise InputError(f"phase_flip=true but the particles lack CTF columns {_CTF_COLUMNS}")
        self.source, self.box_size, self.pixel_size = source, box, pixel_size
        self.mask_radius, self.phase_flipped = radius, flip
        self.lowpass_resolution, self.device = lowpass_resolution, torch.device(device)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.box_size, self.box_size)

    def read(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Preprocessed images at 0-based ``index (B,)`` → ``(B, L', L') float32`` on ``device``."""
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, np.int64)
        images = self.source.images(index).to(self.device)
        # Unmap what was read (a StackSource re-maps on the next read): pages of a memory map stay
        # in this process's resident set until unmapped, so one pass over a 3 GB stack would
        # otherwise hold 3 GB resident (reclaimable page cache, but counted in RSS).
        self.source.close()
        if self.phase_flipped:
            images = _flip(images, self.source.particles.iloc[index], self.source.pixel_size)
        images = fourier_crop(images, self.box_size)
        if self.lowpass_resolution:
            images = low_pass(images, self.lowpass_resolution, self.pixel_size)
        return normalise_background(images, self.mask_radius)

    def materialise(self, chunk_size: int = 2048) -> torch.Tensor:
        """All N images ``(N, L', L')`` in memory on ``device``, read ``chunk_size`` at a time."""
        return torch.cat([self.read(np.arange(start, min(start + chunk_size, len(self))))
                          for start in range(0, len(self), chunk_size)])
