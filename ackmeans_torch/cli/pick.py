"""Pick particles with several pickers and REPIC's iterative loop: pick → consensus → retrain →
re-pick, ``rounds`` times; per round the picks, the consensus (BOX, STAR, CSV), scores against
the truth when given, and across rounds ``scores.tsv`` and ``scores.png``.

Examples::

    ackmeans-torch pick micrographs=Micrographs/ particle_diameter=160               # blob, template, cnn
    ackmeans-torch pick micrographs=CtfFind/job003/micrographs_ctf.star particle_diameter=160 rounds=0
    ackmeans-torch pick micrographs=mics/ particle_diameter=50 +picker@pickers.relion=relion
    ackmeans-torch pick micrographs=mics/ particle_diameter=50 truth=truth_box/ out_dir=runs/p resume=true

The command only composes the config into :func:`ackmeans_torch.picking.iterate.run_loop`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.errors import InputError

log = logging.getLogger(__name__)


def loop_options(cfg: DictConfig):
    """:class:`~ackmeans_torch.picking.iterate.LoopOptions` from the root keys of ``cfg``."""
    from dataclasses import fields

    from ackmeans_torch.picking.iterate import LoopOptions

    return LoopOptions(**{f.name: cfg[f.name] for f in fields(LoopOptions)})


def make_pickers(cfg: DictConfig) -> dict:
    """name -> picker, each instantiated from its ``pickers.<name>`` group entry."""
    if not cfg.get("pickers"):
        raise InputError("no pickers configured; add one with +picker@pickers.<name>=blob")
    return {str(name): instantiate(entry) for name, entry in cfg.pickers.items()}


def read_truth(folder: str, box_size: float) -> dict:
    """Reference boxes per micrograph stem from a folder of coordinate files."""
    from ackmeans_torch.io.coords import collect_picker_files, read_picks

    files = collect_picker_files(folder)
    if not files:
        raise InputError(f"truth={folder}: no coordinate files found")
    return {stem: read_picks(path, box_size=box_size) for stem, path in files.items()}


def scores_text(table) -> str:
    """The loop's score table as aligned text (empty without truth)."""
    if table.empty:
        return ""
    return table[["round", "picker", "subset", "n_picks", "precision", "recall", "f1"]].to_string(index=False)


@hydra_command("pick")
def main(cfg: DictConfig, run_dir: Path) -> None:
    from ackmeans_torch.micrographs.io import read_micrographs
    from ackmeans_torch.picking.iterate import run_loop

    options = loop_options(cfg)
    pickers = make_pickers(cfg)
    micrographs = read_micrographs(str(cfg.micrographs))
    box = cfg.truth_box_size or cfg.box_size or 1.5 * cfg.particle_diameter
    truth = None if cfg.truth is None else read_truth(str(cfg.truth), box)
    result = run_loop(micrographs, pickers, options=options, truth=truth, out_dir=run_dir)
    last = result.rounds[-1]
    text = scores_text(result.table())
    if text:
        log.info("scores\n%s", text)
    print(f"pick: {len(micrographs)} micrographs, {len(result.rounds)} rounds, "
          f"{sum(len(p) for p in last.consensus.values())} consensus particles -> {run_dir}")
