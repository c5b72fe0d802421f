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
from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.mrc import load_volume
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN, simulate_dataset
from ackmeans_torch.sim.volume import phantom


@dataclass(frozen=True, kw_only=True)
class Simulation:
    """What to simulate (``sim.dataset.simulate_dataset`` says what each setting does).

    ``volume``: a map (.mrc) or None for the built-in asymmetric phantom of ``phantom_box`` px at
    ``phantom_voxel_size`` Å; ``voxel_size`` Å overrides the map header; ``box_size`` the output
    box (None: the map's). Views: ``n_centres`` orientation centres × ``per_centre`` images,
    ``spread_deg`` around each centre, in-plane shifts up to ``max_shift_px``. CTF (``ctf``:
    on/off): defocus uniform in [``defocus_min``, ``defocus_max``] Å, ``astigmatism`` Å,
    ``voltage`` kV, ``spherical_aberration`` mm, ``amplitude_contrast``, ``b_factor`` Å²,
    ``phase_flip`` the noisy images. ``snr`` (None: clean). ``batch_size`` images per
    projection batch (memory only)."""

    volume: str | None = None
    voxel_size: float | None = None
    phantom_box: int = 64
    phantom_voxel_size: float = 4.0
    box_size: int | None = None
    n_centres: int = 20
    per_centre: int = 100
    spread_deg: float = 5.0
    max_shift_px: float = 0.0
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
        check_int("sim.n_centres", self.n_centres, 1)
        check_int("sim.per_centre", self.per_centre, 1)
        check_number("sim.spread_deg", self.spread_deg, 0.0)
        check_number("sim.max_shift_px", self.max_shift_px, 0.0)
        if self.snr is not None:
            check_number("sim.snr", self.snr, 1e-12)
        check_int("sim.batch_size", self.batch_size, 1)
        for name in ("ctf", "phase_flip"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"sim.{name}={getattr(self, name)!r} must be true or false")

    def run(self, *, seed: int = 0,
            device: str | torch.device = "cpu") -> tuple[torch.Tensor, pd.DataFrame]:
        """``images (N, L, L)`` and the truth table (``simulate_dataset``)."""
        if self.volume is None:
            volume, voxel = phantom(self.phantom_box), float(self.phantom_voxel_size)
        else:
            volume, voxel = load_volume(self.volume, voxel_size=self.voxel_size)
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
    def from_spec(cls, spec: Simulation, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> SimulatedSource:
        """Run the simulation ``spec`` with ``seed`` (projections on ``device``)."""
        images, particles = spec.run(seed=seed, device=device)
        return cls(images, particles, pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))

    @property
    def centre_labels(self) -> np.ndarray:
        """``(N,)`` int orientation-centre label of each image (1-based)."""
        return self.particles[CENTRE_LABEL_COLUMN].to_numpy()
