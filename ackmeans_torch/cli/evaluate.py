"""Score classifications against the known views (``evaluate=classes``) or particle picks
against reference picks (``evaluate=picks``); several runs are compared in one table and one
plot each.

Examples::

    ackmeans-torch evaluate evaluate.runs='[runs/classify/a/,runs/classify/b/]'
    ackmeans-torch evaluate evaluate=picks evaluate.picks=crYOLO/ evaluate.reference=truth/ evaluate.flip_y=4096
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.cli.evaluate_picks import run_picks
from ackmeans_torch.errors import InputError
from ackmeans_torch.eval.angular import evaluate_classification
from ackmeans_torch.eval.plots import angular_histogram, ranked_sizes
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.star import read_particles
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN

log = logging.getLogger(__name__)


def _classified_star(run: str) -> Path:
    path = Path(run)
    return path / "particles.star" if path.is_dir() else path


def run_label(run: str | Path) -> str:
    """``pipeline / objective / SNR`` of a classify run directory (its summary.json and
    config.yaml), else the file or folder name."""
    summary, config = Path(run) / "summary.json", Path(run) / "config.yaml"
    if not (summary.is_file() and config.is_file()):
        return Path(run).name or str(run)
    label = json.loads(summary.read_text()).get("label", Path(run).name)
    cfg = OmegaConf.load(config)
    simulated = str(OmegaConf.select(cfg, "data._target_", default="")).endswith("from_spec")
    snr = OmegaConf.select(cfg, "sim.snr") if simulated else None
    return f"{label} / SNR {snr:.3g}" if snr is not None else label


def run_classes(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """One row of figures per classified run (``eval/angular.py``), plus the overlaid Fig. 1a/1b
    plots; writes ``class_metrics.tsv``."""
    ev = cfg.evaluate
    runs = [str(r) for r in ev.runs] if isinstance(ev.runs, ListConfig) else [str(ev.runs)]
    truth = read_particles(ev.truth).particles if ev.truth else None
    rows, angles_by_run, sizes_by_run = [], {}, {}
    for run in runs:
        star = _classified_star(run)
        parts = read_particles(star).particles
        reference = parts if truth is None else truth
        missing = [c for c in ("rlnAngleRot", "rlnAngleTilt") if c not in reference]
        if missing or "rlnClassNumber" not in parts:
            raise InputError(f"{star if truth is None else ev.truth}: needs rlnClassNumber and the "
                             f"true rlnAngleRot/rlnAngleTilt; give evaluate.truth=<simulated STAR>")
        if len(reference) != len(parts):
            raise InputError(f"{ev.truth}: {len(reference)} particles but {star} has {len(parts)}")
        labels = parts["rlnClassNumber"].to_numpy(np.int64) - 1
        n_classes = int(labels.max()) + 1
        centres = reference[CENTRE_LABEL_COLUMN].to_numpy() if CENTRE_LABEL_COLUMN in reference else None
        figures, angles = evaluate_classification(
            labels, n_classes, reference[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(), truth=centres)
        name = run_label(run)
        rows.append({"run": name, **figures})
        angles_by_run[name] = angles
        sizes_by_run[name] = np.bincount(labels, minlength=n_classes)
    table = pd.DataFrame(rows)
    with atomic_output(run_dir / "class_metrics.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    angular_histogram(angles_by_run, run_dir / "angular_distances.png")
    ranked_sizes(sizes_by_run, run_dir / "class_sizes.png")
    return table


@hydra_command("evaluate")
def main(cfg: DictConfig, run_dir: Path) -> None:
    runners = {"classes": run_classes, "picks": run_picks}
    kind = cfg.evaluate.kind
    if kind not in runners:
        raise InputError(f"evaluate={kind!r} must be one of {sorted(runners)}")
    table = runners[kind](cfg, run_dir)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
