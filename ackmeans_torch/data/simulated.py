"""A simulated image source: images made by ``sim/`` held in memory with their ground truth.

Sibling of the real stacks (``data/source.py``): the particle table carries the true angles,
shifts, CTF parameters and the orientation-centre label (``sim.dataset.CENTRE_LABEL_COLUMN``) in
the same RELION-4 columns a real STAR file uses, so evaluation code scores both alike.
:class:`Simulation` is the simulator's settings (``configs/sim/*.yaml`` mirror its keywords),
validated when made; ``SimulatedSource.from_spec`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.errors import check_int, check_number
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN, MapImaging, simulate_dataset
from ackmeans_torch.sim.hetero import HeteroSet, HeteroSimulation


@dataclass(frozen=True, kw_only=True)
class Simulation(MapImaging):
    """What to simulate (``sim.dataset.simulate_dataset`` says what each setting does).

    The map, CTF, noise and batch settings are those of ``sim.dataset.MapImaging``. Views:
    ``n_centres`` orientation centres × ``per_centre`` images, ``spread_deg`` around each centre,
    in-plane shifts up to ``max_shift_px``."""

    n_centres: int = 20
    per_centre: int = 100
    spread_deg: float = 5.0
    max_shift_px: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("sim.n_centres", self.n_centres, 1)
        check_int("sim.per_centre", self.per_centre, 1)
        check_number("sim.spread_deg", self.spread_deg, 0.0)
        check_number("sim.max_shift_px", self.max_shift_px, 0.0)

    def run(self, *, seed: int = 0,
            device: str | torch.device = "cpu") -> tuple[torch.Tensor, pd.DataFrame]:
        """``images (N, L, L)`` and the truth table (``simulate_dataset``)."""
        volume, voxel = self.load_map()
        return simulate_dataset(
            volume.to(device), voxel, n_centres=self.n_centres, per_centre=self.per_centre,
            spread_deg=self.spread_deg, max_shift_px=self.max_shift_px, snr=self.snr,
            defocus_range=(self.defocus_min, self.defocus_max) if self.ctf else None,
            astigmatism=self.astigmatism, voltage=self.voltage,
            spherical_aberration=self.spherical_aberration,
            amplitude_contrast=self.amplitude_contrast, b_factor=self.b_factor,
            phase_flip=self.phase_flip and self.ctf, box_size=self.box_size, seed=seed,
            device=device, batch_size=self.batch_size)


class SimulatedSource(ArraySource):
    """``images (N, L, L)`` float32 and their ground-truth ``particles`` table (N rows).

    Build from arrays with ``SimulatedSource(images, particles, pixel_size=...)`` or simulate
    with ``SimulatedSource.simulate(volume, voxel_size, **simulate_dataset_kwargs)``. The
    table's ``rlnCtfDataArePhaseFlipped`` says whether the images are phase-flipped."""

    def __init__(self, images: torch.Tensor, particles: pd.DataFrame, *,
                 pixel_size: float) -> None:
        flipped = particles.get("rlnCtfDataArePhaseFlipped", pd.Series(0, index=particles.index))
        super().__init__(images.detach().cpu(), particles, pixel_size=pixel_size,
                         phase_flipped=bool(len(particles)) and bool((flipped == 1).all()))

    @classmethod
    def simulate(cls, volume: torch.Tensor, voxel_size: float, **kwargs) -> SimulatedSource:
        """Run :func:`ackmeans_torch.sim.dataset.simulate_dataset` (same keyword arguments) and
        wrap its result."""
        images, particles = simulate_dataset(volume, voxel_size, **kwargs)
        return cls(images, particles, pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))

    @classmethod
    def from_spec(cls, spec: Simulation | HeteroSimulation, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> SimulatedSource:
        """Run the simulation ``spec`` (a :class:`Simulation` or a heterogeneous
        ``sim.hetero.HeteroSimulation``, whose true state becomes the label) with ``seed``
        (projections on ``device``)."""
        result = spec.run(seed=seed, device=device)
        images, particles = ((result.images, result.particles) if isinstance(result, HeteroSet)
                             else result)
        return cls(images, particles, pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))

    @property
    def centre_labels(self) -> np.ndarray:
        """``(N,)`` int orientation-centre label of each image (1-based)."""
        return self.particles[CENTRE_LABEL_COLUMN].to_numpy()
