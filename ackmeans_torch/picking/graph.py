"""The REPIC overlap graph: one vertex per picked box, an edge between boxes of different pickers
whose Jaccard index (JI, area of overlap / area of union) reaches a threshold (REPIC paper, Online
Methods "Graph building"; REPIC uses JI ≥ 0.3, its code 0.2.1 tests ``JI > 0.3``).

Boxes are axis-aligned squares given by centre (x, y) and side ``s`` in pixels. Neighbour candidates
come from an exact bound on the centre distance (:func:`jaccard_cutoff`) and a cell-list (grid
hashing) search (:func:`radius_pairs`): O(n + pairs) work in torch on the device of the inputs.
torch-geometric's own ``radius``/``radius_graph`` would do the search but need ``torch-cluster`` or
``pyg-lib``, which are not installed (not installable) here, so the project owns this search.
A batch of micrographs is searched at once as one disjoint union (the ``batch`` vector keeps
micrographs apart) and returned as a torch-geometric :class:`~torch_geometric.data.Batch`.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch, Data

from ackmeans_torch.errors import InputError


def jaccard_cutoff(threshold: float, box_min: float, box_max: float) -> float:
    """Largest L∞ centre distance at which two squares with sides in ``[box_min, box_max]`` can
    still have JI ≥ ``threshold``.

    For sides a ≤ b the overlap is ``I = ox·oy`` with ``oy ≤ a`` and ``ox ≤ (a + b)/2 − |dx|``, and
    JI ≥ t needs ``I ≥ t(a² + b²)/(1 + t)``, so ``|dx|, |dy| ≤ (a + b)/2 − t(a² + b²)/((1 + t)a)``.
    That bound is at most ``f(a) = (a + b_max)/2 − t(a² + b_max²)/((1 + t)·b_max)`` (replace a by
    b_max in the denominator and b by b_max), a concave parabola in a maximised over
    ``[box_min, box_max]`` here. Equal sides s give ``s(1 − t)/(1 + t)`` (0.538·s at t = 0.3).
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold={threshold} must lie in [0, 1] (a Jaccard index)")
    if not 0.0 < box_min <= box_max:
        raise InputError(f"box sizes [{box_min}, {box_max}] px must be > 0")
    t, b = threshold, box_max
    if t == 0.0:
        return float(b)
    a = min(max((1 + t) * b / (4 * t), box_min), box_max)
    return float((a + b) / 2 - t * (a * a + b * b) / ((1 + t) * b))


def box_jaccard(centre_a: torch.Tensor, size_a: torch.Tensor, centre_b: torch.Tensor,
                size_b: torch.Tensor) -> torch.Tensor:
    """JI of axis-aligned squares, elementwise. centre_*: (P, 2) px; size_*: (P,) px -> (P,)
    in the dtype of the inputs (callers pass float64 so thresholds at equality are exact)."""
    ha, hb = size_a[:, None] / 2, size_b[:, None] / 2
    lo = torch.maximum(centre_a - ha, centre_b - hb)
    hi = torch.minimum(centre_a + ha, centre_b + hb)
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    return inter / (size_a * size_a + size_b * size_b - inter)


def radius_pairs(pos: torch.Tensor, r: float, batch: torch.Tensor | None = None) -> torch.Tensor:
    """All pairs ``i < j`` in the same batch element with L∞ distance ``max(|dx|, |dy|) ≤ r``.

    pos: (n, 2) float; batch: (n,) long (micrograph index, any order) or None.
    Returns (2, P) long. Cell list: points are hashed into square cells of side ``r``; a point's
    partners lie in its own or the 8 neighbouring cells, found by binary search in the sorted cell
    keys, so the work is O(n log n + candidates) with no n × n matrix.
    """
    n = pos.shape[0]
    dev = pos.device
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise InputError(f"pos has shape {tuple(pos.shape)}; expected (n, 2)")
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=dev)
    if not r > 0:
        raise InputError(f"search radius r={r} must be > 0")
    b = torch.zeros(n, dtype=torch.long, device=dev) if batch is None else batch.long()
    cell = torch.floor(pos.double() / r).long()
    cell = cell - cell.min(dim=0).values + 1  # >= 1, so a neighbour offset of -1 never wraps
    nx, ny = int(cell[:, 0].max()) + 2, int(cell[:, 1].max()) + 2
    key = (b * ny + cell[:, 1]) * nx + cell[:, 0]
    skey, order = torch.sort(key, stable=True)
    ids = torch.arange(n, device=dev)
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nkey = key + dy * nx + dx
            lo = torch.searchsorted(skey, nkey, side="left")
            cnt = torch.searchsorted(skey, nkey, side="right") - lo
            total = int(cnt.sum())
            if total == 0:
                continue
            src = torch.repeat_interleave(ids, cnt, output_size=total)
            start = torch.repeat_interleave(lo - (torch.cumsum(cnt, 0) - cnt), cnt, output_size=total)
            dst = order[start + torch.arange(total, device=dev)]
            keep = src < dst
            src, dst = src[keep], dst[keep]
            near = (pos[src] - pos[dst]).abs().amax(dim=1) <= r
            out.append(torch.stack([src[near], dst[near]]))
    if not out:
        return torch.zeros(2, 0, dtype=torch.long, device=dev)
    return torch.cat(out, dim=1)


