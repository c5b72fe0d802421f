"""The files of ``ackmeans-torch reproduce`` and ``ackmeans-torch split``, written atomically into
the run directory.

reproduce (:func:`write_reproducibility`):

* ``classes.tsv`` — one row per matched class with its figures (``trust/reproduce.py``);
  ``pairs.tsv`` — ARI/NMI of every pair of runs; ``summary.json`` — the overall figures;
* ``model.star`` — ``model_classes``: ``rlnClassNumber``, ``rlnClassDistribution`` (mean size
  over N) and the figures as ``ackSizeMean``, ``ackSizeSd``, ``ackSizeCv``, ``ackJaccardMean``,
  ``ackJaccardMin``, ``ackStableMembers``, ``ackStability`` (labels RELION does not know: it is
  our report, not a RELION model);
* ``particles_stable.star`` — the stable members, ``rlnClassNumber`` their matched class;
  ``particles_unstable.star`` — the others, ``rlnClassNumber`` their class in the reference run
  (the first run that classified them on halves), so either can go to RELION as it is;
* ``class_sizes_runs.png`` — each matched class's size in every run.

split (:func:`write_split`):

* ``tree.tsv`` — every decision with its figures (``trust/split.py``); ``leaves.tsv`` — leaf
  number, node, size, whether it is continuous; ``summary.json``;
* ``particles.star`` — every particle, ``rlnClassNumber`` its leaf (1-based);
* ``tree.png`` — the tree: one box per tried class (size, decision), the accepted splits'
  p-values on their edges.

Image names are valid from ``project_dir`` (RELION's project folder); a source held in memory
only is written once as ``images.mrcs`` in the run directory and named from there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ackmeans_torch.classify.run import output_particles
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.eval.plots import plt, save_figure
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles, write_star
from ackmeans_torch.trust.reproduce import ABSENT, Reproducibility
from ackmeans_torch.trust.split import SplitTree

__all__ = ["write_reproducibility", "write_split"]

_MODEL_COLUMNS = {"size_mean": "ackSizeMean", "size_sd": "ackSizeSd", "size_cv": "ackSizeCv",
                  "jaccard_mean": "ackJaccardMean", "jaccard_min": "ackJaccardMin",
                  "stable": "ackStableMembers", "stability": "ackStability"}
_COLOURS = {"split": "#4c72b0", "leaf": "#55a868", "continuous": "#c44e52"}


def _particles(source: ImageSource, run_dir: Path, project_dir) -> pd.DataFrame:
    project = Path(os.path.abspath(Path.cwd() if project_dir is None else project_dir))
    table, in_memory = output_particles(source, run_dir, project)
    if in_memory is not None:
        write_stack(run_dir / "images.mrcs", in_memory.to_tensor().cpu(), in_memory.pixel_size)
    return table


def _tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _json(summary: dict, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))


def sizes_across_runs(result: Reproducibility, path: Path) -> Path:
    """Matched class sizes, one marker per run over each class number, the mean as a bar."""
    runs, k = result.labels.shape[0], result.n_classes
    sizes = np.stack([(result.labels == c).sum(1) for c in range(k)], 1)  # (R, K)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k + 2), 3.5))
    classes = np.arange(1, k + 1)
    ax.bar(classes, sizes.mean(0), color="#dddddd", label="mean")
    for r in range(runs):
        ax.plot(classes + (r - (runs - 1) / 2) * 0.6 / max(runs, 1), sizes[r], "o", ms=4,
                label=f"run {r + 1}{' (reference)' if r == result.reference else ''}")
    ax.set_xticks(classes)
    ax.set_xlabel("class (matched to the reference run)")
    ax.set_ylabel("class size (particles)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def write_reproducibility(run_dir: str | os.PathLike, result: Reproducibility,
                          source: ImageSource, *, project_dir=None) -> dict[str, Path]:
    """Write the reproduce files (module docstring) of ``result`` on ``source``'s particles."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in
             ("classes.tsv", "pairs.tsv", "summary.json", "model.star", "particles_stable.star",
              "particles_unstable.star", "class_sizes_runs.png")}
    _tsv(result.classes, paths["classes.tsv"])
    _tsv(result.pairs, paths["pairs.tsv"])
    _json(result.summary, paths["summary.json"])
    model = result.classes.rename(columns=_MODEL_COLUMNS).rename(
        columns={"class": "rlnClassNumber"})[["rlnClassNumber", *_MODEL_COLUMNS.values()]]
    model.insert(1, "rlnClassDistribution",
                 result.classes["size_mean"] / max(result.labels.shape[1], 1))
    write_star(paths["model.star"], {"model_classes": model}, float_format="%.6g")
    table = _particles(source, run_dir, project_dir)
    stable = result.stable != ABSENT
    seen = result.labels != ABSENT
    first = np.where(seen[result.reference], result.reference, seen.argmax(0))
    own = result.labels[first, np.arange(result.labels.shape[1])]
    if stable.any():
        write_particles(paths["particles_stable.star"],
                        table[stable].assign(rlnClassNumber=result.stable[stable] + 1))
    if (~stable).any():
        write_particles(paths["particles_unstable.star"],
                        table[~stable].assign(rlnClassNumber=own[~stable] + 1))
    sizes_across_runs(result, paths["class_sizes_runs.png"])
    return {name: path for name, path in paths.items() if path.exists()}


