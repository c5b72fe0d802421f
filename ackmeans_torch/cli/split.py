"""Classify until exhaustive: split every class in two while the split is reproducible, leaves
both children large enough and beats the split of homogeneous data (a calibrated null test);
report classes that keep splitting along one line as continuous heterogeneity.

Examples::

    ackmeans-torch split                                       # built-in simulated set
    ackmeans-torch split data=file data.path=particles.star n_classes=4 split.min_size=500
    ackmeans-torch split split.alpha=0.001 split.replicates=5 objective=kmeans
    ackmeans-torch split dimension=3d sim=hetero workers=2     # replicates side by side

The command only composes the config (the ``classify`` groups and keys, ``n_classes`` the
starting classification, ``workers``, the ``split`` group of
:class:`~ackmeans_torch.trust.split.SplitOptions`) into
:func:`ackmeans_torch.trust.split.exhaustive_split` on the classifier of ``dimension`` and writes
:func:`ackmeans_torch.trust.outputs.write_split`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.reproduce import classifier_from_config
from ackmeans_torch.trust.outputs import write_split
from ackmeans_torch.trust.split import exhaustive_split

log = logging.getLogger(__name__)


@hydra_command("split")
def main(cfg: DictConfig, run_dir: Path) -> None:
    options = instantiate(cfg.split)
    classifier, source = classifier_from_config(cfg)
    everyone = np.arange(len(source))
    start = None if cfg.n_classes == 1 else classifier(everyone, cfg.n_classes, cfg.seed).labels
    tree = exhaustive_split(classifier, len(source), options=options, start=start,
                            workers=cfg.workers)
    write_split(run_dir, tree, source, project_dir=cfg.data.get("project_dir"))
    log.info("decisions\n%s", tree.nodes.drop(columns="reason").to_string(
        index=False, float_format="%.3f"))
    for line in tree.messages():
        log.warning("%s", line)
    log.info("%d leaves (exhaustive classes) after %d accepted splits; outputs in %s",
             len(tree.leaves), tree.accepted, run_dir)
