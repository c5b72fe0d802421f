"""The picker contract and the pieces every built-in picker shares.

A picker maps one micrograph to boxes with scores::

    picks = picker.pick(micrograph, pixel_size=1.0, ctf=None)   # -> io.coords.PickSet

``micrograph``: ``(H, W)`` array (numpy or torch), rows = y, columns = x as MRC stores them;
coordinates in the returned :class:`~ackmeans_torch.io.coords.PickSet` are box centres in pixels
of that array (x = column, y = row), every box ``box_size`` px, scores on the picker's own scale
(higher = more particle-like; consensus makes scales comparable). ``ctf``: RELION keys
(``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle``, ``rlnVoltage``,
``rlnSphericalAberration``, ``rlnAmplitudeContrast``) or None. :class:`TrainablePicker` adds
``fit(micrographs, boxes, *, val=None)``, which returns the picker.

:meth:`Picker.pick` validates the micrograph once and calls the subclass's ``_pick`` with a
float32 tensor normalised to zero mean and unit variance. Pickers work on a binned copy so that
the particle is about :data:`WORKING_DIAMETER` px across: the filters and the network then have
the same size whatever the detector pixel, and a 4k micrograph costs a few milliseconds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.io.coords import PickSet

#: particle diameter (px) on the binned working copy of a micrograph
WORKING_DIAMETER = 16
#: contrast of particles on the input micrographs: dark (raw cryo-EM) or bright (inverted)
CONTRASTS = ("dark", "bright")


class Picker(ABC):
    """A particle picker. particle_diameter: px on the input micrograph. box_size: px of the
    returned boxes (default 1.5 x the diameter). threshold: lowest score kept. max_picks: most
    particles per micrograph. min_distance: px between two picks (default 0.8 x diameter).
    contrast: ``dark`` particles (raw micrographs) or ``bright``."""

    def __init__(self, *, particle_diameter: float, box_size: float | None = None,
                 threshold: float = -math.inf, max_picks: int = 1000, min_distance: float | None = None,
                 contrast: str = "dark") -> None:
        check_number("particle_diameter", particle_diameter, 4)
        if box_size is not None:
            check_number("box_size", box_size, 1)
        if min_distance is not None:
            check_number("min_distance", min_distance, 1)
        check_int("max_picks", max_picks, 1)
        if contrast not in CONTRASTS:
            raise InputError(f"contrast={contrast!r} must be one of {', '.join(CONTRASTS)}")
        self.particle_diameter = float(particle_diameter)
        self.box_size = float(box_size) if box_size is not None else 1.5 * self.particle_diameter
        self.threshold = float(threshold)
        self.max_picks = max_picks
        self.min_distance = float(min_distance) if min_distance is not None else 0.8 * self.particle_diameter
        self.contrast = contrast

    @property
    def bin(self) -> int:
        """Integer binning of the working copy (the particle is ~WORKING_DIAMETER px there)."""
        return max(1, int(round(self.particle_diameter / WORKING_DIAMETER)))

    def pick(self, micrograph, *, pixel_size: float | None = None, ctf: Mapping | None = None) -> PickSet:
        """Boxes with scores on ``micrograph (H, W)`` (module docstring)."""
        image = working_image(micrograph, self.bin, min_size=2 * self.particle_diameter)
        return self._pick(image, pixel_size=pixel_size, ctf=ctf)

    @abstractmethod
    def _pick(self, image: torch.Tensor, *, pixel_size: float | None, ctf: Mapping | None) -> PickSet:
        """Picks on the binned, normalised working copy ``image (h, w)``."""

    def peaks(self, score_map: torch.Tensor) -> PickSet:
        """The picks of a working-copy ``score_map (h, w)``: local maxima at least
        ``min_distance`` apart, above ``threshold``, a particle radius inside the micrograph,
        the ``max_picks`` best; centres in input-micrograph px."""
        xy, scores = find_peaks(score_map, radius=self.min_distance / self.bin,
                                border=0.5 * self.particle_diameter / self.bin,
                                threshold=self.threshold, max_picks=self.max_picks)
        centres = (xy + 0.5) * self.bin - 0.5
        return PickSet(centres, np.full(len(xy), self.box_size), scores)


class TrainablePicker(Picker):
    """A picker that learns from labelled boxes."""

    @abstractmethod
    def fit(self, micrographs: Sequence, boxes: Sequence[PickSet], *,
            val: tuple[Sequence, Sequence[PickSet]] | None = None) -> TrainablePicker:
        """Train on ``micrographs`` (each ``(H, W)``) with the particle ``boxes`` of each (only
        positives: every unlabelled pixel may still hold a particle); ``val`` the same pair for
        validation. Returns self."""


def working_image(micrograph, bin: int, *, min_size: float = 0.0) -> torch.Tensor:
    """``micrograph (H, W)`` binned ``bin`` x ``bin`` (mean of each block; a partial block at
    the edge is dropped), as float32 with zero mean and unit variance; H and W must be at least
    ``min_size`` px (and 4 bins)."""
    # a copy: memory-mapped micrographs are read-only, and the working copy is new data anyway
    image = micrograph if isinstance(micrograph, torch.Tensor) else torch.from_numpy(np.array(micrograph))
    if image.ndim != 2:
        raise InputError(f"micrograph must be a 2D (H, W) array, got shape {tuple(image.shape)}")
    if min(image.shape) < max(min_size, 4 * bin):
        raise InputError(f"micrograph {tuple(image.shape)} is smaller than two particle diameters "
                         f"({max(min_size, 4 * bin):g} px); check particle_diameter")
    image = image.to(torch.float32)
    if not bool(torch.isfinite(image).all()):
        raise InputError("micrograph holds NaN or infinite pixels; fix the file")
    if bin > 1:
        image = F.avg_pool2d(image[None, None], bin)[0, 0]
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def find_peaks(score_map: torch.Tensor, *, radius: float, border: float, threshold: float,
               max_picks: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression on ``score_map (h, w)``: pixels that are the maximum of their
    disc of ``radius`` px, at least ``border`` px from the edge, with score >= ``threshold``,
    then greedily in score order none within ``radius`` of a better one; the ``max_picks``
    highest. Returns (n, 2) float64 (x, y) in map px and (n,) scores, best
    first."""
    r = max(1, int(math.ceil(radius)))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disc = (xx**2 + yy**2 <= radius**2).to(score_map)
    # dilation by a disc as a max over shifted copies: unfold would need (2r+1)² copies in memory
    padded = F.pad(score_map[None, None], (r, r, r, r), value=-math.inf)[0, 0]
    h, w = score_map.shape
    local_max = torch.full_like(score_map, -math.inf)
    for dy, dx in zip(*torch.nonzero(disc, as_tuple=True)):
        local_max = torch.maximum(local_max, padded[dy:dy + h, dx:dx + w])
    keep = (score_map >= local_max) & (score_map >= threshold) & torch.isfinite(score_map)
    b = int(math.ceil(border))
    keep[:b], keep[h - b:], keep[:, :b], keep[:, w - b:] = False, False, False, False
    y, x = torch.nonzero(keep, as_tuple=True)
    scores = score_map[y, x]
    order = torch.argsort(scores, descending=True, stable=True)
    # a plateau (equal neighbours) passes the dilation test at every pixel: greedy suppression
    # in score order keeps one pick per disc
    taken = torch.zeros((h + 2 * r, w + 2 * r), dtype=torch.bool)
    chosen = []
    block = disc.bool()
    for i in order.tolist():
        yi, xi = int(y[i]), int(x[i])
        if taken[yi + r, xi + r]:
            continue
        chosen.append(i)
        if len(chosen) == max_picks:
            break
        taken[yi:yi + 2 * r + 1, xi:xi + 2 * r + 1] |= block
    idx = torch.as_tensor(chosen, dtype=torch.long)
    xy = torch.stack([x[idx], y[idx]], 1).double().cpu().numpy()
    return xy.reshape(-1, 2), scores[idx].double().cpu().numpy()


