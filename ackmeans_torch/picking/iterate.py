"""REPIC's iterative mode (paper, Pseudocode 1 and Online Methods "Iterative mode"): pick with
every picker → consensus → retrain the trainable pickers on the consensus → re-pick → consensus,
for ``rounds`` rounds.

* Round 0 picks with every picker that can pick without training (the pretrained ones: blob,
  template, external, a CNN given ``weights``); at least two are needed for a consensus.
* Round r ≥ 1 trains every :class:`~ackmeans_torch.pickers.base.TrainablePicker` afresh (REPIC
  trains *ab initio* each iteration, so a round depends only on the previous consensus and a
  resumed loop gives the same result) on the previous round's consensus boxes of the training
  micrographs, validated on the validation micrographs, re-picks every micrograph with them and
  forms the consensus of all pickers. Pickers that do not train keep their round-0 picks.
* Split (:func:`defocus_split`, REPIC's rule): micrographs are ranked by mean defocus
  ((U + V) / 2) and cut into ``n_bins`` bins of equal count (``numpy.array_split`` of the ranks:
  REPIC's bin edges drop or double-count a micrograph at a boundary, and its script stops when no
  defocus file is given; here micrographs without a CTF are dealt into equal random bins). The
  validation set takes one micrograph from each bin in turn (REPIC: three at a time, six in
  all) so training and validation both span the defocus range; of the rest, ``train_fraction``
  (REPIC: 20%) are taken the same way for training and the others are the test set.
* Scores: when the truth is known, precision / recall / F1 of every picker and of the consensus
  on the test micrographs (all micrographs when there are none), by one-to-one centre matching
  within half the particle diameter (``picking/evaluate.py``), per round.
* Outputs (``out_dir``): ``round_NN/`` per round — ``picks/<picker>/<stem>.csv``,
  ``consensus/{box,star,csv}/<stem>.*``, ``scores.tsv``, ``round.json`` (timings, split,
  training losses) — written into a hidden temporary folder renamed when the round is complete,
  so a killed run leaves only finished rounds, and a finished round is read back instead of
  recomputed on resume; ``split.tsv``, ``scores.tsv`` and ``scores.png`` across rounds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.coords import PickSet, read_csv, write_box, write_csv, write_relion_star
from ackmeans_torch.picking.consensus import PickerData, run_consensus
from ackmeans_torch.picking.evaluate import evaluate_picks

log = logging.getLogger(__name__)

CONSENSUS = "consensus"


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """Settings of :func:`run_loop`. rounds: retraining rounds after round 0 (0: one-shot
    picking + consensus). min_pickers: m of k for the consensus (None: all k). threshold,
    score_norm, consensus_box, time_limit: :func:`~ackmeans_torch.picking.consensus.run_consensus`.
    n_val: validation micrographs; train_fraction: of the others, for training; n_bins: defocus
    bins; seed: the split."""

    rounds: int = 3
    min_pickers: int | None = None
    threshold: float = 0.3
    score_norm: str = "rank"
    consensus_box: str = "median"
    time_limit: float = 10.0
    n_val: int = 6
    train_fraction: float = 0.2
    n_bins: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, 0)
        check_int("n_val", self.n_val, 0)
        check_int("n_bins", self.n_bins, 1)
        check_number("train_fraction", self.train_fraction, 0.0, 1.0)
        if self.min_pickers is not None:
            check_int("min_pickers", self.min_pickers, 2)


@dataclass
class Round:
    """One round: ``picks[picker][stem]``, ``consensus[stem]``, ``scores`` (rows of
    :func:`evaluate_picks` TOTALs with a ``picker`` column; empty without truth), ``seconds``
    (``pick_<picker>`` per micrograph, ``train_<picker>``, ``consensus``), training ``losses``."""

    index: int
    picks: dict[str, dict[str, PickSet]]
    consensus: dict[str, PickSet]
    scores: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    losses: dict[str, dict] = field(default_factory=dict)
    resumed: bool = False


@dataclass
class LoopResult:
    """All rounds of :func:`run_loop` and the split (``split[stem]`` = train/val/test)."""

    rounds: list[Round]
    split: dict[str, str]

    def table(self) -> pd.DataFrame:
        """Scores of every round: round, picker, subset, n_picks, tp, fp, fn, precision, recall, f1."""
        rows = [{"round": r.index, **row} for r in self.rounds for row in r.scores]
        return pd.DataFrame(rows)


def mean_defocus(ctf: Mapping | None) -> float | None:
    """(rlnDefocusU + rlnDefocusV) / 2 in Å, the value REPIC bins by; None without a CTF."""
    if not ctf or "rlnDefocusU" not in ctf or "rlnDefocusV" not in ctf:
        return None
    return 0.5 * (float(ctf["rlnDefocusU"]) + float(ctf["rlnDefocusV"]))


def defocus_split(names: Sequence[str], defocus: Mapping[str, float | None] | None, *, n_val: int,
                  train_fraction: float, n_bins: int = 3, seed: int = 0) -> dict[str, str]:
    """``{name: "train" | "val" | "test"}`` by REPIC's defocus-binned rule (module docstring).
    defocus: mean defocus per name; None, or any name without one, deals the names into equal
    random bins."""
    names = list(names)
    if len(names) < 2:
        raise InputError(f"the loop needs at least 2 micrographs to split into training and validation; got {len(names)}")
    if n_val >= len(names):
        raise InputError(f"n_val={n_val} must be < the number of micrographs ({len(names)}); lower n_val")
    rng = np.random.default_rng(seed)
    values = None if defocus is None else [defocus.get(n) for n in names]
    if values is None or any(v is None for v in values):
        ranked = list(rng.permutation(len(names)))
    else:
        ranked = list(np.argsort(np.asarray(values, dtype=float), kind="stable"))
    bins = [list(rng.permutation(part)) for part in np.array_split(np.asarray(ranked), min(n_bins, len(names)))]
    out: dict[str, str] = {}

    def deal(count: int, label: str) -> None:
        while count > 0 and any(bins):
            for b in bins:
                if b and count > 0:
                    out[names[b.pop()]] = label
                    count -= 1

    deal(n_val, "val")
    rest = sum(len(b) for b in bins)
    deal(max(1, int(round(train_fraction * rest))) if rest else 0, "train")
    for b in bins:
        for i in b:
            out[names[i]] = "test"
    return {n: out[n] for n in names}


def _trainable(picker) -> bool:
    from ackmeans_torch.pickers.base import TrainablePicker

    return isinstance(picker, TrainablePicker)


def _ready(picker) -> bool:
    return not _trainable(picker) or getattr(picker, "trained", False)


def _pick_all(picker, micrographs, images) -> tuple[dict[str, PickSet], float]:
    from ackmeans_torch.pickers.external import ExternalPicker

    out, t0 = {}, time.perf_counter()
    for mic, image in zip(micrographs, images):
        extra = {"name": mic.name} if isinstance(picker, ExternalPicker) else {}
        out[mic.name] = picker.pick(image, pixel_size=mic.pixel_size, ctf=mic.ctf, **extra)
    return out, (time.perf_counter() - t0) / max(len(micrographs), 1)


def _consensus(picks: Mapping[str, Mapping[str, PickSet]], stems: Sequence[str], options: LoopOptions
               ) -> tuple[dict[str, PickSet], float]:
    names = list(picks)
    data = PickerData(names, {s: {n: picks[n][s] for n in names} for s in stems})
    m = None if options.min_pickers is None else min(options.min_pickers, len(names))
    t0 = time.perf_counter()
    results = run_consensus(data, threshold=options.threshold, min_pickers=m, score_norm=options.score_norm,
                            consensus_box=options.consensus_box, time_limit=options.time_limit)
    return {r.stem: r.picks for r in results}, time.perf_counter() - t0


def _scores(picks: Mapping[str, Mapping[str, PickSet]], consensus: Mapping[str, PickSet],
            truth: Mapping[str, PickSet] | None, split: Mapping[str, str], radius: float) -> list[dict]:
    if truth is None:
        return []
    test = [s for s, part in split.items() if part == "test" and s in truth]
    subset, stems = ("test", test) if test else ("all", [s for s in split if s in truth])
    reference = {s: truth[s] for s in stems}
    rows = []
    for name, by_stem in [*picks.items(), (CONSENSUS, consensus)]:
        total = evaluate_picks({s: by_stem[s] for s in stems if s in by_stem}, reference, methods=("match",),
                               radius=radius)[-1]
        rows.append({"picker": name, "subset": subset, **{k: v for k, v in total.items()
                                                          if k not in ("micrograph", "method")}})
    return rows


def _write_round(out_dir: Path, rnd: Round) -> None:
    final = out_dir / f"round_{rnd.index:02d}"
    tmp = out_dir / f".round_{rnd.index:02d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for name, by_stem in rnd.picks.items():
        for stem, ps in by_stem.items():
            write_csv(tmp / "picks" / name / f"{stem}.csv", ps)
    for stem, ps in rnd.consensus.items():
        write_box(tmp / "consensus" / "box" / f"{stem}.box", ps)
        write_relion_star(tmp / "consensus" / "star" / f"{stem}.star", ps)
        write_csv(tmp / "consensus" / "csv" / f"{stem}.csv", ps)
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rnd.scores).to_csv(tmp / "scores.tsv", sep="\t", index=False)
    (tmp / "round.json").write_text(json.dumps({"round": rnd.index, "seconds": rnd.seconds, "losses": rnd.losses,
                                                "pickers": list(rnd.picks)}, indent=1))
    os.replace(tmp, final)


def _read_round(out_dir: Path, index: int, stems: Sequence[str]) -> Round | None:
    folder = out_dir / f"round_{index:02d}"
    if not (folder / "round.json").is_file():
        return None
    info = json.loads((folder / "round.json").read_text())
    picks = {name: {s: read_csv(folder / "picks" / name / f"{s}.csv") for s in stems} for name in info["pickers"]}
    consensus = {s: read_csv(folder / "consensus" / "csv" / f"{s}.csv") for s in stems}
    scores = pd.read_csv(folder / "scores.tsv", sep="\t").to_dict("records") if (folder / "scores.tsv").stat().st_size > 1 \
        else []
    return Round(index, picks, consensus, scores, info["seconds"], info["losses"], resumed=True)


def run_loop(micrographs: Sequence, pickers: Mapping[str, object], *, options: LoopOptions = LoopOptions(),
             truth: Mapping[str, PickSet] | None = None, out_dir: str | os.PathLike | None = None,
             radius: float | None = None) -> LoopResult:
    """The iterative loop (module docstring) on ``micrographs`` (``micrographs.io.Micrograph``:
    ``name``, ``load()``, ``pixel_size``, ``ctf``) with ``pickers`` (name → picker). truth:
    true boxes per name, for the scores. out_dir: where rounds are written and, when already
    there, read back (resume). radius: px for matching picks to the truth (default half the
    smallest particle diameter of the pickers)."""
    if not micrographs:
        raise InputError("no micrographs to pick")
    if not pickers:
        raise InputError("no pickers configured; give at least two")
    stems = [m.name for m in micrographs]
    if len(set(stems)) != len(stems):
        raise InputError("two micrographs share a name; picks are paired by name, so rename one")
    ready = [n for n, p in pickers.items() if _ready(p)]
    if len(ready) < 2:
        raise InputError(f"round 0 needs at least 2 pickers that pick without training; ready: {ready or 'none'} "
                         "(a CNN picker needs weights=<file> to pick in round 0)")
    trainable = [n for n, p in pickers.items() if _trainable(p)]
    if options.rounds > 0 and not trainable:
        raise InputError(f"rounds={options.rounds} needs a trainable picker (e.g. cnn); with none, set rounds=0")
    if radius is None:
        radius = 0.5 * min(p.particle_diameter for p in pickers.values())
    split = defocus_split(stems, {m.name: mean_defocus(m.ctf) for m in micrographs}, n_val=options.n_val,
                          train_fraction=options.train_fraction, n_bins=options.n_bins, seed=options.seed)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_output(out / "split.tsv") as tmp:
            pd.DataFrame({"micrograph": list(split), "subset": list(split.values()),
                          "mean_defocus": [mean_defocus(m.ctf) for m in micrographs]}).to_csv(tmp, sep="\t", index=False)
    images = [m.load() for m in micrographs]
    rounds: list[Round] = []
    for index in range(options.rounds + 1):
        done = None if out is None else _read_round(out, index, stems)
        if done is not None:
            log.info("round %d: finished earlier, read from %s", index, out / f"round_{index:02d}")
            rounds.append(done)
            continue
        seconds: dict[str, float] = {}
        losses: dict[str, dict] = {}
        if index == 0:
            picks = {}
            for name in ready:
                picks[name], seconds[f"pick_{name}"] = _pick_all(pickers[name], micrographs, images)
        else:
            previous = rounds[-1]
            picks = {n: previous.picks[n] for n in previous.picks if n not in trainable}
            train = [i for i, s in enumerate(stems) if split[s] == "train"]
            val = [i for i, s in enumerate(stems) if split[s] == "val"]
            for name in trainable:
                t0 = time.perf_counter()
                pickers[name].fit([images[i] for i in train], [previous.consensus[stems[i]] for i in train],
                                  val=([images[i] for i in val], [previous.consensus[stems[i]] for i in val]) if val
                                  else None)
                seconds[f"train_{name}"] = time.perf_counter() - t0
                losses[name] = getattr(pickers[name], "losses_", {})
                picks[name], seconds[f"pick_{name}"] = _pick_all(pickers[name], micrographs, images)
        consensus, seconds["consensus"] = _consensus(picks, stems, options)
        rnd = Round(index, picks, consensus, _scores(picks, consensus, truth, split, radius), seconds, losses)
        for row in rnd.scores:
            log.info("round %d %-12s P %.3f R %.3f F1 %.3f (%d picks)", index, row["picker"], row["precision"],
                     row["recall"], row["f1"], row["n_picks"])
        if out is not None:
            _write_round(out, rnd)
        rounds.append(rnd)
    result = LoopResult(rounds, split)
    if out is not None:
        write_summary(result, out)
    return result


def write_summary(result: LoopResult, out_dir: Path) -> None:
    """``scores.tsv`` (every round's scores) and, with scores, ``scores.png`` (precision,
    recall and F1 of each picker and the consensus across rounds)."""
    table = result.table()
    with atomic_output(out_dir / "scores.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if table.empty:
        return
    plot_rounds(table, out_dir / "scores.png")


def plot_rounds(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Precision, recall and F1 (one panel each) against the round, a line per picker and a
    thick one for the consensus, from :meth:`LoopResult.table`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    for ax, metric in zip(axes, ("precision", "recall", "f1")):
        for name, rows in table.groupby("picker", sort=False):
            ax.plot(rows["round"], rows[metric], marker="o", lw=3 if name == CONSENSUS else 1.2,
                    color="black" if name == CONSENSUS else None, label=name)
        ax.set_title(metric)
        ax.set_xlabel("round")
        ax.set_xticks(sorted(table["round"].unique()))
        ax.grid(ls=":", lw=0.5)
    axes[0].set_ylim(0, 1.02)
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
