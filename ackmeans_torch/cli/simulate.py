"""Simulate particle images with known poses, CTF and noise → ``particles.mrcs`` + RELION-4
``particles.star`` (true angles, shifts, CTF, orientation-centre label in rlnBeamTiltClass), or
a heterogeneous 3D set (several states of one map).

Examples::

    ackmeans-torch simulate                                  # small set on the built-in phantom
    ackmeans-torch simulate experiment=paper_sim sim.snr=0.0333 seed=1
    ackmeans-torch simulate experiment=hetero3d              # 3 states of the phantom (3D)
    ackmeans-torch simulate experiment=hetero3d_70s sim.n_particles=3000

With a heterogeneous spec (``sim=hetero``: ``experiment=hetero3d``, ``hetero3d_70s``,
``hetero3d_continuous``) the run also writes the state maps ``state_001.mrc``... and
``truth.tsv`` (true state, domain angle and pose per particle); the STAR's poses carry the pose
noise and its rlnBeamTiltClass the true state.
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
from ackmeans_torch.sim.hetero import HeteroSet

log = logging.getLogger(__name__)


@hydra_command("simulate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    spec = instantiate(cfg.sim)
    start = time.perf_counter()
    result = spec.run(seed=cfg.seed, device=cfg.device)
    elapsed = time.perf_counter() - start
    stack = cfg.output.stack
    if isinstance(result, HeteroSet):
        result.write(run_dir, stack=stack, star=cfg.output.star)
        images = result.images
    else:
        images, particles = result
        particles = particles.assign(
            rlnImageName=[f"{i + 1:06d}@{stack}" for i in range(len(images))])
        write_stack(run_dir / stack, images, float(particles["rlnImagePixelSize"].iloc[0]))
        write_particles(run_dir / cfg.output.star, particles)
    log.info("simulated %d images of %d px in %.1f s -> %s", len(images), images.shape[-1],
             elapsed, run_dir)