def spectrum_filter(image: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """``image (h, w)`` filtered by the real transfer function ``transfer (h, w//2+1)`` given on
    the ``rfft2`` grid (uncentred, as :func:`rfft_frequencies`)."""
    return torch.fft.irfft2(torch.fft.rfft2(image) * transfer, s=image.shape)


def rfft_frequencies(shape: tuple[int, int], *, device=None) -> torch.Tensor:
    """Squared spatial frequency ``k² (h, w//2+1)`` in cycles²/px² on the ``rfft2`` grid of a
    non-square ``shape`` (``ops/fourier.py`` grids are square and centred)."""
    ky = torch.fft.fftfreq(shape[0], device=device)
    kx = torch.fft.rfftfreq(shape[1], device=device)
    return ky[:, None] ** 2 + kx[None, :] ** 2


def label_map(shape: tuple[int, int], centres: np.ndarray, radius: float) -> torch.Tensor:
    """``(h, w)`` float32 map with 1 within ``radius`` px of any of ``centres (n, 2)`` (x, y
    in map px), else 0: the positive pixels of labelled particles."""
    out = torch.zeros(shape)
    r = int(math.ceil(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    inside = (xx**2 + yy**2) <= radius**2
    dy, dx = yy[inside], xx[inside]
    c = torch.as_tensor(np.round(centres), dtype=torch.long).reshape(-1, 2)
    x = (c[:, :1] + dx[None]).reshape(-1)
    y = (c[:, 1:] + dy[None]).reshape(-1)
    ok = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
    out[y[ok], x[ok]] = 1.0
    return out
