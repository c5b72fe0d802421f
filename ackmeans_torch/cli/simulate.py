"""Simulate particle images with known poses, CTF and noise → ``particles.mrcs`` + RELION-4
``particles.star`` (true angles, shifts, CTF, orientation-centre label in rlnBeamTiltClass).

Examples::

    ackmeans-torch simulate                                  # small set on the built-in phantom
    ackmeans-torch simulate experiment=paper_sim sim.noise.snr=0.0333 seed=1
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.volume import load_volume, phantom

log = logging.getLogger(__name__)


def simulate_from_config(sim: DictConfig, *, seed: int, device: str) -> tuple[torch.Tensor, pd.DataFrame]:
    """The ``sim`` config group (configs/sim/) → ``images (N, L, L)`` and the truth table."""
    if sim.volume.path is None:
        volume, voxel_size = phantom(sim.volume.phantom_box), float(sim.volume.phantom_voxel_size)
    else:
        volume, voxel_size = load_volume(sim.volume.path, voxel_size=sim.volume.voxel_size)
    views, ctf = sim.views, sim.ctf
    return simulate_dataset(
        volume.to(device), voxel_size,
        n_centres=views.n_centres, per_centre=views.per_centre, spread_deg=views.spread_deg,
        max_shift_px=views.max_shift_px, snr=sim.noise.snr,
        defocus_range=(ctf.defocus_min, ctf.defocus_max) if ctf.enabled else None,
        astigmatism=ctf.astigmatism, voltage=ctf.voltage, spherical_aberration=ctf.cs,
        amplitude_contrast=ctf.amplitude_contrast, b_factor=ctf.b_factor,
        phase_flip=ctf.phase_flip, box_size=sim.volume.box_size, seed=seed, device=device,
        batch_size=sim.batch_size,
    )


def write_simulated(run_dir: Path, images: torch.Tensor, particles: pd.DataFrame, *,
                    stack: str, star: str | None) -> pd.DataFrame:
    """Write the stack (and, when ``star`` is given, the STAR file) into ``run_dir``; returns the
    table with ``rlnImageName`` pointing into the stack."""
    particles = particles.assign(rlnImageName=[f"{i + 1:06d}@{stack}" for i in range(len(images))])
    write_stack(run_dir / stack, images, float(particles["rlnImagePixelSize"].iloc[0]))
    if star is not None:
        write_particles(run_dir / star, particles)
    return particles


@hydra_command("simulate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    start = time.perf_counter()
    images, particles = simulate_from_config(cfg.sim, seed=cfg.seed, device=cfg.device)
    elapsed = time.perf_counter() - start
    write_simulated(run_dir, images, particles, stack=cfg.output.stack, star=cfg.output.star)
    log.info("simulated %d images of %d px in %.1f s -> %s", len(images), images.shape[-1],
             elapsed, run_dir)
