"""The library's front door for classification: one call runs a whole job.

>>> from ackmeans_torch import ClusterOptions, MRA, QuadraticPenalty, open_source, run_classification
>>> run = run_classification(open_source("particles.star"), pipeline=MRA(),
...                          rule=QuadraticPenalty(beta=0.5), options=ClusterOptions(n_classes=50),
...                          out_dir="runs/a")
>>> run.result.labels, run.result.averages, run.summary

What it does, in order: refuse bad settings (before any image is read), launch the processes
(Lightning Fabric: ``TrainerOptions``), load a checkpoint to continue (``resume``), preprocess the
source (``data/prepared.py``), run the pipeline with the scale-out and checkpoint hooks, build
CTF-weighted averages when asked, and on rank zero write the outputs (``classify/outputs.py``) and
score the result against the truth a simulated source carries. The CLI only composes a config into
these arguments.

A pipeline is a :class:`Pipeline`: one class with its own options (a frozen dataclass, validated in
``__post_init__``), one YAML in ``configs/pipeline/`` naming it by ``_target_``, and a
``classify`` method that turns preprocessed images into a
:class:`~ackmeans_torch.classify.common.Classification` with any size rule and the shared
:class:`~ackmeans_torch.cluster.options.ClusterOptions`. It says whether it can continue from a
checkpoint (``resumable``) and run on several processes (``distributed``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ackmeans_torch.classify.averages import wiener_averages
from ackmeans_torch.classify.checkpoint import (
    CHECKPOINT_NAME,
    IterationRecorder,
    config_hash,
    load_checkpoint,
)
from ackmeans_torch.classify.common import Classification
from ackmeans_torch.classify.distributed import RunHooks, TrainerOptions, fabric_hooks, make_fabric
from ackmeans_torch.classify.outputs import write_outputs
from ackmeans_torch.cluster.engine import LoopState
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError, check_number
from ackmeans_torch.eval.angular import evaluate_classification
from ackmeans_torch.eval.plots import angular_histogram
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.transform import Poses
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN

__all__ = ["Pipeline", "ClassificationRun", "run_classification", "poses_after"]

log = logging.getLogger(__name__)


class Pipeline(ABC):
    """A classification method (module docstring)."""

    #: a human name for plots and logs
    label: str = "pipeline"
    #: it can continue from a checkpoint of its loop
    resumable: bool = True
    #: it runs its loop on several processes (shard/reduce hooks)
    distributed: bool = True

    @abstractmethod
    def classify(self, images: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 align: AlignOptions, mask_radius: float, hooks: RunHooks) -> Classification:
        """Classify preprocessed ``images`` (``(N, L, L)`` on their device, background-normalised
        with the particle mask of ``mask_radius`` px) with ``rule`` and ``options``."""


def poses_after(hooks: RunHooks, poses: Callable[[], Poses]):
    """The engine's ``on_iteration`` callback that hands ``hooks.on_iteration`` the state and the
    poses of the same iteration (``poses()`` may be a collective: every rank calls it)."""
    if hooks.on_iteration is None:
        return None

    def callback(state: LoopState) -> None:
        hooks.on_iteration(state, poses())

    return callback


@dataclass
class ClassificationRun:
    """What :func:`run_classification` returns on rank zero: the ``result``, the ``summary``
    (sizes, time, processes, accuracy against a known truth), the preprocessed ``images`` and the
    ``out_dir`` the files went to (None: nothing written)."""

    result: Classification
    summary: dict
    images: ImageSource
    out_dir: Path | None


def plugin_settings(value) -> dict:
    """A plug-in's type and settings, for the run fingerprint."""
    cls = type(value)
    if dataclasses.is_dataclass(value):
        fields = dataclasses.asdict(value)
    else:  # an nn.Module size rule: its plain attributes (β, method, ...)
        fields = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "training"}
    return {"type": f"{cls.__module__}.{cls.__qualname__}", **fields}


