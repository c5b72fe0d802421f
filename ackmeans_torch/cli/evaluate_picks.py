"""Score particle picks against a reference set: precision, recall and F1 by REPIC's pixel-mask
definition and by one-to-one centre matching within a radius → ``pick_metrics.tsv``.

The lead's ``evaluate`` command dispatches here with the config of configs/evaluate/picks.yaml
(keys under ``evaluate``). Example::

    ackmeans-torch evaluate evaluate=picks evaluate.picks='[crYOLO/,consensus/box/]' \
        evaluate.reference=ground_truth/ evaluate.flip_y=4096 evaluate.box_size=180
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.coords import PickSet, collect_picker_files, read_picks
from ackmeans_torch.picking.evaluate import METHODS, evaluate_picks

log = logging.getLogger(__name__)


def _read_set(source: str, fmt: str, box_size: float | None) -> dict[str, PickSet]:
    files = collect_picker_files(source, fmt=fmt) if Path(source).is_dir() else collect_picker_files([source], fmt=fmt)
    return {stem: read_picks(path, fmt=fmt, box_size=box_size) for stem, path in files.items()}


def run_picks(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """Evaluate every pick set of ``cfg.evaluate.picks`` against ``cfg.evaluate.reference``; writes
    ``run_dir/pick_metrics.tsv`` (one row per pick set, micrograph and method, plus TOTAL rows) and
    returns it."""
    ev = cfg.evaluate
    sources = [str(s) for s in ev.picks] if isinstance(ev.picks, ListConfig) else [str(ev.picks)]
    methods = tuple(METHODS) if ev.method == "both" else (str(ev.method),)
    shape = None if ev.micrograph_shape is None else tuple(int(v) for v in ev.micrograph_shape)
    if shape is not None and len(shape) != 2:
        raise InputError(f"evaluate.micrograph_shape={list(shape)} must be [height, width] px")
    reference = _read_set(str(ev.reference), ev.reference_format, ev.reference_box_size)
    frames = []
    for src in sources:
        name = Path(src.rstrip("/")).name
        if Path(src).is_dir() and name in ("box", "star"):  # a consensus run's output folder
            name = Path(src.rstrip("/")).parent.name + "/" + name
        rows = evaluate_picks(_read_set(src, ev.picks_format, ev.box_size), reference, methods=methods,
                              radius=ev.radius, shape=shape, box_size=ev.box_size,
                              reference_box_size=ev.reference_box_size, flip_y=ev.flip_y)
        frames.append(pd.DataFrame(rows).assign(picks=name))
    table = pd.concat(frames, ignore_index=True)
    table = table[["picks", *[c for c in table.columns if c != "picks"]]]
    with atomic_output(run_dir / "pick_metrics.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    total = table[table.micrograph == "TOTAL"]
    for _, r in total.iterrows():
        log.info("%s %s: precision %.3f recall %.3f F1 %.3f", r.picks, r.method, r.precision, r.recall, r.f1)
    return table

