"""One-shot REPIC consensus picking as a library call (REPIC paper, "REPIC algorithm" and Online
Methods "REPIC"): read k pickers' coordinate files, pair micrographs by exact stem, build the
overlap graph of all micrographs as one batch (:mod:`.graph`), enumerate cliques (:mod:`.cliques`),
select disjoint cliques by ILP (:mod:`.ilp`), and return per-micrograph consensus particles.

Choices (and ``repic_compat=True``, which reproduces REPIC 0.2.1):

* Scores (``score_norm``). ``"rank"`` (default): each picker's scores over the whole dataset are
  replaced by their quantile ``rank / n`` in (0, 1]. Pickers report confidences on unrelated scales
  (crYOLO and DeepPicker probabilities, Topaz log-likelihood ratios); the clique weight takes a
  median over members of different pickers, which is only meaningful on a common scale, and
  quantiles are that scale for any monotone score. One transform per picker for the whole dataset
  also keeps micrographs comparable. ``"sigmoid"`` (REPIC): per *file*, if any score lies outside
  [0, 1] all scores of that file go through the logistic function, otherwise they are used raw, so
  one picker's micrographs can end up on different scales, and a picker whose scores happen to lie
  in [0, 1] is used raw next to sigmoid-mapped ones. ``"none"``: raw scores, which must lie in
  [0, 1].
* Consensus box (``consensus_box``). ``"median"`` (default): the coordinate-wise median of the
  members' centres and sides (for two members their mean). With three pickers it ignores the worst
  picker on each axis, so one badly centring picker does not drag the box. Measured on
  EMPIAR-10017 against the expert set (matched centres within 54 px), 3-of-3: mean distance to the
  reference 7.6 px (median), 7.7 px (representative), 10.5 px (mean: DeepPicker, 15.6 px alone,
  pulls it). ``"representative"`` (REPIC): the member with the largest summed JI to the other
  members (ties: the lowest picker index; REPIC's tie order is networkx's node order). ``"mean"``.
* ``min_pickers`` m < k: cliques on ≥ m pickers, weighted as in :mod:`.cliques`.
* ``repic_compat``: strict ``JI > threshold``, one ``box_size`` for every box, sigmoid scores,
  representative box, m = k; output confidence = median member score as REPIC writes it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet, drop_outside, read_picker, reconcile_stems
from ackmeans_torch.picking.cliques import Cliques, find_cliques, member_ji
from ackmeans_torch.picking.graph import build_pick_graph, undirected_edges
from ackmeans_torch.picking.ilp import select_cliques

SCORE_NORMS = ("rank", "sigmoid", "none")
CONSENSUS_BOXES = ("representative", "median", "mean")


@dataclass
class MicrographConsensus:
    """Consensus of one micrograph.

    picks: consensus particles (centres px, box side px, confidence), sorted by confidence
    descending. n_pickers: (n,) pickers agreeing on each particle. weight: (n,) clique weight.
    members: (n, k) index of each member box in that picker's input :class:`PickSet` of this
    micrograph, -1 where the picker has no member. n_boxes: boxes per picker (None: no file).
    status: ``"optimal"`` (every ILP component proven optimal or trivial), ``"fallback"`` (some
    component hit the time limit; ``gap`` is the largest relative gap), ``"no cliques"`` or
    ``"skipped"`` (``error`` says why).
    """

    stem: str
    picks: PickSet
    n_pickers: np.ndarray
    weight: np.ndarray
    members: np.ndarray
    n_boxes: dict[str, int | None]
    n_cliques: int = 0
    objective: float = 0.0
    status: str = "optimal"
    gap: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    ilp_components: int = 0

    @classmethod
    def skipped(cls, stem: str, k: int, n_boxes: dict[str, int | None], error: str) -> MicrographConsensus:
        return cls(stem, PickSet.empty(), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, k), dtype=np.int64),
                   n_boxes, status="skipped", error=error)


class ConsensusInputWarning(UserWarning):
    """Input the consensus could not use in full: a picker without a file for some micrographs,
    boxes outside their micrograph, a header line skipped or a table read without one."""


@dataclass
class PickerData:
    """Picks of k pickers on a set of micrographs: ``picks[stem][picker]`` (None: no file),
    ``errors[stem]``, a one-line message for micrographs whose files could not be read, and
    ``notes[stem]``, what reading skipped or inferred there, with counts (``picker: note``)."""

    pickers: list[str]
    picks: dict[str, dict[str, PickSet | None]]
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def load_pickers(pickers: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]], *,
                 formats: Mapping[str, str] | str = "auto", box_size: float | None = None,
                 skip_bad: bool = True, shapes: Mapping[str, tuple[int, int]] | None = None) -> PickerData:
    """Read every picker's files and pair micrographs by stem (``io/coords.py``: exact stems,
    Topaz files split by image name, one common file-name suffix of a picker reconciled).

    pickers: name -> folder, glob or list of files. formats: one format for all, or per picker
    name. box_size: px, replaces file sizes (needed for centre-only formats). skip_bad: a file
    that cannot be read marks its micrograph as skipped (reported in ``errors``) instead of
    raising. shapes: micrograph stem -> (H, W) px; boxes centred outside are dropped and noted.
    Everything not used in full is noted per micrograph and summed per picker in one
    :class:`ConsensusInputWarning` each.
    """
    if len(pickers) < 2:
        raise InputError(f"consensus needs at least 2 pickers; got {len(pickers)} ({', '.join(pickers)})")
    fmt = (lambda name: formats) if isinstance(formats, str) else (lambda name: formats.get(name, "auto"))
    read = {name: read_picker(src, fmt=fmt(name), box_size=box_size, skip_bad=skip_bad)
            for name, src in pickers.items()}
    for name, r in read.items():
        if not r.picks and not r.errors:
            raise InputError(f"picker {name!r}: no coordinate files found in {pickers[name]}")
    mapping, renamed = reconcile_stems({name: [*r.picks, *r.errors] for name, r in read.items()})
    data = PickerData(list(pickers), {})
    found = {name: {mapping[name][s]: p for s, p in r.picks.items()} for name, r in read.items()}
    for name, r in read.items():
        for s, e in r.errors.items():
            data.errors.setdefault(mapping[name][s], e)
        for s, lines in r.notes.items():
            data.notes.setdefault(mapping[name][s], []).extend(f"{name}: {n}" for n in lines)
    stems = sorted(set().union(*(set(f) for f in found.values()), data.errors))
    summary: dict[str, dict[str, int]] = {name: {"missing": 0, "outside": 0, "noted": 0} for name in pickers}
    for stem in stems:
        row: dict[str, PickSet | None] = {}
        for name in pickers:
            picks = found[name].get(stem)
            if picks is None:
                if stem not in data.errors:
                    summary[name]["missing"] += 1
                    data.notes.setdefault(stem, []).append(f"{name}: no file")
            elif shapes is not None and stem in shapes:
                picks, outside = drop_outside(picks, shapes[stem])
                if outside:
                    summary[name]["outside"] += outside
                    h, w = shapes[stem]
                    data.notes.setdefault(stem, []).append(
                        f"{name}: {outside} boxes centred outside the {w}x{h} px micrograph dropped")
            row[name] = picks
        data.picks[stem] = row
    for name, r in read.items():
        summary[name]["noted"] = sum(len(v) for v in r.notes.values())
    for line in renamed:
        warnings.warn(line, ConsensusInputWarning, stacklevel=2)
    for name, own in found.items():
        others = set().union(*(set(f) for n, f in found.items() if n != name))
        if own and others and not set(own) & others:
            warnings.warn(f"picker {name!r} shares no micrograph with the other pickers (its files e.g. "
                          f"{', '.join(sorted(own)[:3])}; theirs e.g. {', '.join(sorted(others)[:3])}); name its files "
                          "by micrograph stem", ConsensusInputWarning, stacklevel=2)
    for name, c in summary.items():
        parts = [f"no file for {c['missing']} of {len(stems)} micrographs" if c["missing"] else "",
                 f"{c['outside']} boxes outside their micrograph dropped" if c["outside"] else "",
                 f"{c['noted']} notes on reading (header lines skipped or inferred)" if c["noted"] else ""]
        if any(parts):
            warnings.warn(f"picker {name!r}: " + "; ".join(p for p in parts if p) + " (see the notes column of "
                          "the summary)", ConsensusInputWarning, stacklevel=2)
    return data


def normalise_scores(data: PickerData, method: str) -> dict[str, dict[str, np.ndarray]]:
    """Scores in [0, 1] per micrograph and picker (see the module docstring for the methods)."""
    if method not in SCORE_NORMS:
        raise InputError(f"score_norm={method!r} is unknown; choose one of {', '.join(SCORE_NORMS)}")
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in data.picks}
    for name in data.pickers:
        sets = [(s, row[name]) for s, row in data.picks.items() if s not in data.errors and row.get(name) is not None]
        if method == "rank":
            allscores = np.concatenate([p.scores for _, p in sets]) if sets else np.zeros(0)
            # pandas' rank is scipy.stats.rankdata(method="average"); importing scipy.stats
            # for this one function cost up to seconds of the command's start-up (measured)
            q = pd.Series(allscores).rank(method="average").to_numpy() / max(len(allscores), 1)
            for (s, _), part in zip(sets, np.split(q, np.cumsum([len(p) for _, p in sets])[:-1])):
                out[s][name] = part
        for s, p in sets if method != "rank" else ():
            sc = p.scores
            if method == "sigmoid" and len(sc) and (sc.min() < 0 or sc.max() > 1):
                sc = 1.0 / (1.0 + np.exp(-sc))
            elif method == "none" and len(sc) and (sc.min() < 0 or sc.max() > 1):
                raise InputError(f"picker {name!r}, micrograph {s}: scores outside [0, 1] with score_norm=none; "
                                 "use score_norm=rank or sigmoid")
            out[s][name] = sc
    return out


def run_consensus(data: PickerData, *, threshold: float = 0.3, min_pickers: int | None = None,
                  box_size: float | None = None, score_norm: str = "rank", consensus_box: str = "median",
                  repic_compat: bool = False, time_limit: float = 10.0, top: int | None = None,
                  device: str | torch.device = "cpu") -> list[MicrographConsensus]:
    """Consensus particles of every micrograph in ``data`` (one batch), in stem order.

    threshold: JI for an edge. min_pickers: m of k (default k). box_size: px, one side for every
    box (else each box keeps its own). time_limit: s per ILP component. top: keep the N most
    confident particles per micrograph. device: where graph and cliques are computed.
    """
    k = len(data.pickers)
    if repic_compat:
        if box_size is None:
            raise InputError("repic_compat=true needs box_size (REPIC uses one box size for every picker)")
        score_norm, consensus_box, min_pickers = "sigmoid", "representative", k
    if consensus_box not in CONSENSUS_BOXES:
        raise InputError(f"consensus_box={consensus_box!r} is unknown; choose one of {', '.join(CONSENSUS_BOXES)}")
    if top is not None and top < 1:
        raise InputError(f"top={top} must be >= 1 (or null for all particles)")
    m = k if min_pickers is None else int(min_pickers)
    if not 2 <= m <= k:
        raise InputError(f"min_pickers={m} must lie in [2, {k}] (the number of pickers)")
    t0 = time.perf_counter()
    scores = normalise_scores(data, score_norm)
    stems = [s for s in data.picks if s not in data.errors]
    if not stems:
        first = next(iter(data.errors.values()), "no micrographs")
        raise InputError(f"no micrograph could be read; first problem: {first}")
    # The union of all micrographs: node arrays in (micrograph, picker, box) order.
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("xy", "box", "score", "picker", "batch", "local")}
    for g, s in enumerate(stems):
        for p, name in enumerate(data.pickers):
            ps = data.picks[s].get(name)
            if ps is None or len(ps) == 0:
                continue
            n = len(ps)
            cols["xy"].append(ps.centres)
            cols["box"].append(np.full(n, float(box_size)) if box_size is not None else ps.box_size)
            cols["score"].append(scores[s][name])
            cols["picker"].append(np.full(n, p))
            cols["batch"].append(np.full(n, g))
            cols["local"].append(np.arange(n))
    cat = {c: (np.concatenate(v) if v else np.zeros((0, 2) if c == "xy" else 0)) for c, v in cols.items()}
    dev = torch.device(device)
    graph = build_pick_graph(torch.as_tensor(cat["xy"], dtype=torch.float64, device=dev),
                             torch.as_tensor(cat["box"], dtype=torch.float64, device=dev),
                             torch.as_tensor(cat["score"], dtype=torch.float64, device=dev),
                             torch.as_tensor(cat["picker"], dtype=torch.long, device=dev),
                             torch.as_tensor(cat["batch"], dtype=torch.long, device=dev),
                             n_graphs=len(stems), threshold=threshold, strict=repic_compat)
    edges, ji = undirected_edges(graph)
    cliques = find_cliques(edges, ji, graph.picker, graph.score, graph.batch, n_pickers=k, min_pickers=m)
    members = cliques.members.cpu().numpy()
    weight = cliques.weight.cpu().numpy()
    if repic_compat:
        # REPIC stores clique weights in float32 before the ILP.
        weight = weight.astype(np.float32).astype(np.float64)
    sel = select_cliques(members, weight, n_nodes=len(cat["batch"]), time_limit=time_limit)
    chosen = np.flatnonzero(sel.selected)
    gid = cliques.graph_id.cpu().numpy()
    centres, sides = _consensus_boxes(cliques, chosen, cat, consensus_box)
    results = []
    n_all = np.bincount(gid, minlength=len(stems))
    comp_graph = np.zeros(sel.component.max() + 1 if len(sel.component) else 0, dtype=np.int64)
    comp_graph[sel.component] = gid
    solved = np.bincount(comp_graph[list(sel.status)], minlength=len(stems))
    fallback = [c for c, st in sel.status.items() if st.startswith("fallback")]
    worst_gap = np.zeros(len(stems))
    has_fallback = np.zeros(len(stems), dtype=bool)
    for c in fallback:
        g = comp_graph[c]
        has_fallback[g] = True
        worst_gap[g] = max(worst_gap[g], sel.gap.get(c, 0.0))
    confidence, size = cliques.confidence.cpu().numpy(), cliques.size.cpu().numpy()
    by_graph = np.split(chosen, np.cumsum(np.bincount(gid[chosen], minlength=len(stems)))[:-1])
    start = 0
    for g, (s, idx) in enumerate(zip(stems, by_graph)):
        rows = np.arange(start, start + len(idx))  # positions in `chosen` (sorted by micrograph)
        start += len(idx)
        conf = confidence[idx]
        order = np.lexsort((np.arange(len(idx)), -conf))
        if top is not None:
            order = order[:top]
        mem = members[idx][order]
        local = np.where(mem >= 0, cat["local"][mem.clip(min=0)], -1)
        status = "no cliques" if n_all[g] == 0 else "fallback" if has_fallback[g] else "optimal"
        results.append(MicrographConsensus(
            stem=s, picks=PickSet(centres[rows][order], sides[rows][order], conf[order]),
            n_pickers=size[idx][order], weight=weight[idx][order], members=local,
            n_boxes=_counts(data, s), n_cliques=int(n_all[g]), objective=float(weight[idx].sum()), status=status,
            gap=float(worst_gap[g]), ilp_components=int(solved[g])))
    # Batch time (graph, cliques, ILP) shared out by micrograph size: the batch is one computation.
    total = time.perf_counter() - t0
    sizes = np.bincount(cat["batch"].astype(np.int64), minlength=len(stems)) if len(stems) else np.zeros(0)
    for r, n in zip(results, sizes):
        r.seconds = total * n / max(sizes.sum(), 1)
    results += [MicrographConsensus.skipped(s, k, _counts(data, s), e) for s, e in data.errors.items()]
    return sorted(results, key=lambda r: r.stem)


def _counts(data: PickerData, stem: str) -> dict[str, int | None]:
    return {n: (None if data.picks[stem].get(n) is None else len(data.picks[stem][n])) for n in data.pickers}


def _consensus_boxes(cliques: Cliques, chosen: np.ndarray, cat: dict[str, np.ndarray],
                     how: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) centres and (n,) sides of the chosen cliques' consensus boxes."""
    mem = cliques.members.cpu().numpy()[chosen]
    present = mem >= 0
    safe = mem.clip(min=0)
    xy, box = cat["xy"][safe], cat["box"][safe]
    if how == "mean":
        cnt = present.sum(1, keepdims=True)
        return (xy * present[..., None]).sum(1) / cnt, (box * present).sum(1) / cnt[:, 0]
    if how == "median":
        xy = np.where(present[..., None], xy, np.nan)
        return np.nanmedian(xy, axis=1), np.nanmedian(np.where(present, box, np.nan), axis=1)
    degree = member_ji(cliques).cpu().numpy()[chosen]
    rep = np.argmax(np.nan_to_num(degree, nan=-math.inf), axis=1)  # first max = lowest picker index
    rows = np.arange(len(chosen))
    return xy[rows, rep], box[rows, rep]