def _layout(nodes: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """(x, depth) of every node: leaves of the drawn tree side by side, parents over the middle
    of their children."""
    children: dict[str, list[str]] = {}
    for row in nodes.itertuples():
        if isinstance(row.parent, str):
            children.setdefault(row.parent, []).append(row.node)
    places: dict[str, tuple[float, int]] = {}
    counter = [0]

    def place(name: str, depth: int) -> float:
        kids = children.get(name, [])
        if not kids:
            x = float(counter[0])
            counter[0] += 1
        else:
            x = float(np.mean([place(kid, depth + 1) for kid in kids]))
        places[name] = (x, depth)
        return x

    for root in nodes.loc[~nodes["parent"].apply(lambda p: isinstance(p, str)), "node"]:
        place(root, 0)
    return places


def tree_plot(tree: SplitTree, path: Path) -> Path:
    """The split tree (module docstring)."""
    nodes = tree.nodes
    places = _layout(nodes)
    width = max(4.0, 1.3 * (max(x for x, _ in places.values()) + 1))
    depth = max(d for _, d in places.values())
    fig, ax = plt.subplots(figsize=(width, 1.2 * depth + 1.8))
    for row in nodes.itertuples():
        x, d = places[row.node]
        if isinstance(row.parent, str):
            px, pd_ = places[row.parent]
            ax.plot([px, x], [-pd_, -d], color="#888888", lw=1, zorder=1)
        label = f"{row.node}\n{row.n}\n{row.decision}"
        ax.text(x, -d, label, ha="center", va="center", fontsize=7, zorder=2,
                bbox=dict(boxstyle="round", fc=_COLOURS[row.decision], alpha=0.35))
        if row.decision == "split":
            ax.text(x, -d - 0.45, f"p={row.p_value:.3g}", ha="center", fontsize=6)
    ax.set_xlim(-0.7, width / 1.3 - 0.3)
    ax.set_ylim(-depth - 0.7, 0.7)
    ax.axis("off")
    ax.set_title(f"{len(tree.leaves)} leaves, {tree.accepted} accepted splits"
                 + (f", {len(tree.continuous)} continuous" if tree.continuous else ""),
                 fontsize=9)
    return save_figure(fig, path)


def write_split(run_dir: str | os.PathLike, tree: SplitTree, source: ImageSource, *,
                project_dir=None) -> dict[str, Path]:
    """Write the split files (module docstring) of ``tree`` on ``source``'s particles."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in
             ("tree.tsv", "leaves.tsv", "summary.json", "particles.star", "tree.png")}
    _tsv(tree.nodes, paths["tree.tsv"])
    sizes = np.bincount(tree.labels, minlength=len(tree.leaves))
    _tsv(pd.DataFrame({"leaf": np.arange(1, len(tree.leaves) + 1), "node": tree.leaves,
                       "size": sizes,
                       "continuous": [name in tree.continuous for name in tree.leaves]}),
         paths["leaves.tsv"])
    _json({"particles": int(len(tree.labels)), "leaves": len(tree.leaves),
           "accepted_splits": tree.accepted, "continuous": tree.continuous,
           "messages": tree.messages()}, paths["summary.json"])
    table = _particles(source, run_dir, project_dir)
    write_particles(paths["particles.star"], table.assign(rlnClassNumber=tree.labels + 1))
    tree_plot(tree, paths["tree.png"])
    return paths
