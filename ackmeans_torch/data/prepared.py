"""Particle images as the classifiers see them: phase-flipped (when the metadata has a CTF and
the images are not flipped yet), Fourier-cropped to a target box, optionally low-passed, and
normalised against the background outside the particle mask (RELION's normalisation: background
mean 0, background standard deviation 1).

Shapes: the result is ``(N, L', L') float32``; ``mask_radius`` in output pixels.

:func:`preprocess` returns an :class:`~ackmeans_torch.data.source.ImageSource`: a
:class:`PreparedSource` that applies every step per chunk on the fly, so a classifier reads a
memory-mapped stack larger than memory a chunk at a time (nothing N×L×L is cached), or, for data
that fits (``in_memory``), the same images held as an :class:`ArraySource`. Every step works on
each image alone, so both give the same pixels. :class:`PreprocessOptions` holds the settings,
validated when made (before any image is read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ArraySource, ImageSource
from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.ops.ctf import ctf, phase_flip
from ackmeans_torch.ops.fourier import fft2c, fourier_crop, frequency_grid, ifft2c
from ackmeans_torch.ops.polar import circular_mask

log = logging.getLogger(__name__)
_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                "rlnSphericalAberration", "rlnAmplitudeContrast")


def needs_phase_flip(particles: pd.DataFrame) -> bool:
    """True when every CTF column is present and the table says the images are not
    phase-flipped yet (``rlnCtfDataArePhaseFlipped`` 0, or absent: RELION's reading)."""
    if not has_ctf(particles):
        return False
    flipped = particles.get("rlnCtfDataArePhaseFlipped", pd.Series(0, index=particles.index))
    return not bool((flipped.astype(int) == 1).all())


def _decide_phase_flip(particles: pd.DataFrame, requested: bool | None) -> bool:
    """Whether preprocessing flips the images, said in the log with its reason. With
    ``requested=None`` the table decides, but only when it says so: a table with CTF columns and
    no ``rlnCtfDataArePhaseFlipped`` (ASPIRE's, old RELION jobs') may hold flipped or unflipped
    images, which the images themselves cannot tell reliably (a flipped and an unflipped image
    have the same power spectrum), so the run refuses to guess rather than flip twice."""
    if requested is not None:
        if requested and not has_ctf(particles):
            raise InputError(f"phase_flip=true but the particles lack CTF columns {_CTF_COLUMNS}")
        log.info("phase flip: %s (preprocess.phase_flip=%s)", "yes" if requested else "no",
                 str(requested).lower())
        return requested
    if not has_ctf(particles):
        log.info("phase flip: no (the particle table has no CTF columns)")
        return False
    if "rlnCtfDataArePhaseFlipped" not in particles:
        raise InputError("the particle table has CTF columns but no rlnCtfDataArePhaseFlipped, so "
                         "whether the images are flipped already is unknown; say it: "
                         "preprocess.phase_flip=true (flip them now) or false (leave them)")
    flip = needs_phase_flip(particles)
    log.info("phase flip: %s (rlnCtfDataArePhaseFlipped = %s)", "yes" if flip else "no",
             "0" if flip else "1")
    return flip


def has_ctf(particles: pd.DataFrame) -> bool:
    """True when the table has every CTF column."""
    return all(c in particles for c in _CTF_COLUMNS)


def ctf_of(rows: pd.DataFrame, *, size: int, pixel_size: float, device=None) -> torch.Tensor:
    """``(B, L, L)`` CTF of particle rows ``rows`` on the centred ``size`` grid of pixel size
    ``pixel_size`` Å (``ops.ctf.ctf``; absent phase shift and B-factor count as 0)."""
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


#: ``in_memory="auto"`` keeps a preprocessed stack this small in memory
IN_MEMORY_BYTES = 2 * 2**30


@dataclass(frozen=True, kw_only=True)
class PreprocessOptions:
    """``box_size``: output box L' (Fourier crop; None keeps it). ``mask_diameter``: particle
    mask in Å (None: 90% of the box). ``lowpass_resolution`` Å (None: no low-pass).
    ``phase_flip``: None = as the table's ``rlnCtfDataArePhaseFlipped`` says (refused when a table
    with CTF columns lacks it).
    ``in_memory``: "auto" (in memory when the preprocessed stack is ≤ 2 GiB), True or False (read
    per chunk)."""

    box_size: int | None = None
    mask_diameter: float | None = None
    lowpass_resolution: float | None = None
    phase_flip: bool | None = None
    in_memory: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.box_size is not None:
            check_int("preprocess.box_size", self.box_size, 8)
        if self.mask_diameter is not None:
            check_number("preprocess.mask_diameter", self.mask_diameter, 1e-6)
        if self.lowpass_resolution is not None:
            check_number("preprocess.lowpass_resolution", self.lowpass_resolution, 1e-6)
        if self.phase_flip not in (None, True, False):
            raise InputError(f"preprocess.phase_flip={self.phase_flip!r} must be null, true or "
                             "false")
        if self.in_memory not in ("auto", True, False):
            raise InputError(f"preprocess.in_memory={self.in_memory!r} must be auto, true or "
                             "false")


class PreparedSource(ImageSource):
    """``source`` as the classifiers see it (module docstring), read on demand on ``device``.

    ``box_size`` L', ``pixel_size`` Å and ``mask_radius`` px are those of the output box;
    ``phase_flipped`` says whether the images are (by this step or before); ``parent`` is the
    source it reads."""

    def __init__(self, source: ImageSource, options: PreprocessOptions, *,
                 device: str | torch.device = "cpu") -> None:
        full = source.box_size
        box = full if options.box_size is None else options.box_size
        if not box <= full:
            raise InputError(f"preprocess.box_size={box} must be <= the images' box {full} px")
        pixel_size = source.pixel_size * full / box
        diameter = options.mask_diameter
        radius = 0.45 * box if diameter is None else 0.5 * diameter / pixel_size
        if not radius <= box / 2:
            raise InputError(f"preprocess.mask_diameter={diameter} Å must fit the "
                             f"{box * pixel_size:.1f} Å box")
        flip = _decide_phase_flip(source.particles, options.phase_flip)
        self.parent, self.particles = source, source.particles
        self.box_size, self.pixel_size, self.mask_radius = box, pixel_size, radius
        self._flip = flip
        # flipped by this step, or before (the source knows, or its table says so)
        self.phase_flipped = flip or source.phase_flipped or (
            has_ctf(source.particles) and not needs_phase_flip(source.particles))
        self.lowpass_resolution, self.device = options.lowpass_resolution, torch.device(device)

    def image_names(self, relative_to) -> list[str] | None:
        return self.parent.image_names(relative_to)

    def images(self, indices) -> torch.Tensor:
        """Preprocessed images at 0-based ``indices (B,)`` → ``(B, L', L') float32`` on
        ``device``."""
        index = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices,
                           np.int64).reshape(-1)
        images = self.parent.images(index).to(self.device)
        # Unmap what was read (a StackSource re-maps on the next read): pages of a memory map stay
        # in this process's resident set until unmapped, so one pass over a 3 GB stack would
        # otherwise hold 3 GB resident (reclaimable page cache, but counted in RSS).
        self.parent.close()
        if self._flip:
            images = _flip(images, self.particles.iloc[index], self.parent.pixel_size)
        images = fourier_crop(images, self.box_size)
        if self.lowpass_resolution:
            images = low_pass(images, self.lowpass_resolution, self.pixel_size)
        return normalise_background(images, self.mask_radius)

    def materialise(self, chunk_size: int = 2048) -> ArraySource:
        """The same images held in memory."""
        return ArraySource(self.to_tensor(chunk_size), self.particles,
                           pixel_size=self.pixel_size, mask_radius=self.mask_radius,
                           phase_flipped=self.phase_flipped, origin=self.parent)


def preprocess(source: ImageSource, options: PreprocessOptions | None = None, *,
               device: str | torch.device = "cpu", chunk_size: int = 2048) -> ImageSource:
    """``source`` preprocessed (module docstring): read per chunk, or held in memory when
    ``options.in_memory`` says so."""
    options = options or PreprocessOptions()
    prepared = PreparedSource(source, options, device=device)
    in_memory = options.in_memory
    if in_memory == "auto":
        in_memory = len(prepared) * prepared.box_size**2 * 4 <= IN_MEMORY_BYTES
    return prepared.materialise(chunk_size) if in_memory else prepared
