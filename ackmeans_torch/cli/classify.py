"""Classify particle images without supervision: MRA, RFA or MSA/MRA with ACK-means, K-means,
SPIDER's size factor, EQK-means or any size penalty; RELION-ready outputs in the run directory.

Examples::

    ackmeans-torch classify                                   # built-in simulated set
    ackmeans-torch classify data=file data.path=particles.star n_classes=50 objective=kmeans
    ackmeans-torch classify --multirun objective=ack,kmeans,spider,eqk
    ackmeans-torch classify trainer=ddp trainer.devices=4 data=file data.path=big.star
    ackmeans-torch classify out_dir=runs/classify/a resume=true      # continue a killed run

The command only composes the config into the arguments of
:func:`ackmeans_torch.classify.run.run_classification`: every option object is made (and
validated) before any image is read or simulated.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.classify.run import run_classification
from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cluster.options import ClusterOptions


@contextmanager
def _relaunchable_argv() -> Iterator[None]:
    """Lightning's ddp launcher starts the extra local processes by re-executing ``sys.argv``,
    which ``cli/main.py`` rewrote to ``["ackmeans-torch classify", *overrides]``; give it the
    real script and the sub-command back for the launch (``sys.orig_argv`` ends with them)."""
    saved, tail = sys.argv, ["classify", *sys.argv[1:]]
    original = sys.orig_argv
    # only a process started as "<script> classify ..." (not, e.g., a test runner) is relaunchable
    if not saved[0].endswith(" classify") or len(original) <= len(tail) or \
            original[-len(tail):] != tail:
        yield
        return
    sys.argv = [original[-len(tail) - 1], *tail]
    try:
        yield
    finally:
        sys.argv = saved


def classify_options(cfg: DictConfig) -> dict:
    """Every option object of a run, made and validated from the config (no data read):
    ``options``, ``rule``, ``pipeline``, ``align``, ``preprocess_options``, ``trainer``."""
    made = {"options": ClusterOptions(**{f.name: cfg[f.name] for f in fields(ClusterOptions)})}
    for key, group in (("rule", "objective"), ("pipeline", "pipeline"), ("align", "align"),
                       ("preprocess_options", "preprocess"), ("trainer", "trainer")):
        made[key] = instantiate(cfg[group])
    return made


def classify_from_config(cfg: DictConfig, run_dir: Path):
    """The whole command on a composed ``classify`` config; rank zero returns the
    :class:`~ackmeans_torch.classify.run.ClassificationRun` (other ranks ``None``)."""
    settings = classify_options(cfg)
    resume = cfg.resume if isinstance(cfg.resume, bool) or cfg.resume is None else str(cfg.resume)
    source = instantiate(cfg.data)
    with _relaunchable_argv():
        return run_classification(
            source, **settings, out_dir=run_dir, resume=resume,
            wiener_epsilon=cfg.wiener_epsilon if cfg.ctf_averages else None,
            progress=cfg.progress)


@hydra_command("classify")
def main(cfg: DictConfig, run_dir: Path) -> None:
    classify_from_config(cfg, run_dir)
