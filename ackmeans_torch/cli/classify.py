"""Classify particle images without supervision: MRA or RFA with ACK-means, K-means, SPIDER's
size factor, EQK-means or any size penalty; RELION-ready outputs in the run directory.

Examples::

    ackmeans-torch classify                                   # built-in simulated set
    ackmeans-torch classify data=file data.path=particles.star n_classes=50 objective=kmeans
    ackmeans-torch classify --multirun objective=ack,kmeans,spider,eqk
    ackmeans-torch classify trainer=ddp trainer.devices=4 data=file data.path=big.star
    ackmeans-torch classify out_dir=runs/classify/a resume=true      # continue a killed run

Runs under Lightning Fabric (``classify/distributed.py``: ``trainer=cpu|gpu|ddp``); rank zero
alone writes the outputs, the per-iteration checkpoint and history (``classify/checkpoint.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ackmeans_torch.classify.averages import wiener_averages
from ackmeans_torch.classify.checkpoint import (
    CHECKPOINT_NAME,
    IterationRecorder,
    config_hash,
    load_checkpoint,
)
from ackmeans_torch.classify.distributed import RunHooks, fabric_hooks, make_fabric
from ackmeans_torch.classify.msa import classify_msa_mra
from ackmeans_torch.classify.mra import classify_mra
from ackmeans_torch.classify.outputs import write_outputs
from ackmeans_torch.classify.preprocess import PreparedImages
from ackmeans_torch.classify.rfa import classify_rfa
from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.simulate import simulate_from_config, write_simulated
from ackmeans_torch.data.simulated import SimulatedSource
from ackmeans_torch.data.stack import open_source
from ackmeans_torch.errors import InputError
from ackmeans_torch.eval.angular import evaluate_classification
from ackmeans_torch.eval.plots import angular_histogram
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN

log = logging.getLogger(__name__)
PIPELINES = {"mra": classify_mra, "rfa": classify_rfa, "msa_mra": classify_msa_mra}
IN_MEMORY_BYTES = 2 * 2**30  # preprocess.in_memory=auto keeps a stack this small in memory
# settings that do not change a run's result: a checkpoint made with other values is resumable
_NOT_HASHED = ("out_dir", "resume", "trainer", "max_iter", "progress", "chunk_size")


def _source(cfg: DictConfig, run_dir: Path, *, rank_zero: bool):
    """The input images and the particle table to write back (image names valid from run_dir;
    rank zero writes a simulated stack, which every rank simulates alike from the seed)."""
    if cfg.data.source == "simulated":
        images, particles = simulate_from_config(cfg.sim, seed=cfg.seed, device="cpu")
        if rank_zero:
            particles = write_simulated(run_dir, images, particles, stack="images.mrcs", star=None)
        source = SimulatedSource(images, particles,
                                 pixel_size=float(particles["rlnImagePixelSize"].iloc[0]))
        return source, particles
    source = open_source(cfg.data.path, pixel_size=cfg.data.pixel_size)
    particles = source.particles
    if "rlnImageName" in particles:
        paths, index = source.table.image_locations()
        particles = particles.assign(
            rlnImageName=[f"{i + 1:06d}@{os.path.relpath(p, run_dir)}" for p, i in zip(paths, index)])
    return source, particles


def _config_hash(cfg: DictConfig) -> str:
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_HASHED:
        config.pop(key, None)
    config["preprocess"].pop("in_memory", None)
    return config_hash(config)


def _resume(cfg: DictConfig, run_dir: Path, digest: str):
    """The checkpoint to continue: none, this run directory's (``resume=true``) or another's."""
    if cfg.resume in (False, None):
        return None
    directory = run_dir if cfg.resume is True else Path(str(cfg.resume))
    return load_checkpoint(directory / CHECKPOINT_NAME, config_hash=digest)


def _images(prepared: PreparedImages, in_memory, chunk_size: int):
    """The preprocessed images in memory, or the per-chunk view (``preprocess.in_memory``)."""
    if in_memory == "auto":
        in_memory = len(prepared) * prepared.box_size**2 * 4 <= IN_MEMORY_BYTES
    if in_memory not in (True, False):
        raise InputError(f"preprocess.in_memory={in_memory!r} must be auto, true or false")
    return prepared.materialise(chunk_size) if in_memory else prepared


@contextmanager
def _relaunchable_argv() -> Iterator[None]:
    """Lightning's ddp launcher starts the extra local processes by re-executing ``sys.argv``,
    which ``cli/main.py`` rewrote to ``["ackmeans-torch classify", *overrides]``; give it the
    real script and the sub-command back for the launch (``sys.orig_argv`` ends with them)."""
    saved = sys.argv
    if not saved[0].endswith(" classify"):
        yield
        return
    script = sys.orig_argv[len(sys.orig_argv) - len(saved) - 1]
    sys.argv = [script, "classify", *saved[1:]]
    try:
        yield
    finally:
        sys.argv = saved


def classify_from_config(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The whole command on a composed ``classify`` config; rank zero returns the summary
    (other ranks ``None``)."""
    if cfg.pipeline.name not in PIPELINES:
        raise InputError(f"pipeline={cfg.pipeline.name!r} must be one of {sorted(PIPELINES)}")
    with _relaunchable_argv():
        fabric = make_fabric(**cfg.trainer)
    rank_zero = fabric.global_rank == 0
    if not rank_zero:  # rank zero alone logs
        logging.getLogger().setLevel(logging.WARNING)
    start = time.perf_counter()
    digest = _config_hash(cfg)
    resume = _resume(cfg, run_dir, digest)
    source, particles = _source(cfg, run_dir, rank_zero=rank_zero)
    if cfg.n_classes > len(source):
        raise InputError(f"n_classes={cfg.n_classes} must be <= the {len(source)} images; "
                         "lower n_classes")
    pre = cfg.preprocess
    prepared = PreparedImages(source, box_size=pre.box_size, mask_diameter=pre.mask_diameter,
                              lowpass_resolution=pre.lowpass_resolution,
                              phase_flip_images=pre.phase_flip, device=fabric.device)
    images = _images(prepared, pre.in_memory, cfg.chunk_size)
    align_options = {k: v for k, v in OmegaConf.to_container(cfg.align).items() if v is not None}
    extra = {k: v for k, v in OmegaConf.to_container(cfg.pipeline).items() if k != "name"}
    recorder = IterationRecorder(
        run_dir, config_hash=digest, max_iter=cfg.max_iter, rank_zero=rank_zero,
        first_iteration=0 if resume is None else resume.state.iteration + 1,
        progress=cfg.progress)
    shard, reduce = fabric_hooks(fabric)
    try:
        result = PIPELINES[cfg.pipeline.name](
            images, n_classes=cfg.n_classes, rule=instantiate(cfg.objective),
            mask_radius=prepared.mask_radius, align_options=align_options, init=cfg.init,
            max_iter=cfg.max_iter, sigma0=cfg.sigma0, batch_size=cfg.batch_size,
            chunk_size=cfg.chunk_size, seed=cfg.seed,
            hooks=RunHooks(shard=shard, reduce=reduce, on_iteration=recorder, resume=resume),
            **extra)
    finally:
        recorder.close()
    if not rank_zero:
        return None
    if cfg.ctf_averages:
        result = replace(result, averages=wiener_averages(
            prepared, result.labels, result.angle, result.shift, result.mirror, cfg.n_classes,
            epsilon=cfg.wiener_epsilon, chunk_size=cfg.chunk_size))
    elapsed = time.perf_counter() - start
    title = f"{cfg.pipeline.name} / {cfg.objective._target_.rsplit('.', 1)[-1]}"
    write_outputs(run_dir, result, particles, pixel_size=prepared.pixel_size, title=title)
    summary = {"n_images": len(source), "n_classes": cfg.n_classes, "iterations":
               len(result.history) - 1, "converged": result.converged, "seconds": elapsed,
               "processes": fabric.world_size, "resumed_after": None if resume is None
               else resume.state.iteration}
    if CENTRE_LABEL_COLUMN in particles and "rlnAngleTilt" in particles:
        figures, angles = evaluate_classification(
            result.labels.cpu().numpy(), cfg.n_classes,
            particles[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(),
            truth=particles[CENTRE_LABEL_COLUMN].to_numpy())
        summary.update(figures)
        angular_histogram({title: angles}, run_dir / "angular_distances.png")
    with atomic_output(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log.info("classified %d images into %d classes in %.1f s: %s; outputs in %s", len(source),
             cfg.n_classes, elapsed, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                 for k, v in summary.items()}), run_dir)
    return summary


@hydra_command("classify")
def main(cfg: DictConfig, run_dir: Path) -> None:
    classify_from_config(cfg, run_dir)
