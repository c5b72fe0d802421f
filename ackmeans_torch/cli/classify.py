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
validated) before any image is read or simulated. At the end it prints the run's summary as a
table (:func:`summary_table`), also into ``app.log``.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.classify.run import run_classification
from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cluster.options import ClusterOptions

log = logging.getLogger(__name__)


#: the option objects of ``classify`` and the config group each is made from
CLASSIFY_GROUPS = (("rule", "objective"), ("pipeline", "pipeline"), ("align", "align"),
                   ("preprocess_options", "preprocess"), ("trainer", "trainer"))


def classify_options(cfg: DictConfig, groups=CLASSIFY_GROUPS) -> dict:
    """Every option object of a run, made and validated from the config (no data read):
    ``options`` (the loop keys) and one per ``(keyword, group)`` of ``groups`` (default
    ``classify``'s: ``rule``, ``pipeline``, ``align``, ``preprocess_options``, ``trainer``)."""
    # a loop key the command's YAML leaves out keeps ClusterOptions' default (2D has no soft
    # assignment to offer, so classify.yaml has no temperature)
    made = {"options": ClusterOptions(**{f.name: cfg[f.name] for f in fields(ClusterOptions)
                                         if f.name in cfg})}
    for key, group in groups:
        made[key] = instantiate(cfg[group])
    return made


def classify_from_config(cfg: DictConfig, run_dir: Path):
    """The whole command on a composed ``classify`` config; rank zero returns the
    :class:`~ackmeans_torch.classify.run.ClassificationRun` (other ranks ``None``)."""
    settings = classify_options(cfg)
    resume = cfg.resume if isinstance(cfg.resume, bool) or cfg.resume is None else str(cfg.resume)
    source = instantiate(cfg.data)
    return run_classification(
        source, **settings, out_dir=run_dir, resume=resume,
        wiener_epsilon=cfg.wiener_epsilon if cfg.ctf_averages else None,
        progress=cfg.progress, project_dir=cfg.data.get("project_dir"))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def summary_table(run) -> str:
    """The end-of-run summary of a :class:`~ackmeans_torch.classify.run.ClassificationRun` as
    aligned rows: sizes, singletons and empty classes, iterations, convergence, time, accuracy
    when the truth is known, and where the outputs are."""
    summary, sizes = run.summary, sorted(int(s) for s in run.result.sizes.tolist())
    rows = [
        ("method", summary["label"]),
        ("images / classes", f"{summary['n_images']:,} / {summary['n_classes']}"),
        ("class sizes", f"min {sizes[0]:,}, median {sizes[len(sizes) // 2]:,}, "
                        f"max {sizes[-1]:,} images"),
        ("singletons / empty", f"{sizes.count(1)} / {sizes.count(0)} classes"),
        ("iterations", f"{summary['iterations']}, " + (
            "converged (sigma <= sigma0)" if summary["converged"]
            else f"sigma levelled off at {summary['sigma']:.3f} (plateau: the images still "
                 "moving sit at near-ties)" if summary.get("stopped") == "plateau"
            else "NOT converged: stopped at max_iter (raise max_iter or sigma0)")),
        ("time", f"{_duration(summary['seconds'])} on {summary['processes']} process"
                 + ("es" if summary["processes"] > 1 else "")),
    ]
    if summary.get("resumed_after") is not None:
        rows.append(("resumed after", f"iteration {summary['resumed_after']}"))
    if "median_angle" in summary:
        rows.append(("accuracy (known views)",
                     f"median within-class angle {summary['median_angle']:.1f}°, "
                     f"{100 * summary['frac_below_10']:.1f}% of pairs < 10°"
                     + (f", ARI {summary['ari']:.3f}, NMI {summary['nmi']:.3f}"
                        if "ari" in summary else "")))
    if run.out_dir is not None:
        rows.append(("outputs", f"{run.out_dir}/ (particles.star, class_averages.mrcs, "
                                "classes.star, class_gallery.png, summary.json)"))
    return aligned_rows(rows)


def aligned_rows(rows: list[tuple[str, str]]) -> str:
    """``(name, value)`` rows as an indented two-column table (the end-of-run summaries)."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


@hydra_command("classify", relaunchable=True)
def main(cfg: DictConfig, run_dir: Path) -> None:
    run = classify_from_config(cfg, run_dir)
    if run is not None:  # rank zero
        log.info("summary\n%s", summary_table(run))
