"""Precision, recall and F1 of a pick set against a reference set, two ways.

* ``pixel``: REPIC's definition (paper, Online Methods "Algorithm evaluation"; its
  ``score_detections.py``): paint every box of each set into a binary micrograph mask (corners
  rounded to whole pixels); TP = pixels in both masks, FP = in the picks only, FN = in the
  reference only; counts are summed over micrographs before the ratios (Eqs. 4-5). Boxes are
  clipped to the micrograph (REPIC's numpy slicing would wrap a negative corner around).
* ``match``: one-to-one matching of centres within ``radius`` px (default half the reference
  particle diameter). Per micrograph, the matching maximises the number of matched pairs and, among
  those, minimises the summed distance (``scipy.optimize.linear_sum_assignment`` on each connected
  component of the within-radius graph); TP = matched pairs.

``flip_y`` maps the reference's y to ``height - y`` for references whose y axis runs the other way
(the EMPIAR-10017 expert set: ``y_ref = 4096 - y_box_centre``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet


@dataclass(frozen=True)
class Scores:
    """Counts and ratios. tp/fp/fn: pixels (``pixel``) or particles (``match``)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Scores) -> Scores:
        return Scores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def flip_reference_y(ref: PickSet, height: float) -> PickSet:
    """The reference with y -> ``height - y`` (centres, px)."""
    c = ref.centres.copy()
    c[:, 1] = height - c[:, 1]
    return PickSet(c, ref.box_size, ref.scores, ref.has_scores)


def _mask(picks: PickSet, shape: tuple[int, int], box_size: float | None) -> np.ndarray:
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    size = picks.box_size if box_size is None else np.full(len(picks), float(box_size))
    corner = np.round(picks.centres - size[:, None] / 2).astype(np.int64)
    side = np.round(size).astype(np.int64)
    for (x, y), s in zip(corner, side):
        mask[max(y, 0):max(min(y + s, h), 0), max(x, 0):max(min(x + s, w), 0)] = True
    return mask


def pixel_scores(picks: PickSet, ref: PickSet, *, shape: tuple[int, int] | None = None,
                 box_size: float | None = None, ref_box_size: float | None = None) -> Scores:
    """REPIC's pixel-mask counts for one micrograph. shape: (height, width) px; default the
    extent of all boxes (as REPIC). box_size / ref_box_size: px, replace the sets' own sides."""
    if shape is None:
        ext = [p.centres + (p.box_size if b is None else np.full(len(p), b))[:, None] / 2
               for p, b in ((picks, box_size), (ref, ref_box_size)) if len(p)]
        top = np.concatenate(ext).max(0) if ext else np.ones(2)
        shape = (int(round(top[1])), int(round(top[0])))
    a, b = _mask(picks, shape, box_size), _mask(ref, shape, ref_box_size)
    tp = int(np.count_nonzero(a & b))
    return Scores(tp, int(np.count_nonzero(a)) - tp, int(np.count_nonzero(b)) - tp)


def match_pairs(picks: np.ndarray, ref: np.ndarray, radius: float) -> np.ndarray:
    """Optimal one-to-one matching of centres within ``radius`` px.

    picks: (n, 2), ref: (r, 2) -> (P, 2) int index pairs (pick, ref). Maximum number of pairs,
    then minimum total distance, solved per connected component of the within-radius graph.
    """
    if not radius > 0:
        raise InputError(f"radius={radius} px must be > 0")
    if len(picks) == 0 or len(ref) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    d = cKDTree(picks).sparse_distance_matrix(cKDTree(ref), radius, output_type="coo_matrix")
    n, r = len(picks), len(ref)
    if d.nnz == 0:
        return np.zeros((0, 2), dtype=np.int64)
    adj = sp.coo_matrix((np.ones(d.nnz), (d.row, n + d.col)), shape=(n + r, n + r))
    _, label = connected_components(adj, directed=False)
    out = []
    # Exact zero distances are stored implicitly by the sparse matrix; recompute distances per pair.
    dist = np.linalg.norm(picks[d.row] - ref[d.col], axis=1)
    comp = label[d.row]
    order = np.argsort(comp, kind="stable")
    splits = np.flatnonzero(np.diff(comp[order])) + 1
    for part in np.split(order, splits):
        rows, cols = np.unique(d.row[part], return_inverse=True)
        refs, rcols = np.unique(d.col[part], return_inverse=True)
        # Non-edges cost more than any complete set of edges, so the count of pairs comes first.
        big = radius * (len(part) + 1)
        cost = np.full((len(rows), len(refs)), big)
        cost[cols, rcols] = dist[part]
        i, j = linear_sum_assignment(cost)
        ok = cost[i, j] < big
        out.append(np.stack([rows[i[ok]], refs[j[ok]]], 1))
    return np.concatenate(out).astype(np.int64)


def match_scores(picks: PickSet, ref: PickSet, *, radius: float) -> Scores:
    """Centre-matching counts for one micrograph (see :func:`match_pairs`)."""
    tp = len(match_pairs(picks.centres, ref.centres, radius))
    return Scores(tp, len(picks) - tp, len(ref) - tp)


METHODS = ("pixel", "match")


def evaluate_picks(picks: dict[str, PickSet], reference: dict[str, PickSet], *,
                   methods: tuple[str, ...] = METHODS, radius: float | None = None,
                   shape: tuple[int, int] | None = None, box_size: float | None = None,
                   reference_box_size: float | None = None, flip_y: float | None = None) -> list[dict]:
    """Score micrographs present in ``reference`` (paired by exact stem; a micrograph without picks
    counts as all false negatives). Returns one row per micrograph and method plus a ``TOTAL`` row
    per method (counts summed before the ratios, as REPIC). radius: px for ``match``, default half
    the reference's median box side (its particle diameter). flip_y: micrograph height for
    references with a flipped y axis. shape: (height, width) px for ``pixel``.
    """
    for m in methods:
        if m not in METHODS:
            raise InputError(f"method {m!r} is unknown; choose from {', '.join(METHODS)}")
    if not reference:
        raise InputError("the reference set has no micrographs")
    rows, totals = [], {m: Scores(0, 0, 0) for m in methods}
    for stem in sorted(reference):
        ref = reference[stem]
        if flip_y is not None:
            ref = flip_reference_y(ref, flip_y)
        mine = picks.get(stem, PickSet.empty())
        for m in methods:
            if m == "pixel":
                s = pixel_scores(mine, ref, shape=shape, box_size=box_size, ref_box_size=reference_box_size)
            else:
                r = radius if radius is not None else _half_diameter(ref, reference_box_size)
                s = match_scores(mine, ref, radius=r)
            totals[m] = totals[m] + s
            rows.append(_row(stem, m, s, len(mine)))
    n_total = sum(len(picks.get(s, ())) for s in reference)
    return rows + [_row("TOTAL", m, totals[m], n_total) for m in methods]


def _half_diameter(ref: PickSet, reference_box_size: float | None) -> float:
    if reference_box_size is not None:
        return float(reference_box_size) / 2
    return float(np.median(ref.box_size)) / 2 if len(ref) else 1.0


def _row(stem: str, method: str, s: Scores, n: int) -> dict:
    return {"micrograph": stem, "method": method, "n_picks": n, "tp": s.tp, "fp": s.fp, "fn": s.fn,
            "precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4)}
