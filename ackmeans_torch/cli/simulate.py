"""Simulate particle images with known poses, CTF and noise → ``particles.mrcs`` + RELION-4
``particles.star`` (true angles, shifts, CTF, orientation-centre label).

Examples::

    ackmeans-torch simulate                                  # small set on the built-in phantom
    ackmeans-torch simulate experiment=paper_sim noise.snr=0.0333 seed=1
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.volume import load_volume, phantom

log = logging.getLogger(__name__)


@hydra_command("simulate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    vol_cfg, views, ctf, noise = cfg.volume, cfg.views, cfg.ctf, cfg.noise
    if vol_cfg.path is None:
        volume, voxel_size = phantom(vol_cfg.phantom_box), float(vol_cfg.phantom_voxel_size)
    else:
        volume, voxel_size = load_volume(vol_cfg.path, voxel_size=vol_cfg.voxel_size)
    start = time.perf_counter()
    images, particles = simulate_dataset(
        volume.to(cfg.device),
        voxel_size,
        n_centres=views.n_centres,
        per_centre=views.per_centre,
        spread_deg=views.spread_deg,
        max_shift_px=views.max_shift_px,
        snr=noise.snr,
        defocus_range=(ctf.defocus_min, ctf.defocus_max) if ctf.enabled else None,
        astigmatism=ctf.astigmatism,
        voltage=ctf.voltage,
        spherical_aberration=ctf.cs,
        amplitude_contrast=ctf.amplitude_contrast,
        b_factor=ctf.b_factor,
        phase_flip=ctf.phase_flip,
        box_size=vol_cfg.box_size,
        seed=cfg.seed,
        device=cfg.device,
        batch_size=cfg.batch_size,
    )
    elapsed = time.perf_counter() - start
    stack = cfg.output.stack
    particles = particles.assign(rlnImageName=[f"{i + 1:06d}@{stack}" for i in range(len(images))])
    write_stack(run_dir / stack, images, float(particles["rlnImagePixelSize"].iloc[0]))
    write_particles(run_dir / cfg.output.star, particles)
    log.info("simulated %d images of %d px in %.1f s -> %s", len(images), images.shape[-1],
             elapsed, run_dir)
