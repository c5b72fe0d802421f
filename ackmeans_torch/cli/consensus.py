"""Consensus particle picking (one-shot REPIC): k pickers' coordinate files → per-micrograph
consensus BOX, crYOLO CBOX and RELION coordinate STAR, RELION's autopick layout (coordinate files
mirroring the micrograph folders plus the ``autopick.star`` index), ``summary.tsv``,
``confidences.png`` and, with micrograph images, overlay PNGs.

Examples::

    ackmeans-torch consensus pickers='[crYOLO/,deepPicker/,topaz/]' box_size=180
    ackmeans-torch consensus pickers='[a/,b/,c/]' box_size=180 min_pickers=2 top=300
    ackmeans-torch consensus pickers='[a/,b/,c/]' box_size=180 repic_compat=true   # REPIC 0.2.1
    ackmeans-torch consensus pickers='[a/,b/,c/]' relion_micrographs=CtfFind/job003/micrographs_ctf.star
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig

from ackmeans_torch.cli.app import hydra_command
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.coords import (
    is_star_path, relion_coordinate_path, relion_micrograph_names, write_box, write_cbox, write_relion_autopick,
    write_relion_coordinate_index, write_relion_star,
)
from ackmeans_torch.micrographs.io import IMAGE_SUFFIXES, project_path, read_micrographs
from ackmeans_torch.picking.consensus import (
    ConsensusInputWarning, MicrographConsensus, PickerData, load_pickers, run_consensus,
)
from ackmeans_torch.picking.plots import plot_overlay, plot_sorted_confidence

log = logging.getLogger(__name__)


def picker_sources(pickers: object) -> dict[str, str]:
    """``pickers`` config (a list of folders, named by folder name, or a name → folder mapping)
    → ordered ``{name: folder}``."""
    if isinstance(pickers, DictConfig):
        out = {str(k): str(v) for k, v in pickers.items()}
    elif isinstance(pickers, ListConfig):
        out = {}
        for src in pickers:
            name = Path(str(src)).name or str(src)
            if name in out:
                raise InputError(f"pickers: two folders named {name!r}; give a mapping name: folder instead")
            out[name] = str(src)
    else:
        raise InputError("pickers must be a list of folders, e.g. pickers='[crYOLO/,topaz/]', or a mapping")
    if len(out) < 2:
        raise InputError(f"pickers: consensus needs at least 2 pickers; got {len(out)}")
    return out


def summary_table(results: list[MicrographConsensus], data: PickerData) -> pd.DataFrame:
    """One row per micrograph: boxes per picker, cliques, selected, objective, status, time, error,
    and the notes of reading its files (a picker without a file, boxes outside, headers)."""
    rows = []
    for r in results:
        row = {"micrograph": r.stem}
        row.update({f"boxes_{n}": ("" if c is None else c) for n, c in r.n_boxes.items()})
        row.update(cliques=r.n_cliques, selected=len(r.picks), objective=round(r.objective, 6),
                   status=r.status, gap=round(r.gap, 6), ilp_components=r.ilp_components,
                   seconds=round(r.seconds, 4), error=r.error or "", notes="; ".join(data.notes.get(r.stem, [])))
        rows.append(row)
    return pd.DataFrame(rows)


def write_relion_layout(run_dir: Path, results: list[MicrographConsensus], names: dict[str, str],
                        micrographs_star: str | None) -> None:
    """RELION's autopick layout in ``run_dir``: ``<mirror of the micrograph name>_autopick.star``
    per processed micrograph that ``names`` knows (where RELION 3.1's ``--coord_dir run_dir
    --coord_suffix _autopick.star`` looks), the ``autopick.star`` index RELION 4 reads and, from a
    micrographs STAR, ``coords_suffix_autopick.star`` naming it (the file the RELION 3.1 GUI's
    Extract job takes as its coordinate input)."""
    pairs, unnamed = [], []
    for r in results:
        if r.status == "skipped":
            continue
        if r.stem not in names:
            unnamed.append(r.stem)
            continue
        coords = run_dir / relion_coordinate_path(names[r.stem])
        write_relion_autopick(coords, r.picks)
        pairs.append((names[r.stem], project_path(coords)))
    if unnamed:
        log.warning("%d micrographs are not in relion_micrographs (%s), so they have no RELION coordinate file: %s",
                    len(unnamed), micrographs_star, ", ".join(unnamed[:5]) + (" ..." if len(unnamed) > 5 else ""))
    write_relion_coordinate_index(run_dir / "autopick.star", pairs)
    if micrographs_star is not None:
        with atomic_output(run_dir / "coords_suffix_autopick.star") as tmp:
            Path(tmp).write_text(micrographs_star + "\n")


def write_outputs(run_dir: Path, data: PickerData, results: list[MicrographConsensus], *,
                  micrographs: str | None, image_y_flipped: str | bool, relion_names: dict[str, str] | None,
                  micrographs_star: str | None) -> None:
    """BOX, CBOX and STAR per processed micrograph, RELION's autopick layout (unless
    ``relion_names`` is None), the summary, the confidence plot and overlays."""
    for r in results:
        if r.status == "skipped":
            log.warning("skipped %s: %s", r.stem, r.error)
            continue
        write_box(run_dir / "box" / f"{r.stem}.box", r.picks)
        write_cbox(run_dir / "cbox" / f"{r.stem}.cbox", r.picks)
        write_relion_star(run_dir / "star" / f"{r.stem}.star", r.picks)
    if relion_names is not None:
        write_relion_layout(run_dir, results, relion_names, micrographs_star)
    with atomic_output(run_dir / "summary.tsv") as tmp:
        summary_table(results, data).to_csv(tmp, sep="\t", index=False)
    plot_sorted_confidence([r.picks.scores for r in results if r.status != "skipped"], run_dir / "confidences.png")
    if micrographs is None:
        return
    if not Path(micrographs).is_dir():
        raise InputError(f"micrographs={micrographs} is not a folder of micrograph images")
    images = {m.name: m for m in read_micrographs(micrographs)}
    from tqdm import tqdm  # the overlays are the slow, per-micrograph part: a bar with ETA on a terminal

    for r in tqdm(results, desc="overlays", unit="micrograph", disable=None, leave=False):
        if r.stem in images and r.status != "skipped":
            mic = images[r.stem]
            flipped = (IMAGE_SUFFIXES[mic.path.suffix.lower()] == "pil" if image_y_flipped == "auto"
                       else bool(image_y_flipped))
            plot_overlay(mic.load(), data.picks[r.stem], r.picks,
                         run_dir / "overlays" / f"{r.stem}.png", image_y_flipped=flipped, title=r.stem)


def micrograph_shapes(cfg: DictConfig) -> dict[str, tuple[int, int]] | None:
    """Micrograph stem -> (H, W) px from the MRC/TIFF headers of ``micrographs`` (the overlay
    images) or, when all its files are present, of ``relion_micrographs``; None when neither gives
    them (boxes outside a micrograph cannot be told then). PNG/JPEG are left out: such exports are
    often binned, and their size would drop good boxes."""
    sources = [s for s in (cfg.micrographs, cfg.relion_micrographs) if s is not None]
    for source in sources:
        try:
            return {m.name: m.shape for m in read_micrographs(str(source))
                    if IMAGE_SUFFIXES[m.path.suffix.lower()] != "pil"} or None
        except InputError as exc:
            if source == cfg.micrographs:
                raise
            log.info("micrograph sizes not read from relion_micrographs (%s); boxes are not checked against "
                     "the micrograph edges", str(exc).splitlines()[0])
    return None


@hydra_command("consensus")
def main(cfg: DictConfig, run_dir: Path) -> None:
    sources = picker_sources(cfg.pickers)
    formats = cfg.formats if isinstance(cfg.formats, str) else dict(zip(sources, map(str, cfg.formats)))
    if not isinstance(formats, str) and len(formats) != len(sources):
        raise InputError(f"formats: {len(cfg.formats)} entries for {len(sources)} pickers; give one per picker")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConsensusInputWarning)
        data = load_pickers(sources, formats=formats, box_size=cfg.box_size, skip_bad=cfg.skip_bad_micrographs,
                            shapes=micrograph_shapes(cfg))
    for w in caught:
        # what the input lacked goes to stderr as well as the log: a consensus that silently used
        # less than it was given is the failure this guards against
        log.warning("%s", w.message)
        print(f"consensus: warning: {w.message}", file=sys.stderr)
    source = cfg.relion_micrographs
    # Read before the solver runs, so that a wrong micrographs STAR costs no consensus time.
    relion_names = None if source is None else relion_micrograph_names(str(source), list(data.picks))
    micrographs_star = str(source) if source is not None and is_star_path(str(source)) else None
    results = run_consensus(
        data, threshold=cfg.threshold, min_pickers=cfg.min_pickers, box_size=cfg.box_size,
        score_norm=cfg.score_norm, consensus_box=cfg.consensus_box, repic_compat=cfg.repic_compat,
        time_limit=cfg.time_limit, top=cfg.top, device=cfg.device)
    write_outputs(run_dir, data, results, micrographs=cfg.micrographs, image_y_flipped=cfg.image_y_flipped,
                  relion_names=relion_names, micrographs_star=micrographs_star)
    done = [r for r in results if r.status != "skipped"]
    log.info("%d micrographs, %d consensus particles, %d skipped; outputs in %s", len(done),
             sum(len(r.picks) for r in done), len(results) - len(done), run_dir)
    print(f"consensus: {len(done)} micrographs, {sum(len(r.picks) for r in done)} particles, "
          f"{len(results) - len(done)} skipped -> {run_dir}")


if __name__ == "__main__":
    main()
