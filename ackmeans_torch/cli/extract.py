"""Particle extraction: boxes cut from micrographs at picked coordinates → ``particles.mrcs`` and a
RELION-4 ``particles.star`` (micrograph names, coordinates, CTF when known), as
``relion_preprocess --extract`` cuts them (``micrographs/extract.py``).

Examples::

    ackmeans-torch extract micrographs=micrographs_ctf.star coordinates=runs/consensus/a/box box_size=64
    ackmeans-torch extract micrographs='Micrographs/*.mrc' coordinates='picks/*.star' box_size=256 \\
        invert_contrast=true fourier_crop_to=128
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command

log = logging.getLogger(__name__)


@hydra_command("extract")
def main(cfg: DictConfig, run_dir: Path) -> None:
    from ackmeans_torch.micrographs.extract import ExtractOptions, extract_particles, read_coordinates, write_extracted
    from ackmeans_torch.micrographs.io import read_micrographs

    options = ExtractOptions(box_size=cfg.box_size, invert_contrast=cfg.invert_contrast, normalise=cfg.normalise,
                             background_radius=cfg.background_radius, fourier_crop_to=cfg.fourier_crop_to,
                             edge=cfg.edge, pixel_size=cfg.pixel_size)
    micrographs = read_micrographs(str(cfg.micrographs))
    picks = read_coordinates(str(cfg.coordinates), micrographs, fmt=cfg.format, box_size=cfg.box_size)
    stack, particles = extract_particles(micrographs, picks, options)
    star = write_extracted(run_dir, stack, particles, stack_name=cfg.stack, star_name=cfg.star)
    used = particles["rlnMicrographName"].nunique()
    log.info("extracted %d particles of %d px from %d of %d micrographs -> %s", len(stack), stack.shape[-1], used,
             len(micrographs), star)
    print(f"extract: {len(stack)} particles from {used} micrographs -> {star}")


if __name__ == "__main__":
    main()
