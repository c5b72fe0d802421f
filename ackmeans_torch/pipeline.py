"""End to end in one call: simulated micrographs → k pickers and the iterative consensus loop →
particle extraction at the consensus → 2D classification with ACK-means (the classification
front door) → class selection.

Layout of ``out_dir``::

    micrographs/   Micrographs/*.mrc, micrographs_ctf.star, truth/ (micrographs/simulate.py)
    pick/          round_NN/, scores.tsv, scores.png (picking/iterate.py)
    extract/       particles.mrcs, particles.star (micrographs/extract.py)
    classify/      particles.star, class_averages.mrcs, classes.star, ... (classify/run.py)
    selected.star  the particles of the kept classes (classify/select.py)
    pipeline.json  counts and seconds of every stage

Each stage that finished is read back instead of recomputed when ``resume`` is set (the loop per
round, the classification from its checkpoint); a stage's files appear only when it is complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` made: the loop's :class:`~ackmeans_torch.picking.iterate.LoopResult`,
    the particles extracted, the :class:`~ackmeans_torch.classify.run.ClassificationRun`, the
    :class:`~ackmeans_torch.classify.select.Selection`, and ``summary`` (counts, seconds)."""

    loop: object
    n_particles: int
    classification: object
    selection: object
    summary: dict = field(default_factory=dict)


def run_pipeline(simulation, pickers: dict, *, loop_options, extract_options, classify: dict,
                 min_class_size: int | None = None, out_dir: str | os.PathLike, seed: int = 0,
                 resume: bool = False) -> PipelineResult:
    """The whole chain (module docstring). simulation: a
    :class:`~ackmeans_torch.micrographs.simulate.MicrographSimulation`; pickers: name → picker;
    loop_options: :class:`~ackmeans_torch.picking.iterate.LoopOptions`; extract_options:
    :class:`~ackmeans_torch.micrographs.extract.ExtractOptions`; classify: the keywords of
    :func:`~ackmeans_torch.classify.run.run_classification` other than the source and
    ``out_dir`` (pipeline, rule, options, align, preprocess_options, trainer); min_class_size:
    classes with fewer particles are dropped (None: keep all)."""
    from ackmeans_torch.classify.checkpoint import CHECKPOINT_NAME
    from ackmeans_torch.classify.run import run_classification
    from ackmeans_torch.classify.select import select_classes, write_selection
    from ackmeans_torch.data.stack import open_source
    from ackmeans_torch.micrographs.extract import extract_particles, write_extracted
    from ackmeans_torch.micrographs.io import read_micrographs
    from ackmeans_torch.micrographs.simulate import simulate_micrographs, write_simulated
    from ackmeans_torch.picking.iterate import run_loop

    out = Path(out_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sim = simulate_micrographs(simulation, seed=seed)
    star = out / "micrographs" / "micrographs_ctf.star"
    if not (resume and star.is_file()):
        write_simulated(sim, out / "micrographs")
    # the written micrographs (with their CTF from the STAR), so the particle STAR names
    # files RELION can open
    micrographs = read_micrographs(star)
    seconds["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loop = run_loop(micrographs, pickers, options=loop_options, truth=sim.truth, out_dir=out / "pick")
    seconds["pick"] = time.perf_counter() - t0
    consensus = loop.rounds[-1].consensus

    t0 = time.perf_counter()
    stack, particles = extract_particles(micrographs, consensus, extract_options)
    particle_star = write_extracted(out / "extract", stack, particles)
    seconds["extract"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_classes = classify["options"].n_classes
    if len(stack) < n_classes:
        raise InputError(f"{len(stack)} particles extracted, fewer than n_classes={n_classes}; "
                         "simulate more micrographs or lower n_classes")
    # a run killed before the classification checkpointed starts it afresh
    started = (out / "classify" / CHECKPOINT_NAME).is_file()
    run = run_classification(open_source(particle_star), out_dir=out / "classify", resume=resume and started,
                             **classify)
    seconds["classify"] = time.perf_counter() - t0
    selection = select_classes(out / "classify", min_size=min_class_size)
    write_selection(selection, out / "selected.star")
    summary = {"micrographs": len(micrographs), "rounds": len(loop.rounds),
               "consensus_particles": sum(len(p) for p in consensus.values()), "extracted": len(stack),
               "classes": int(n_classes), "classes_kept": len(selection.kept),
               "selected_particles": len(selection.table), "seconds": seconds,
               "scores": loop.rounds[-1].scores}
    with atomic_output(out / "pipeline.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=float))
    return PipelineResult(loop, len(stack), run, selection, summary)
