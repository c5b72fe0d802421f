"""Classify particle images without supervision: MRA or RFA with ACK-means, K-means, SPIDER's
size factor, EQK-means or any size penalty; RELION-ready outputs in the run directory.

Examples::

    ackmeans-torch classify                                   # built-in simulated set
    ackmeans-torch classify data=file data.path=particles.star n_classes=50 objective=kmeans
    ackmeans-torch classify --multirun objective=ack,kmeans,spider,eqk
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ackmeans_torch.classify.mra import classify_mra
from ackmeans_torch.classify.outputs import write_outputs
from ackmeans_torch.classify.preprocess import prepare_images
from ackmeans_torch.classify.rfa import classify_rfa
from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.simulate import simulate_from_config, write_simulated
from ackmeans_torch.data.simulated import SimulatedSource
from ackmeans_torch.data.stack import StackSource, open_source
from ackmeans_torch.errors import InputError
from ackmeans_torch.eval.angular import evaluate_classification
from ackmeans_torch.eval.plots import angular_histogram
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN

log = logging.getLogger(__name__)
PIPELINES = {"mra": classify_mra, "rfa": classify_rfa}


def _source(cfg: DictConfig, run_dir: Path):
    """The input images and the particle table to write back (image names valid from run_dir)."""
    if cfg.data.source == "simulated":
        images, particles = simulate_from_config(cfg.sim, seed=cfg.seed, device="cpu")
        particles = write_simulated(run_dir, images, particles, stack="images.mrcs", star=None)
        source = SimulatedSource(images, particles,
                                 pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))
        return source, particles
    path = Path(cfg.data.path)
    # a bare stack may need its pixel size from the config (its header can say 0)
    source = (StackSource.from_stack(path, pixel_size=cfg.data.pixel_size)
              if path.suffix.lower() in (".mrc", ".mrcs") else open_source(path))
    particles = source.particles
    if "rlnImageName" in particles:
        paths, index = source.table.image_locations()
        particles = particles.assign(
            rlnImageName=[f"{i + 1:06d}@{os.path.relpath(p, run_dir)}" for p, i in zip(paths, index)])
    return source, particles


@hydra_command("classify")
def main(cfg: DictConfig, run_dir: Path) -> None:
    if cfg.pipeline.name not in PIPELINES:
        raise InputError(f"pipeline={cfg.pipeline.name!r} must be one of {sorted(PIPELINES)}")
    start = time.perf_counter()
    source, particles = _source(cfg, run_dir)
    if cfg.n_classes > len(source):
        raise InputError(f"n_classes={cfg.n_classes} must be <= the {len(source)} images; "
                         "lower n_classes")
    pre = cfg.preprocess
    prepared = prepare_images(source, box_size=pre.box_size, mask_diameter=pre.mask_diameter,
                              lowpass_resolution=pre.lowpass_resolution,
                              phase_flip_images=pre.phase_flip, device=cfg.trainer.device)
    mask_radius = (0.45 * prepared.box_size if pre.mask_diameter is None
                   else 0.5 * pre.mask_diameter / prepared.pixel_size)
    align_options = {k: v for k, v in OmegaConf.to_container(cfg.align).items() if v is not None}
    extra = {k: v for k, v in OmegaConf.to_container(cfg.pipeline).items() if k != "name"}
    result = PIPELINES[cfg.pipeline.name](
        prepared.images, n_classes=cfg.n_classes, rule=instantiate(cfg.objective),
        mask_radius=mask_radius, align_options=align_options, init=cfg.init,
        max_iter=cfg.max_iter, sigma0=cfg.sigma0, batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size, seed=cfg.seed, **extra)
    elapsed = time.perf_counter() - start
    title = f"{cfg.pipeline.name} / {cfg.objective._target_.rsplit('.', 1)[-1]}"
    write_outputs(run_dir, result, particles, pixel_size=prepared.pixel_size, title=title)
    summary = {"n_images": len(source), "n_classes": cfg.n_classes, "iterations":
               len(result.history) - 1, "converged": result.converged, "seconds": elapsed}
    if CENTRE_LABEL_COLUMN in particles and "rlnAngleTilt" in particles:
        figures, angles = evaluate_classification(
            result.labels.cpu().numpy(), cfg.n_classes,
            particles[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(),
            truth=particles[CENTRE_LABEL_COLUMN].to_numpy())
        summary.update(figures)
        angular_histogram({title: angles}, run_dir / "angular_distances.png")
    with atomic_output(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log.info("classified %d images into %d classes in %.1f s: %s", len(source), cfg.n_classes,
             elapsed, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in summary.items()}))
