"""Particle extraction: boxes cut from micrographs at picked coordinates, as RELION's
``relion_preprocess --extract`` cuts them, written as a stack and a RELION 4 particles.star.

Conventions (this module owns them):

* A coordinate (x, y) px is the box centre in the micrograph's frame (x = column, y = row of the
  array, from 0; ``micrographs/io.py``). The box of side L covers columns ``trunc(x) − L//2`` to
  ``trunc(x) − L//2 + L − 1``, so the picked pixel lands on the box centre ``L // 2``. The fraction
  is cut off, not rounded: relion_preprocess 3.1 does so (measured: 100.6 and 100.5 both give
  column 100; tests/test_extract_relion.py).
* Order per box, as RELION: cut → invert contrast → Fourier crop (``ops/fourier.py``, pixel size ×
  L / L') → normalise as RELION's ``--norm --bg_radius`` (its default ramp removal, no dust
  removal): the least-squares plane through the background (the pixels farther than
  ``background_radius`` px from the box centre ``L // 2``) is subtracted, then the background is
  brought to mean 0 and std 1. Measured against relion_preprocess: raw and normalised boxes equal
  to float precision; after its ``--scale`` (a Fourier resize of its own) correlation ≈ 0.99.
* Edges: ``edge="skip"`` drops a box that leaves the micrograph; ``"pad"`` keeps it and repeats
  the micrograph's edge pixels outside, as relion_preprocess does (it extracts every box).
  Skipped boxes and coordinates of micrographs not given are counted in a warning, never dropped
  silently.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.coords import PickSet, read_picker, reconcile_stems
from ackmeans_torch.micrographs.io import CTF_KEYS, Micrograph, project_path
from ackmeans_torch.ops.fourier import fourier_crop

EDGES = ("skip", "pad")


class ExtractionWarning(UserWarning):
    """Picks that were not extracted (edge boxes skipped, micrographs without an image)."""


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """box_size: side L px cut from the micrograph; invert_contrast: multiply by −1 (dark
    particles → white, as RELION wants them); normalise; background_radius: px in the output box
    (None: 0.75 × L'/2, RELION's default); fourier_crop_to: output side L' px (None: L); edge:
    "skip" | "pad" (RELION's edge repetition); pixel_size: Å, for micrographs that do not know theirs (None: required from
    the micrographs)."""

    box_size: int
    invert_contrast: bool = False
    normalise: bool = True
    background_radius: float | None = None
    fourier_crop_to: int | None = None
    edge: str = "skip"
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        check_int("box_size", self.box_size, 2)
        if self.fourier_crop_to is not None:
            check_int("fourier_crop_to", self.fourier_crop_to, 2)
            if self.fourier_crop_to > self.box_size:
                raise InputError(f"fourier_crop_to={self.fourier_crop_to} must be <= box_size={self.box_size}")
        if self.edge not in EDGES:
            raise InputError(f"edge={self.edge!r} is unknown; choose one of {', '.join(EDGES)}")
        if self.background_radius is not None:
            check_number("background_radius", self.background_radius, 0.0, self.output_size / math.sqrt(2))
        if self.pixel_size is not None:
            check_number("pixel_size", self.pixel_size, 1e-6)

    @property
    def output_size(self) -> int:
        return self.fourier_crop_to or self.box_size


def box_corners(centres: np.ndarray, box: int) -> np.ndarray:
    """(n, 2) integer first column and row (x0, y0) of the L-boxes centred on ``centres (n, 2)``
    (x, y) px, RELION's rule (module docstring)."""
    return np.trunc(centres).astype(np.int64) - box // 2


