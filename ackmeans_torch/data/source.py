"""Image sources: one interface for real particle stacks and simulated data.

An :class:`ImageSource` holds N square images of side L (read lazily, in chunks) and a particle
table: a ``pandas.DataFrame`` with one row per image in RELION-4 column names without the leading
underscore (``rlnImageName``, ``rlnAnglePsi``, ``rlnOriginXAngst``, ``rlnDefocusU``, ...), optics
already merged per particle. Simulated and real sources are siblings (ASPIRE's habit); a simulated
one also carries its ground truth in the same table (true angles, shifts, CTF, and the
orientation-centre label), so the same evaluation code scores both.

Preprocessing returns a source too (``data/prepared.py``), in memory (:class:`ArraySource`) or
read and preprocessed chunk by chunk from a memory-mapped stack, so every algorithm takes one
type. A source says where its images come out (``device``) and, once preprocessed, the particle
mask radius it was normalised with and whether its images are phase-flipped.

Shapes: ``images(indices)`` returns ``(B, L, L) float32`` on ``device``; ``pixel_size`` is in Å.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError


class ImageSource(abc.ABC):
    """N images of L×L pixels, read on demand, with a per-image particle table."""

    #: Å per pixel
    pixel_size: float
    #: box side L in pixels
    box_size: int
    #: one row per image, RELION-4 column names (no leading underscore)
    particles: pd.DataFrame
    #: where ``images`` puts its tensors
    device: torch.device = torch.device("cpu")
    #: the particle mask radius (px) the images were normalised with; None before preprocessing
    mask_radius: float | None = None
    #: the images have been phase-flipped (by the preprocessing, or before they were written)
    phase_flipped: bool = False

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.box_size, self.box_size)

    @abc.abstractmethod
    def images(self, indices: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """Images at ``indices`` (0-based) as a ``(B, L, L) float32`` tensor on ``device``."""

    def image_names(self, relative_to: str | os.PathLike) -> list[str] | None:
        """``rlnImageName`` of each image valid from the folder ``relative_to``, or None for
        images that exist in memory only (an output must then write them)."""
        return None

    def to_tensor(self, chunk_size: int = 2048) -> torch.Tensor:
        """All N images ``(N, L, L)`` in memory on ``device``, read ``chunk_size`` at a time."""
        return torch.cat([images for _, images in self.chunks(chunk_size)])

    def close(self) -> None:
        """Release what reading holds (memory maps); reading again reopens. Nothing by default."""

    def chunks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` over all images in order, ``chunk_size`` at a time, so a
        stack larger than memory is never read whole."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        for start in range(0, len(self), chunk_size):
            idx = np.arange(start, min(start + chunk_size, len(self)))
            yield idx, self.images(idx)


class ArraySource(ImageSource):
    """Images held in memory as one ``(N, L, L)`` tensor (on any device) with their table;
    ``origin``: the source they were read from, which names their files (None: in memory only)."""

    def __init__(self, images: torch.Tensor, particles: pd.DataFrame, *, pixel_size: float,
                 mask_radius: float | None = None, phase_flipped: bool = False,
                 origin: ImageSource | None = None) -> None:
        if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
            raise InputError(f"images must have shape (N, L, L), got {tuple(images.shape)}")
        if len(particles) != images.shape[0]:
            raise InputError(
                f"particles has {len(particles)} rows but there are {images.shape[0]} images")
        if not pixel_size > 0:
            raise InputError(f"pixel_size={pixel_size} must be > 0 Å")
        self._images = images.detach().to(torch.float32)
        self.particles = particles.reset_index(drop=True)
        self.pixel_size, self.box_size = float(pixel_size), int(images.shape[-1])
        self.device, self.mask_radius, self.phase_flipped = images.device, mask_radius, phase_flipped
        self.origin = origin

    def image_names(self, relative_to) -> list[str] | None:
        return None if self.origin is None else self.origin.image_names(relative_to)

    def images(self, indices: Sequence[int] | np.ndarray | slice | torch.Tensor) -> torch.Tensor:
        """Images at ``indices`` (0-based) as ``(B, L, L) float32`` (a copy)."""
        if isinstance(indices, slice):
            return self._images[indices].clone()
        idx = torch.as_tensor(np.asarray(indices.cpu() if isinstance(indices, torch.Tensor)
                                         else indices, dtype=np.int64).reshape(-1))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise InputError(f"image index out of range: the source has {len(self)} images")
        return self._images[idx.to(self.device)]

    def to_tensor(self, chunk_size: int = 2048) -> torch.Tensor:
        return self._images