def run_fingerprint(source: ImageSource, *, pipeline: Pipeline, rule: SizeRule,
                    options: ClusterOptions, align: AlignOptions,
                    preprocess_options: PreprocessOptions) -> str:
    """The hash of everything that decides a run's result: a checkpoint made with another one is
    refused. Settings that change only time or memory (``max_iter``, ``chunk_size``, devices,
    ``align.memory_bytes``, ``in_memory``) are left out, so a run can continue with other ones."""
    cluster = {k: v for k, v in dataclasses.asdict(options).items()
               if k not in ("max_iter", "chunk_size")}
    search = {k: v for k, v in dataclasses.asdict(align).items() if k != "memory_bytes"}
    prep = {k: v for k, v in dataclasses.asdict(preprocess_options).items() if k != "in_memory"}
    return config_hash({"cluster": cluster, "align": search, "preprocess": prep,
                        "pipeline": plugin_settings(pipeline), "rule": plugin_settings(rule),
                        "source": source_signature(source)})


def source_signature(source: ImageSource) -> list:
    """What of a source decides a run's result, for a fingerprint: its size, box, pixel size
    and a hash of its particle table."""
    table = int(pd.util.hash_pandas_object(source.particles, index=False).sum())
    return [len(source), source.box_size, source.pixel_size, table]


def _check(source: ImageSource, *, pipeline: Pipeline, options: ClusterOptions,
           trainer: TrainerOptions, resume, wiener_epsilon: float | None) -> None:
    options.check_items(len(source))
    if resume not in (False, None) and not pipeline.resumable:
        raise InputError(f"pipeline {pipeline.label} cannot resume from a checkpoint; use "
                         "pipeline=mra or rfa, or start afresh (resume=false)")
    if not pipeline.distributed and (trainer.strategy != "auto" or trainer.num_nodes > 1
                                     or trainer.devices not in (1, "1")):
        raise InputError(f"pipeline {pipeline.label} runs in one process; use trainer=cpu or "
                         "gpu, or pipeline=mra for trainer=ddp")
    if wiener_epsilon is not None:
        check_number("wiener_epsilon", wiener_epsilon, 1e-12)


def output_particles(source: ImageSource, out_dir: Path,
                      project_dir: Path) -> tuple[pd.DataFrame, ImageSource | None]:
    """The table to write back, its image names valid from ``project_dir`` (where RELION runs):
    as given where they already are; for images held in memory only, the names of the
    ``images.mrcs`` the outputs write into ``out_dir``, and the source to write."""
    names = source.image_names(project_dir)
    if names is None:
        stack = os.path.relpath(os.path.abspath(out_dir / "images.mrcs"), project_dir)
        names = [f"{i + 1:06d}@{stack}" for i in range(len(source))]
        return source.particles.assign(rlnImageName=names), source
    return source.particles.assign(rlnImageName=names), None


