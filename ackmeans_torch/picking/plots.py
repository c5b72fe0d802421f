"""Figures of a consensus run: sorted consensus confidences (REPIC's ``particle_dist.png``) and an
overlay of each picker's and the consensus boxes on a micrograph image. Written with matplotlib's
Agg backend through :func:`~ackmeans_torch.io.atomic.atomic_output`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ackmeans_torch.io.atomic import atomic_output  # noqa: E402
from ackmeans_torch.io.coords import PickSet  # noqa: E402

IMAGE_SUFFIXES = (".mrc", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
PICKER_COLOURS = ("#E6B800", "#2CA02C", "#1F77B4", "#FF7F0E", "#8C564B", "#17BECF")
CONSENSUS_COLOUR = "#BF40BF"


def plot_sorted_confidence(confidences: Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """Consensus confidences of all micrographs sorted high to low, x in particles per micrograph
    (the count at that rank divided by the number of micrographs), to choose ``top``."""
    values = np.sort(np.concatenate([np.asarray(c, dtype=float) for c in confidences]) if confidences
                     else np.zeros(0))[::-1]
    n_mic = max(len(confidences), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(1, len(values) + 1) / n_mic, values, color=CONSENSUS_COLOUR, lw=1.5)
    ax.fill_between(np.arange(1, len(values) + 1) / n_mic, values, color=CONSENSUS_COLOUR, alpha=0.25)
    ax.set_xlabel("particles per micrograph (rank / micrographs)")
    ax.set_ylabel("consensus confidence")
    ax.set_title(f"{len(values)} consensus particles on {len(confidences)} micrographs")
    ax.grid(ls=":", lw=0.5)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_overlay(image: np.ndarray, pickers: Mapping[str, PickSet | None], consensus: PickSet,
                 path: str | os.PathLike, *, image_y_flipped: bool = False, title: str = "") -> None:
    """Boxes of every picker (thin, one colour each) and the consensus (thick, purple) over the
    micrograph, y axis upward from 0. image: (H, W). ``image_y_flipped=False``: row r is y = r
    (MRC data as pickers read it); ``True``: row 0 is the top, y = H - r (PNG/JPEG exports; on the
    EMPIAR-10017 JPEG the mean grey under crYOLO's centres is 115 with this flip and 134 without,
    against a background of 133 ± 12, i.e. the dark particles line up only with the flip)."""
    h, w = image.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w))
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", origin="upper" if image_y_flipped else "lower", vmin=lo, vmax=hi,
              extent=(0, w, 0, h))
    handles = []
    sets = [(n, p, PICKER_COLOURS[i % len(PICKER_COLOURS)], 0.6) for i, (n, p) in enumerate(pickers.items())
            if p is not None]
    for name, picks, colour, lw in [*sets, ("consensus", consensus, CONSENSUS_COLOUR, 1.6)]:
        corner = picks.corners
        boxes = [Rectangle((x, y), s, s) for (x, y), s in zip(corner, picks.box_size)]
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour, linewidth=lw))
        handles.append(Rectangle((0, 0), 1, 1, facecolor="none", edgecolor=colour, label=f"{name} ({len(picks)})"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=150)
    plt.close(fig)
