"""End to end on simulated micrographs: simulate → pickers and the iterative consensus loop →
extract → 2D classification with ACK-means → class selection (:mod:`ackmeans_torch.pipeline`).

Examples::

    ackmeans-torch pipeline                                          # built-in phantom, minutes on a CPU
    ackmeans-torch pipeline simulation.n_micrographs=40 rounds=3 classes.n_classes=20
    ackmeans-torch pipeline objective=kmeans ~picker@pickers.template

The command only composes the config into :func:`ackmeans_torch.pipeline.run_pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.pick import loop_options, make_pickers, scores_text

log = logging.getLogger(__name__)


@hydra_command("pipeline")
def main(cfg: DictConfig, run_dir: Path) -> None:
    from ackmeans_torch.pipeline import run_pipeline

    classify = {"pipeline": instantiate(cfg.pipeline), "rule": instantiate(cfg.objective),
                "options": instantiate(cfg.classes), "align": instantiate(cfg.align),
                "preprocess_options": instantiate(cfg.preprocess), "trainer": instantiate(cfg.trainer)}
    result = run_pipeline(instantiate(cfg.simulation), make_pickers(cfg), loop_options=loop_options(cfg),
                          extract_options=instantiate(cfg.extract), classify=classify,
                          min_class_size=cfg.min_class_size, out_dir=run_dir, seed=cfg.seed,
                          resume=bool(cfg.resume))
    text = scores_text(result.loop.table())
    if text:
        log.info("picking scores\n%s", text)
    s = result.summary
    print(f"pipeline: {s['micrographs']} micrographs -> {s['consensus_particles']} consensus particles -> "
          f"{s['extracted']} extracted -> {s['classes_kept']}/{s['classes']} classes kept, "
          f"{s['selected_particles']} particles -> {run_dir}")