def build_pick_graph(pos: torch.Tensor, box: torch.Tensor, score: torch.Tensor, picker: torch.Tensor,
                     batch: torch.Tensor, *, n_graphs: int, threshold: float = 0.3,
                     strict: bool = False) -> Batch:
    """The k-partite overlap graph of a batch of micrographs as one torch-geometric ``Batch``.

    pos: (n, 2) box centres px; box: (n,) sides px; score: (n,) normalised scores; picker: (n,)
    long picker index; batch: (n,) long micrograph index in ``[0, n_graphs)``, sorted ascending.
    Edges join boxes of different pickers with JI ≥ ``threshold`` (``> threshold`` when
    ``strict``, REPIC 0.2.1). The result has per node ``pos, box, score, picker``; ``edge_index``
    (2, 2E) in both directions (the torch-geometric convention for undirected graphs) and
    ``edge_attr`` (2E,) float64 JI; ``batch``/``ptr`` as usual.
    """
    n = pos.shape[0]
    for name, t in (("box", box), ("score", score), ("picker", picker), ("batch", batch)):
        if t.shape != (n,):
            raise InputError(f"{name} has shape {tuple(t.shape)}; expected ({n},) to match pos")
    if n and bool((batch[1:] < batch[:-1]).any()):
        raise InputError("batch must be sorted ascending (boxes grouped by micrograph)")
    if n:
        cutoff = jaccard_cutoff(threshold, float(box.min()), float(box.max()))
        pairs = radius_pairs(pos, cutoff, batch) if cutoff > 0 else pos.new_zeros(2, 0, dtype=torch.long)
        pairs = pairs[:, picker[pairs[0]] != picker[pairs[1]]]
        ji = box_jaccard(pos[pairs[0]].double(), box[pairs[0]].double(), pos[pairs[1]].double(),
                         box[pairs[1]].double())
        keep = ji > threshold if strict else ji >= threshold
        pairs, ji = pairs[:, keep], ji[keep]
    else:
        pairs, ji = torch.zeros(2, 0, dtype=torch.long, device=pos.device), pos.new_zeros(0, dtype=torch.float64)
    return _as_batch(pos, box, score, picker, batch, pairs, ji, n_graphs)


def _as_batch(pos: torch.Tensor, box: torch.Tensor, score: torch.Tensor, picker: torch.Tensor,
              batch: torch.Tensor, pairs: torch.Tensor, ji: torch.Tensor, n_graphs: int) -> Batch:
    """Split the union into per-micrograph ``Data`` and collate them, so ``Batch.get_example``
    and ``to_data_list`` work as torch-geometric documents."""
    node_counts = torch.bincount(batch, minlength=n_graphs).tolist()
    ptr = [0, *torch.tensor(node_counts).cumsum(0).tolist()]
    both = torch.cat([pairs, pairs.flip(0)], dim=1)
    both_ji = torch.cat([ji, ji])
    g = batch[both[0]]
    order = torch.argsort(g * max(1, pos.shape[0]) + both[0], stable=True)
    both, both_ji, g = both[:, order], both_ji[order], g[order]
    edge_counts = torch.bincount(g, minlength=n_graphs).tolist()
    data = []
    for i, (nodes, edges) in enumerate(zip(torch.split(torch.arange(pos.shape[0], device=pos.device), node_counts),
                                           torch.split(torch.arange(both.shape[1], device=pos.device), edge_counts))):
        data.append(Data(pos=pos[nodes], box=box[nodes], score=score[nodes], picker=picker[nodes],
                         edge_index=both[:, edges] - ptr[i], edge_attr=both_ji[edges], num_nodes=len(nodes)))
    return Batch.from_data_list(data)


def undirected_edges(graph: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges of ``graph`` once each: (2, E) global node ids with ``i < j`` and (E,) JI."""
    ei = graph.edge_index
    keep = ei[0] < ei[1]
    return ei[:, keep], graph.edge_attr[keep]


