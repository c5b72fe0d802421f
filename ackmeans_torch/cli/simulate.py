"""Simulate particle images with known poses, CTF and noise → ``particles.mrcs`` + RELION-4
``particles.star`` (true angles, shifts, CTF, orientation-centre label in rlnBeamTiltClass).

Examples::

    ackmeans-torch simulate                                  # small set on the built-in phantom
    ackmeans-torch simulate experiment=paper_sim sim.snr=0.0333 seed=1
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles

log = logging.getLogger(__name__)


@hydra_command("simulate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    spec = instantiate(cfg.sim)
    start = time.perf_counter()
    images, particles = spec.run(seed=cfg.seed, device=cfg.device)
    elapsed = time.perf_counter() - start
    stack = cfg.output.stack
    particles = particles.assign(rlnImageName=[f"{i + 1:06d}@{stack}" for i in range(len(images))])
    write_stack(run_dir / stack, images, float(particles["rlnImagePixelSize"].iloc[0]))
    write_particles(run_dir / cfg.output.star, particles)
    log.info("simulated %d images of %d px in %.1f s -> %s", len(images), images.shape[-1],
             elapsed, run_dir)