def inside(corners: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """(n,) whether each box of side ``box`` at ``corners (n, 2)`` lies wholly in an (H, W) image."""
    h, w = shape
    return ((corners >= 0).all(1) & (corners[:, 0] + box <= w) & (corners[:, 1] + box <= h))


def box_windows(image: np.ndarray, centres: np.ndarray, box: int, *, pad: bool = False) -> np.ndarray:
    """(n, L, L) float32 boxes of ``image (H, W)`` centred on ``centres (n, 2)`` (x, y) px. A box
    crossing the edge repeats the edge pixels outside with ``pad`` (else it is an error)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    corners = box_corners(centres, box)
    ok = inside(corners, box, image.shape)
    if not ok.all():
        if not pad:
            raise InputError(f"{int((~ok).sum())} boxes of {box} px cross the micrograph edge; skip or pad them")
        image = np.pad(image, box, mode="edge")
        corners = corners + box
    windows = np.lib.stride_tricks.sliding_window_view(image, (box, box))
    return np.ascontiguousarray(windows[corners[:, 1], corners[:, 0]], dtype=np.float32)


def normalise_background(images: torch.Tensor, radius: float) -> torch.Tensor:
    """``images (N, L, L)`` less the least-squares plane a·x + b·y + c through their background
    (the pixels farther than ``radius`` px from the box centre ``L // 2``), then scaled to
    background mean 0 and std 1: RELION's ``--norm`` with its ramp removal. A flat background
    keeps std 1."""
    size = images.shape[-1]
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    outside = (x**2 + y**2) > radius**2
    if int(outside.sum()) < 3:
        raise InputError(f"background_radius={radius} leaves fewer than 3 background pixels in a {size} px box")
    design = torch.stack([x[outside], y[outside], torch.ones_like(x[outside])], 1)  # (P, 3)
    work = images.to(torch.float64)
    coef = torch.linalg.lstsq(design, work[:, outside].T).solution  # (3, N)
    work = work - torch.einsum("cn,cij->nij", coef, torch.stack([x, y, torch.ones_like(x)]))
    background = work[:, outside]
    mean = background.mean(1)
    std = background.std(1, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((work - mean[:, None, None]) / std[:, None, None]).to(images.dtype)


def extract_particles(micrographs: Sequence[Micrograph], picks: Mapping[str, PickSet],
                      options: ExtractOptions) -> tuple[torch.Tensor, pd.DataFrame]:
    """Cut, per micrograph (in the order given), the boxes of ``picks[micrograph.name]``.

    Returns ``stack (N, L', L') float32`` and one table row per particle: rlnMicrographName (the
    file as RELION names it from the project directory, else the name), rlnCoordinateX/Y (px),
    rlnAutopickFigureOfMerit (when the picks carry scores), the CTF columns when the micrograph
    knows them, rlnImagePixelSize, rlnMicrographPixelSize, rlnImageSize and rlnImageName
    (``NNNNNN@particles.mrcs``, rewritten by :func:`write_extracted`).
    """
    known = {m.name for m in micrographs}
    unknown = sorted(set(picks) - known)
    if unknown:
        lost = sum(len(picks[n]) for n in unknown)
        warnings.warn(f"{lost} picks of {len(unknown)} micrographs without an image were not extracted: "
                      f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}", ExtractionWarning, stacklevel=2)
    size, box = options.output_size, options.box_size
    stacks, rows, skipped = [], [], {}
    for m in micrographs:
        p = picks.get(m.name)
        if p is None or len(p) == 0:
            continue
        pixel = m.pixel_size or options.pixel_size
        if pixel is None:
            raise InputError(f"micrograph {m.name}: pixel size unknown; give pixel_size (Å)")
        image = m.load()
        corners = box_corners(p.centres, box)
        keep = inside(corners, box, image.shape) if options.edge == "skip" else np.ones(len(p), dtype=bool)
        if not keep.all():
            skipped[m.name] = int((~keep).sum())
        if not keep.any():
            continue
        boxes = torch.from_numpy(box_windows(image, p.centres[keep], box, pad=options.edge == "pad"))
        if options.invert_contrast:
            boxes = -boxes
        boxes = fourier_crop(boxes, size)
        if options.normalise:
            radius = 0.75 * size / 2 if options.background_radius is None else options.background_radius
            boxes = normalise_background(boxes, radius)
        stacks.append(boxes)
        row = {"rlnMicrographName": project_path(m.path) if m.path is not None else m.name,
               "rlnCoordinateX": p.centres[keep, 0], "rlnCoordinateY": p.centres[keep, 1]}
        if p.has_scores:
            row["rlnAutopickFigureOfMerit"] = p.scores[keep]
        row.update(m.ctf or {})
        row.update(rlnImagePixelSize=pixel * box / size, rlnMicrographPixelSize=pixel, rlnImageSize=size)
        rows.append(pd.DataFrame(row, index=range(int(keep.sum()))))
    if skipped:
        warnings.warn(f"{sum(skipped.values())} boxes of {box} px crossing the micrograph edge were skipped "
                      f"(edge=skip): " + ", ".join(f"{n}: {c}" for n, c in sorted(skipped.items())),
                      ExtractionWarning, stacklevel=2)
    if not stacks:
        return torch.zeros((0, size, size)), pd.DataFrame(columns=["rlnMicrographName", "rlnCoordinateX",
                                                                    "rlnCoordinateY", "rlnImageName"])
    particles = pd.concat(rows, ignore_index=True)
    # a micrograph without a CTF next to one with leaves NaN in its CTF columns: refuse that table
    missing = [k for k in CTF_KEYS if k in particles and particles[k].isna().any()]
    if missing:
        raise InputError("some micrographs have a CTF and some do not; give all or none (e.g. one micrographs STAR)")
    particles["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(len(particles))]
    return torch.cat(stacks), particles


def read_coordinates(source: str | os.PathLike | Sequence[str | os.PathLike], micrographs: Sequence[Micrograph], *,
                     fmt: str = "auto", box_size: float | None = None) -> dict[str, PickSet]:
    """Coordinate files of ``source`` (folder, glob or list; any format of ``io/coords.py``) keyed
    by the micrograph they belong to, paired by stem as the consensus pairs pickers (Topaz files
    split by image name; one common suffix such as ``_autopick`` reconciled). What reading skipped
    or inferred is one :class:`ExtractionWarning` per file."""
    read = read_picker(source, fmt=fmt, box_size=box_size)
    mapping, renamed = reconcile_stems({"coordinates": list(read.picks), "micrographs": [m.name for m in micrographs]})
    for line in renamed + [n for notes in read.notes.values() for n in notes]:
        warnings.warn(line, ExtractionWarning, stacklevel=2)
    return {mapping["coordinates"][s]: p for s, p in read.picks.items()}


def write_extracted(out_dir: str | os.PathLike, stack: torch.Tensor, particles: pd.DataFrame, *,
                    stack_name: str = "particles.mrcs", star_name: str = "particles.star") -> Path:
    """Write ``stack (N, L, L)`` as ``out_dir/stack_name`` and ``particles`` as a RELION 4
    ``out_dir/star_name`` (optics table with pixel size and image size), both atomically; image
    names ``NNNNNN@<stack>`` from the RELION project directory (the current one). Returns the STAR
    path."""
    from ackmeans_torch.io.mrc import write_stack
    from ackmeans_torch.io.star import write_particles

    if len(stack) != len(particles):
        raise InputError(f"stack has {len(stack)} images but the table {len(particles)} rows")
    if len(stack) == 0:
        raise InputError("no particles to write: no pick gave a box inside its micrograph")
    out = Path(out_dir)
    stack_path = out / stack_name
    write_stack(stack_path, stack, float(particles["rlnImagePixelSize"].iloc[0]))
    name = project_path(stack_path)
    star = out / star_name
    write_particles(star, particles.assign(rlnImageName=[f"{i + 1:06d}@{name}" for i in range(len(particles))]))
    return star
