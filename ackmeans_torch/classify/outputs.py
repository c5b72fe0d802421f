"""A classification's result and its RELION-ready files.

Files (all written atomically into the run directory):

* ``particles.star`` — RELION 4 (optics + particles), every input column kept, plus
  ``rlnClassNumber`` (1-based), ``rlnAnglePsi``, ``rlnOriginXAngst/YAngst`` (the in-plane pose of
  the image in its class, RELION convention, see :func:`pose_to_relion`), ``rlnIsFlip`` (mirror)
  and ``rlnAckMeansDistance`` (the aligned distance to the class average; RELION keeps unknown
  labels with a warning);
* ``class_averages.mrcs`` — K averages, pixel size set; ``classes.star`` — per class its
  number, size, fraction (``rlnClassDistribution``) and the image in the stack;
* ``history.csv`` — per iteration J, σ, λ, d_c, empty classes, sizes;
* ``class_gallery.png`` and ``class_sizes.png`` (and ``angular_distances.png`` when the truth
  is known, written by the caller with ``eval/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.eval.plots import class_gallery, ranked_sizes
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.mrc import write_stack
from ackmeans_torch.io.star import write_particles
from ackmeans_torch.ops.projection import relion_origin_to_shift


def pose_to_relion(angle: Tensor, shift: Tensor, pixel_size: float) -> dict[str, np.ndarray]:
    """Aligner pose → RELION columns. The aligner's ``T = S_t ∘ R_a`` moves the class average
    onto the image; RELION's in-plane ``psi`` turns its reference the other way (measured with
    the Fourier projector: psi = 40° is a = −40°, tests/test_classify_outputs.py), and its origin
    is minus the content shift (``ops.projection.relion_origin_to_shift``). psi in (−180, 180]."""
    psi = -torch.rad2deg(angle.double())
    psi = torch.remainder(psi + 180.0, 360.0) - 180.0
    psi = torch.where(psi == -180.0, torch.full_like(psi, 180.0), psi)
    origin = relion_origin_to_shift(shift.double()) * pixel_size
    return {"rlnAnglePsi": psi.cpu().numpy(), "rlnOriginXAngst": origin[:, 0].cpu().numpy(),
            "rlnOriginYAngst": origin[:, 1].cpu().numpy()}


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Per-iteration figures as a table (sizes as a JSON list per row)."""
    rows = [{**{k: v for k, v in h.items() if k != "sizes"}, "sizes": json.dumps(h["sizes"])}
            for h in history]
    return pd.DataFrame(rows)


def write_outputs(run_dir: Path, result: Classification, particles: pd.DataFrame, *,
                  pixel_size: float, title: str = "",
                  images: ImageSource | None = None) -> dict[str, Path]:
    """Write every file of the module docstring for ``result`` on ``particles`` (the input table,
    one row per image, image names already valid from ``run_dir``). ``images``: a source held in
    memory only, whose images are written as ``images.mrcs`` (the names ``particles`` gives
    them). Returns name → path."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in
             ("particles.star", "class_averages.mrcs", "classes.star", "history.csv",
              "class_gallery.png", "class_sizes.png")}
    if images is not None:
        paths["images.mrcs"] = run_dir / "images.mrcs"
        write_stack(paths["images.mrcs"], images.to_tensor().cpu(), images.pixel_size)
    averages = result.averages.detach().float().cpu()
    sizes = result.sizes.cpu().numpy()
    poses = result.poses
    table = particles.reset_index(drop=True).assign(
        rlnClassNumber=result.labels.cpu().numpy() + 1,
        rlnIsFlip=poses.mirror.cpu().numpy().astype(int),
        rlnAckMeansDistance=poses.distance.double().cpu().numpy(),
        **pose_to_relion(poses.angle, poses.shift, pixel_size),
    )
    # the pose columns now refer to the class averages' box and pixel size
    table = table.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in table])
    write_particles(paths["particles.star"], table)
    write_stack(paths["class_averages.mrcs"], averages, pixel_size)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{j + 1:06d}@class_averages.mrcs" for j in range(len(sizes))],
        "rlnClassNumber": np.arange(1, len(sizes) + 1),
        "rlnClassSize": sizes,
        "rlnClassDistribution": sizes / max(sizes.sum(), 1),
    })
    # a plain model table: no optics block, so starfile directly rather than io.star
    with atomic_output(paths["classes.star"]) as tmp:
        starfile.write({"model_classes": classes}, tmp, float_format="%.6g")
    with atomic_output(paths["history.csv"]) as tmp:
        history_frame(result.history).to_csv(tmp, index=False)
    class_gallery(averages.numpy(), sizes, paths["class_gallery.png"], title=title or None)
    ranked_sizes({title or "run": sizes}, paths["class_sizes.png"])
    return paths
