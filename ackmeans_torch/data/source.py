"""Image sources: one interface for real particle stacks and simulated data.

An :class:`ImageSource` holds N square images of side L (read lazily, in chunks) and a particle
table: a ``pandas.DataFrame`` with one row per image in RELION-4 column names without the leading
underscore (``rlnImageName``, ``rlnAnglePsi``, ``rlnOriginXAngst``, ``rlnDefocusU``, ...), optics
already merged per particle. Simulated and real sources are siblings (ASPIRE's habit); a simulated
one also carries its ground truth in the same table (true angles, shifts, CTF, and the
orientation-centre label), so the same evaluation code scores both.

Shapes: ``images(indices)`` returns ``(B, L, L) float32``; ``pixel_size`` is in Å.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch


class ImageSource(abc.ABC):
    """N images of L×L pixels, read on demand, with a per-image particle table."""

    #: Å per pixel
    pixel_size: float
    #: box side L in pixels
    box_size: int
    #: one row per image, RELION-4 column names (no leading underscore)
    particles: pd.DataFrame

    def __len__(self) -> int:
        return len(self.particles)

    @abc.abstractmethod
    def images(self, indices: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """Images at ``indices`` (0-based) as a ``(B, L, L) float32`` CPU tensor."""

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