def run_classification(source: ImageSource, *, pipeline: Pipeline, rule: SizeRule,
                       options: ClusterOptions, align: AlignOptions | None = None,
                       preprocess_options: PreprocessOptions | None = None,
                       trainer: TrainerOptions | None = None, out_dir: str | Path | None = None,
                       resume: bool | str | Path = False, wiener_epsilon: float | None = None,
                       progress: bool = False,
                       project_dir: str | Path | None = None) -> ClassificationRun | None:
    """Classify the images of ``source`` (module docstring); returns a :class:`ClassificationRun`
    on rank zero and None on the other ranks of a multi-process run.

    ``align``: the rotation/translation search (default :class:`AlignOptions`).
    ``preprocess_options``: phase flip, crop, low-pass, normalisation (default
    :class:`PreprocessOptions`). ``trainer``: where to run (default one CPU process).
    ``out_dir``: where rank zero writes the outputs, checkpoint and history (None: nothing is
    written and nothing can resume). ``resume``: True continues the checkpoint in ``out_dir``, a
    path another run directory's. ``wiener_epsilon``: build CTF-weighted (Wiener) class averages
    with this constant (None: plain averages). ``progress``: a progress bar on rank zero.
    ``project_dir``: the folder the written image names hold from, where RELION is run (None: the
    current directory).
    """
    align = align or AlignOptions()
    preprocess_options = preprocess_options or PreprocessOptions()
    trainer = trainer or TrainerOptions()
    _check(source, pipeline=pipeline, options=options, trainer=trainer, resume=resume,
           wiener_epsilon=wiener_epsilon)
    if resume is True and out_dir is None:
        raise InputError("resume=true needs the run's out_dir")
    out_dir = None if out_dir is None else Path(out_dir)
    fabric = make_fabric(trainer)
    rank_zero = fabric.global_rank == 0
    if not rank_zero:  # rank zero alone logs
        logging.getLogger().setLevel(logging.WARNING)
    start = time.perf_counter()
    digest = run_fingerprint(source, pipeline=pipeline, rule=rule, options=options, align=align,
                             preprocess_options=preprocess_options)
    saved = None
    if resume not in (False, None):
        directory = out_dir if resume is True else Path(resume)
        saved = load_checkpoint(directory / CHECKPOINT_NAME, config_hash=digest)
    images = preprocess(source, preprocess_options, device=fabric.device,
                        chunk_size=options.chunk_size)
    recorder = None
    if out_dir is not None:
        recorder = IterationRecorder(
            out_dir, config_hash=digest, max_iter=options.max_iter, rank_zero=rank_zero,
            first_iteration=0 if saved is None else saved.state.iteration + 1, progress=progress)
    shard, reduce = fabric_hooks(fabric)
    try:
        result = pipeline.classify(images, rule=rule, options=options, align=align,
                                   mask_radius=images.mask_radius,
                                   hooks=RunHooks(shard=shard, reduce=reduce, on_iteration=recorder,
                                                  on_items=None if recorder is None
                                                  else recorder.items,
                                                  resume=saved))
    finally:
        if recorder is not None:
            recorder.close()
    if not rank_zero:
        return None
    if wiener_epsilon is not None:
        result = dataclasses.replace(result, averages=wiener_averages(
            images, result.labels, result.poses, options.n_classes, epsilon=wiener_epsilon,
            chunk_size=options.chunk_size))
    title = f"{pipeline.label} / {rule.label}"
    summary = {"label": title, "n_images": len(source), "n_classes": options.n_classes,
               "iterations": len(result.history) - 1, "converged": result.converged,
               "stopped": result.history[-1].get("stopped", "max_iter"),
               "sigma": result.history[-1]["sigma"],
               "seconds": time.perf_counter() - start, "processes": fabric.world_size,
               "resumed_after": None if saved is None else saved.state.iteration}
    particles = source.particles
    angles = None
    if CENTRE_LABEL_COLUMN in particles and "rlnAngleTilt" in particles:
        figures, angles = evaluate_classification(
            result.labels.cpu().numpy(), options.n_classes,
            particles[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(),
            truth=particles[CENTRE_LABEL_COLUMN].to_numpy())
        summary.update(figures)
    if out_dir is not None:
        project = Path(os.path.abspath(Path.cwd() if project_dir is None else project_dir))
        table, in_memory = output_particles(source, out_dir, project)
        write_outputs(out_dir, result, table, pixel_size=images.pixel_size, title=title,
                      images=in_memory, prepared=images, align=align, seed=options.seed,
                      project_dir=project)
        if angles is not None:
            angular_histogram({title: angles}, out_dir / "angular_distances.png")
        with atomic_output(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    # the figures are in summary.json and run.summary; the CLI prints them as a table
    log.info("classified %d images into %d classes in %.1f s%s", len(source), options.n_classes,
             summary["seconds"], "" if out_dir is None else f"; outputs in {out_dir}")
    return ClassificationRun(result=result, summary=summary, images=images, out_dir=out_dir)
