"""Run one classification several times with different seeds ("double confirm"), match its classes
across the runs and report, per class, its stable members, the Jaccard index of its members, the
spread of its size and a stability score, with ARI/NMI between the runs.

Examples::

    ackmeans-torch reproduce                                   # built-in simulated set
    ackmeans-torch reproduce data=file data.path=particles.star n_classes=8 replicates=5
    ackmeans-torch reproduce n_classes=20 halves=true objective=kmeans

The command only composes the config (the ``classify`` groups and keys, plus ``replicates``,
``halves``, ``dimension``, ``workers``) into :func:`ackmeans_torch.trust.reproduce.reproduce` on
the classifier of ``dimension`` and writes
:func:`ackmeans_torch.trust.outputs.write_reproducibility`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.classify import CLASSIFY_GROUPS, classify_options
from ackmeans_torch.cli.classify3d import CLASS3D_GROUPS
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.trust.classifier import Classifier, classifier_for
from ackmeans_torch.trust.outputs import write_reproducibility
from ackmeans_torch.trust.reproduce import reproduce

log = logging.getLogger(__name__)

#: the option objects each classifier is made with, by ``dimension`` (keyword, config group)
GROUPS = {"2d": CLASSIFY_GROUPS, "3d": CLASS3D_GROUPS}


def classifier_from_config(cfg: DictConfig) -> tuple[Classifier, ImageSource]:
    """The classifier of ``cfg.dimension`` with the ``classify`` settings of ``cfg`` (made and
    validated before the data is read) and the source it classifies."""
    build = classifier_for(cfg.dimension)
    settings = classify_options(cfg, groups=GROUPS[cfg.dimension])
    source = instantiate(cfg.data)
    return build(source, **settings), source


@hydra_command("reproduce")
def main(cfg: DictConfig, run_dir: Path) -> None:
    classifier, source = classifier_from_config(cfg)
    result = reproduce(classifier, len(source), cfg.n_classes, replicates=cfg.replicates,
                       halves=cfg.halves, seed=cfg.seed, workers=cfg.workers)
    write_reproducibility(run_dir, result, source, project_dir=cfg.data.get("project_dir"))
    log.info("per class\n%s", result.classes.to_string(index=False, float_format="%.3f"))
    summary = result.summary
    log.info("%d runs, %d classes: ARI mean %.3f (min %.3f), NMI mean %.3f; %.1f%% of the "
             "particles stable; median class stability %.3f; outputs in %s", summary["runs"],
             summary["classes"], summary["ari_mean"], summary["ari_min"], summary["nmi_mean"],
             100 * summary["stable_fraction"], summary["stability_median"], run_dir)
