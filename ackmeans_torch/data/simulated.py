"""A simulated image source: images made by ``sim/`` held in memory with their ground truth.

Sibling of the real stacks (``data/source.py``): the particle table carries the true angles,
shifts, CTF parameters and the orientation-centre label (``sim.dataset.CENTRE_LABEL_COLUMN``) in
the same RELION-4 columns a real STAR file uses, so evaluation code scores both alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN, simulate_dataset


class SimulatedSource(ImageSource):
    """``images (N, L, L)`` float32 and their ground-truth ``particles`` table (N rows).

    Build from arrays with ``SimulatedSource(images, particles, pixel_size=...)`` or simulate
    with ``SimulatedSource.simulate(volume, voxel_size, **simulate_dataset_kwargs)``."""

    def __init__(self, images: torch.Tensor, particles: pd.DataFrame, *, pixel_size: float) -> None:
        if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
            raise InputError(f"images must have shape (N, L, L), got {tuple(images.shape)}")
        if len(particles) != images.shape[0]:
            raise InputError(
                f"particles has {len(particles)} rows but there are {images.shape[0]} images"
            )
        if not pixel_size > 0:
            raise InputError(f"pixel_size={pixel_size} must be > 0 Å")
        self._images = images.detach().to(device="cpu", dtype=torch.float32)
        self.particles = particles.reset_index(drop=True)
        self.pixel_size = float(pixel_size)
        self.box_size = int(images.shape[-1])

    @classmethod
    def simulate(cls, volume: torch.Tensor, voxel_size: float, **kwargs) -> SimulatedSource:
        """Run :func:`ackmeans_torch.sim.dataset.simulate_dataset` (same keyword arguments) and
        wrap its result."""
        images, particles = simulate_dataset(volume, voxel_size, **kwargs)
        return cls(images, particles, pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))

    def images(self, indices: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """Images at ``indices`` (0-based) as ``(B, L, L) float32`` (a copy)."""
        if isinstance(indices, slice):
            return self._images[indices].clone()
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise InputError(f"image index out of range: the source has {len(self)} images")
        return self._images[idx]

    @property
    def centre_labels(self) -> np.ndarray:
        """``(N,)`` int orientation-centre label of each image (1-based)."""
        return self.particles[CENTRE_LABEL_COLUMN].to_numpy()
