"""Figures a user looks at after a classification (the ACK-means paper's Figs 1–10).

* :func:`class_gallery`: class averages in a grid, largest class first, each labelled with its
  class number and size (Figs 2–10).
* :func:`ranked_sizes`: class sizes sorted ascending, one line per run (Fig. 1b).
* :func:`angular_histogram`: normalised histogram of within-class angular distances between
  viewing directions, one line per run (Fig. 1a).

Every figure is written atomically (PNG) and closed; matplotlib runs on the Agg backend so no
display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ackmeans_torch.io.atomic import atomic_output  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def class_gallery(
    averages: np.ndarray, sizes: np.ndarray, path: str | Path, *, ncols: int = 10,
    title: str | None = None,
) -> Path:
    """Grid of class averages ``(K, L, L)``, largest class first (ties in class order), as RELION
    and cryoSPARC sort theirs; each panel shows its 1-based class number (the ``rlnClassNumber``
    of the STAR files) top left and its size top right.

    Each image is contrast-stretched on its own (1st–99th percentile), as galleries in RELION and
    cryoSPARC are; an empty class is drawn as a blank tile marked ``0``.
    """
    averages = np.asarray(averages, dtype=np.float32)
    sizes = np.asarray(sizes)
    order = gallery_order(sizes)
    k = len(averages)
    ncols = max(1, min(ncols, k))
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.2 * nrows), squeeze=False)
    for panel, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if panel >= k:
            continue
        j = order[panel]
        img = averages[j] if sizes[j] else np.zeros_like(averages[j])
        lo, hi = np.percentile(img, [1, 99]) if np.ptp(img) > 0 else (0.0, 1.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
        ax.text(0.04, 0.96, f"#{j + 1}", transform=ax.transAxes, color="cyan",
                fontsize=7, va="top", ha="left")
        ax.text(0.96, 0.96, str(int(sizes[j])), transform=ax.transAxes, color="yellow",
                fontsize=7, va="top", ha="right")
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def gallery_order(sizes: np.ndarray) -> np.ndarray:
    """Class indices (0-based) by decreasing size, ties by class number."""
    return np.argsort(-np.asarray(sizes), kind="stable")


def ranked_sizes(sizes_by_run: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Class sizes ranked ascending, one line per run (the paper's Fig. 1b)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, sizes in sizes_by_run.items():
        ranked = np.sort(np.asarray(sizes))
        ax.plot(np.arange(1, len(ranked) + 1), ranked, label=name, lw=1.5)
    ax.set_xlabel("class rank (ascending size)")
    ax.set_ylabel("class size (images)")
    # ranks and sizes are counts: no 2.5th class, no 0.5 images
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def angular_histogram(
    angles_by_run: Mapping[str, np.ndarray], path: str | Path, *, max_deg: float = 180.0,
    bin_deg: float = 2.0,
) -> Path:
    """Normalised histograms (each sums to 1) of within-class angular distances in degrees
    between viewing directions, one line per run (the paper's Fig. 1a)."""
    bins = np.arange(0.0, max_deg + bin_deg, bin_deg)
    centres = 0.5 * (bins[1:] + bins[:-1])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, angles in angles_by_run.items():
        counts, _ = np.histogram(np.asarray(angles), bins=bins)
        ax.plot(centres, counts / max(counts.sum(), 1), label=name, lw=1.5)
    # zoom to where the pairs are (classes of one view sit far below 180°)
    tail = max((np.percentile(a, 99.5) for a in angles_by_run.values() if len(a)), default=max_deg)
    ax.set_xlim(0, min(max_deg, max(30.0, 10 * np.ceil(tail / 10))))
    ax.set_xlabel("angle between viewing directions within a class (deg)")
    ax.set_ylabel("fraction of pairs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
