"""The ACK-means loop (paper, "Implementation algorithm") for any dissimilarity and any size rule.

The loop needs three things from the data, all behind :class:`Dissimilarity`:
``dissimilarity(index, centers)`` → (B, K); ``statistics(index, labels, centers)`` → a dict of
per-class tensors (K, …) that the loop only adds up (over chunks, and across processes); and
``update(statistics, previous)`` → the new centres (the M-step). The default M-step is the class
mean, sums / counts (K-means, MRA); a reconstruction Σ CTF·X / (Σ CTF² + ε) is the same contract
with other statistics. The loop adds ``counts`` (K,) to the statistics itself.

Paper pseudocode → this module:
  1  initial centroids ........................ ``cluster/init.py``
  2–3 plain nearest assignment, update ........ iteration 0 of :func:`fit_clusters`
  5–7 d_c from 10 random items, λ .............. :func:`characteristic_dissimilarity`
  9–12 reassign item by item with s′ ........... ``batch_size=1`` (sizes refreshed after each item)
  13 update centroids, 14 σ ................... end of each iteration; stop when σ ≤ σ0
Centroids stay fixed during a pass (step 13 comes after the for-loop). With ``batch_size=B`` the
sizes are refreshed after each batch of B items instead of each item; B = 1 is the paper. The
labels are the paper's item by item, computed faster (:func:`_sequential`): an item that keeps
its class leaves the sizes as they were, so many items are scored at once and scoring resumes
after the first one that moves; for the built-in rules each batch is scored with the sizes a
guess of the labels before it leaves, and kept up to the first wrong guess (:func:`_guessed`).

Incremental M-step: after the first rounds only a few % of the items change class per pass. When
the dissimilarity's statistics depend only on the items and their labels
(``Dissimilarity.incremental``), a pass after one that moved at most :data:`INCREMENTAL_MOVES`
of the items updates that pass's statistics (this process's own sums, before ``reduce``) by
taking each changed item out of its old class and putting it into its new one; once the
items moved since the last full sum reach :data:`FULL_AFTER_MOVES` of them, after a soft or
global pass, and after a resume (the kept sums are not in the checkpoint) every item is summed
afresh. The result is that of the full sum up to float rounding.
The size rule (``cluster/penalties.py``) says how it assigns: per-item scores refreshed by batch
(``SizePenalty``), or one global assignment of the whole (N, K) matrix (``GlobalSizeRule``,
EQK-means); it also names the rule of the initial pass (``first_pass``).

Scale-out hooks, both identity by default:
* ``shard(index) -> index``: the part of a *global* batch this process classifies;
* ``reduce(dict of tensors) -> dict``: element-wise sum over processes (all-reduce).
Every process walks the same global batches in the same order, all-reduces each batch's size
change before the next batch, and all-reduces the iteration's statistics (and a label vector that
is zero outside its own items) before the update, so P processes follow exactly the computation of
one process with the same global batches (up to float summation order in the sums).
The 10 probe items for d_c and the initial centroids are addressed by global index and drawn from
the same generator on every process, so they need no communication.

Checkpoint hooks: ``on_iteration(state)`` is called on every process after each iteration's update
with a :class:`LoopState` (everything the loop carries from one iteration to the next, the
generator's state included); ``start=state`` continues from such a state, so a run stopped after
iteration t and continued from its state gives the uninterrupted run's result.

Empty classes keep their previous centroid (no 0/0); the size rule decides whether they refill
(see ``cluster/penalties.py``); ``history[t]["n_empty"]`` counts them.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ackmeans_torch.cluster.penalties import GlobalSizeRule, SizePenalty, SizeRule
from ackmeans_torch.errors import InputError

__all__ = [
    "Dissimilarity",
    "SquaredEuclidean",
    "ClusterResult",
    "ConvergenceWarning",
    "LoopState",
    "Reduce",
    "Shard",
    "characteristic_dissimilarity",
    "fit_clusters",
    "identity",
    "mean_leave_one_out",
]

Reduce = Callable[[dict[str, Tensor]], dict[str, Tensor]]
Shard = Callable[[Tensor], Tensor]


def identity(x):
    """The single-process default of the `shard` and `reduce` hooks."""
    return x


class ConvergenceWarning(UserWarning):
    """The loop stopped at ``max_iter`` with σ > σ0, or ended with empty classes."""


def mean_leave_one_out(d: Tensor, current: Tensor, members: Tensor) -> Tensor:
    """:meth:`Dissimilarity.leave_one_out` for centres that are class means: ``d (B, K)`` with
    each item's own-class entry scaled by (n / (n − 1))², infinite for a one-item class; a
    function, for distances made outside a dissimilarity (the trust tools' aligned distances)."""
    rows = torch.nonzero(current >= 0).squeeze(1)
    if not len(rows):
        return d
    n = members[current[rows]].to(d.dtype)
    own = d[rows, current[rows]]
    out = d.clone()
    # (a one-item class's own distance is 0 · ∞: infinite, not NaN)
    out[rows, current[rows]] = torch.where(n > 1, own * (n / (n - 1).clamp_min(1)) ** 2,
                                           torch.full_like(own, math.inf))
    return out


class Dissimilarity(ABC):
    """What the loop needs from the data. Items are addressed by global index (int64 (B,))."""

    n_items: int

    @abstractmethod
    def items(self, index: Tensor) -> Tensor:
        """The items themselves (B, *F), used as initial centroids (paper step 1)."""

    @abstractmethod
    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        """(B, K) dissimilarities of items ``index`` to ``centers`` (K, *F)."""

    @abstractmethod
    def statistics(self, index: Tensor, labels: Tensor, centers: Tensor) -> dict[str, Tensor]:
        """Per-class sufficient statistics of items ``index`` put in classes ``labels`` (B,):
        tensors with K rows that add up over chunks and processes (the default M-step wants
        ``{"sums": (K, *F)}``, the items as they enter the class means). An empty ``index`` (a
        process owning none of a chunk) gives zeros of the same shapes."""

    def soft_statistics(self, index: Tensor, q: Tensor, centers: Tensor) -> dict[str, Tensor]:
        """:meth:`statistics` with soft memberships ``q (B, K)`` (rows sum to 1): every item
        enters every class with its weight (soft assignment, ``fit_clusters(temperature=...)``).
        A dissimilarity without a weighted M-step refuses."""
        raise InputError(f"{type(self).__name__} has no soft M-step; use temperature=0 "
                         "(hard assignment)")

    def leave_one_out(self, d: Tensor, current: Tensor, members: Tensor) -> Tensor:
        """Own-class dissimilarities without the item's own contribution to its centre: an item
        is part of the average it is compared with, which biases its own-class distance low (a
        one-item class's average *is* the item). For the mean of ``n`` items,
        ‖x − μ₋ᵢ‖² = (n / (n − 1))² ‖x − μ‖² exactly; ``members (K,)`` are the classes' sizes
        when the centres were made, ``current (B,)`` the items' classes then (−1: none). A
        one-item class's own distance becomes infinite (nothing but the item supports it). A
        dissimilarity with another M-step overrides this."""
        return mean_leave_one_out(d, current, members)

    #: the statistics of a set of items depend only on the items and their labels (not on the
    #: centres) and add over items: the loop may then update the last pass's sums by the items
    #: that changed class instead of summing every item again (:func:`_pass`)
    incremental: bool = False

    def add_statistics(self, total: dict[str, Tensor] | None, index: Tensor, labels: Tensor,
                       centers: Tensor, *, sign: int = 1) -> dict[str, Tensor]:
        """``total`` (None: nothing yet) plus ``sign`` (±1) × :meth:`statistics` of items
        ``index`` in classes ``labels``; may add into ``total``'s tensors in place (the loop owns
        them), which a dissimilarity with large statistics does to spare a temporary per chunk."""
        return _add(total, self.statistics(index, labels, centers), sign)

    def move_statistics(self, total: dict[str, Tensor], index: Tensor, old: Tensor, new: Tensor,
                        centers: Tensor) -> dict[str, Tensor]:
        """``total`` with items ``index`` taken out of classes ``old`` and put into ``new`` (an
        :attr:`incremental` M-step); a dissimilarity may share the work of the two."""
        total = self.add_statistics(total, index, old, centers, sign=-1)
        return self.add_statistics(total, index, new, centers)

    def update(self, statistics: dict[str, Tensor], previous: Tensor) -> Tensor:
        """The M-step: new centres (K, *F) from the summed ``statistics`` (with the loop's
        ``counts`` (K,)) and the ``previous`` centres. Default: the class means (paper step 13);
        an empty class keeps its previous centroid."""
        sums, counts = statistics["sums"], statistics["counts"]
        shape = (-1,) + (1,) * (previous.ndim - 1)
        means = sums / counts.clamp_min(1).to(sums.dtype).view(shape)
        return torch.where((counts > 0).view(shape), means, previous)


class SquaredEuclidean(Dissimilarity):
    """Squared Euclidean distance of feature vectors ``x`` (N, F), any float dtype and device.

    d = ‖x‖² + ‖μ‖² − 2 x·μ (one GEMM per batch; clamped at 0 against rounding). Squared, so the
    class mean minimises the within-class sum (update step) and scaling x by c scales d and d_c
    by c², leaving ACK-means' labels unchanged.
    """

    def __init__(self, x: Tensor) -> None:
        if x.ndim != 2:
            raise InputError(f"features must have shape (N, F); got {tuple(x.shape)}")
        self.x = x
        self.n_items = x.shape[0]
        self._sq_norms = (x * x).sum(1)

    def items(self, index: Tensor) -> Tensor:
        return self.x[index.to(self.x.device)]

    def _rows(self, index: Tensor) -> Tensor:
        # The engine asks for consecutive ranges; a slice view avoids a gather copy of the rows,
        # which measured as long as the distance GEMM itself (10,000 × 4,096 float32).
        if len(index) > 1 and bool((index.diff() == 1).all()):
            first = int(index[0])
            return self.x[first:first + len(index)]
        return self.x[index.to(self.x.device)]

    def _norms(self, index: Tensor, rows: Tensor) -> Tensor:
        """‖x‖² of the rows ``index`` (precomputed here; a subclass that computes its rows on
        demand computes them from ``rows``)."""
        return self._sq_norms[index.to(rows.device)]

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        rows = self._rows(index)
        d = torch.addmm((centers * centers).sum(1), rows, centers.T, alpha=-2.0)
        d += self._norms(index, rows)[:, None]
        return d.clamp_min_(0.0)

    def statistics(self, index: Tensor, labels: Tensor, centers: Tensor) -> dict[str, Tensor]:
        # A sparse one-hot (K, B) product instead of index_add_: index_add_'s multi-threaded CPU
        # path was 5-1000x slower here (measured, 2-core machine), the sums are identical.
        rows = self._rows(index)
        labels = labels.to(rows.device)
        one_hot = torch.sparse_coo_tensor(
            torch.stack([labels, torch.arange(len(index), device=rows.device)]),
            torch.ones(len(index), dtype=rows.dtype, device=rows.device),
            (centers.shape[0], len(index)), check_invariants=False)
        return {"sums": torch.sparse.mm(one_hot, rows)}

    def soft_statistics(self, index: Tensor, q: Tensor, centers: Tensor) -> dict[str, Tensor]:
        rows = self._rows(index)
        return {"sums": q.to(rows).T @ rows}


def characteristic_dissimilarity(provider: Dissimilarity, centers: Tensor, *,
                                 generator: torch.Generator, n_probe: int = 10) -> Tensor:
    """d_c: mean over ``n_probe`` random items of max_j d − min_j d (paper steps 5–6), a 0-d tensor.

    Probe indices come from ``generator`` (CPU) so every process draws the same ones.
    """
    probe = torch.randperm(provider.n_items, generator=generator)[: min(n_probe, provider.n_items)]
    d = provider.dissimilarity(probe, centers)
    return (d.amax(1) - d.amin(1)).mean()


@dataclass
class LoopState:
    """What the loop carries between iterations: after iteration ``iteration`` (0 = paper steps
    2–3) the ``labels (N,)``, ``centers (K, *F)``, ``sizes (K,)``, the ``history`` so far and the
    d_c generator's state (``torch.Generator.get_state()``, uint8)."""

    iteration: int
    labels: Tensor
    centers: Tensor
    sizes: Tensor
    history: list[dict]
    generator_state: Tensor


#: a plateau: the last ``plateau`` iterations' best σ is not this fraction below the best before
PLATEAU_GAIN = 0.05


def _plateaued(history: list[dict], window: int) -> bool:
    """σ has stopped falling: over the last ``window`` iterations its lowest value is within
    :data:`PLATEAU_GAIN` of the lowest before them (iteration 0, σ = 1, left out)."""
    sigmas = [h["sigma"] for h in history[1:]]
    if not window or len(sigmas) <= window:
        return False
    return min(sigmas[-window:]) > (1 - PLATEAU_GAIN) * min(sigmas[:-window])


@dataclass
class ClusterResult:
    """Outcome of :func:`fit_clusters`. ``history[t]`` holds, for iteration t (0 = paper steps
    2–3): J (Σ d over the pass + R(s)), sigma, lambda_ (λ or None), d_c, sizes (list), n_empty,
    reseeded; the last one also ``stopped``: why the loop ended ("sigma0", "plateau",
    "max_iter"), as ``stopped`` here."""

    labels: Tensor
    centers: Tensor
    sizes: Tensor
    n_iter: int
    inertia: float
    objective: float
    history: list[dict] = field(default_factory=list)
    stopped: str = "max_iter"

    @property
    def converged(self) -> bool:
        """σ ≤ σ0 was reached (a plateau or max_iter is not convergence)."""
        return self.stopped == "sigma0"


def _check_finite(d: Tensor, first: int) -> None:
    # One NaN-propagating reduction instead of an element-wise isfinite (d >= 0 after clamping).
    if len(d) and not bool(torch.isfinite(d.amax())):
        raise InputError(
            f"non-finite dissimilarity for items from index {first}; check the input for NaN/inf")


def _add(total: dict[str, Tensor] | None, part: dict[str, Tensor],
         sign: int = 1) -> dict[str, Tensor]:
    if total is None:
        return dict(part) if sign == 1 else {key: -value for key, value in part.items()}
    return {key: total[key].add(part[key], alpha=sign) for key in total}


#: at most this many global batches are scored ahead with the same sizes (:func:`_sequential`)
LOOKAHEAD = 64
#: global batches scored together with guessed sizes (:func:`_guessed`): a wrong guess early
#: in them wastes the rest, and with many classes each row costs more (10,000 items, K = 100,
#: batch 1: the size loop 0.67 s a run at 256, 1.0 s over whole chunks of 1,024)
SCAN = 256
#: a pass updates the last pass's statistics by the items that change class (when the
#: dissimilarity is ``incremental``) while the last pass moved at most this fraction of the items:
#: taking a moved item out and putting it in costs two insertions, so at half the items moving
#: both ways cost the same, and σ falls from pass to pass, so the last pass's bounds this one's...
INCREMENTAL_MOVES = 0.5
#: ...and sums every item afresh once the items moved since the last full sum reach this
#: fraction of them: two insertions a move, so the sums then hold the float rounding of at
#: most twice a full sum's additions (a pass in which nothing moves adds none)
FULL_AFTER_MOVES = 0.5


@dataclass
class _Kept:
    """This process's statistics of the last pass before ``reduce`` (its own items only), the
    labels they were made with, and the items (of all processes) moved since they were summed
    afresh."""

    statistics: dict[str, Tensor]
    labels: Tensor
    moved: int = 0


def _sequential(scored: Tensor, cur: Tensor, lengths: list[int], sizes: Tensor,
                rule: SizePenalty, *, d_c: float | Tensor, n_items: int,
                reduce: Reduce) -> tuple[Tensor, Tensor]:
    """Hard labels of a chunk's rows ``scored (B, K)`` (current labels ``cur (B,)``), global
    batch by global batch (this process's rows of each: ``lengths``), each scored with the sizes
    refreshed after every batch before it, and the sizes after the chunk.

    The same labels as scoring one batch at a time, faster: a batch whose items all keep their
    class (or swap evenly) leaves the sizes as they were, so up to :data:`LOOKAHEAD` batches are
    scored at once with the current sizes; every batch up to the first that changes the
    (all-reduced) sizes was scored with exactly the sizes it would have met, the sizes take that
    batch's change, and scoring resumes after it. Needs a rule whose score rows depend only on
    their own row and the sizes (every :class:`SizePenalty` here); a rule that takes sizes per
    row takes the faster :func:`_guessed`."""
    # a number, not a 0-dim tensor: the rule's arithmetic on it costs a few µs per operation,
    # paid per moving item
    d_c = float(d_c)
    if rule.row_sizes:
        return _guessed(scored, cur, lengths, sizes, rule, d_c=d_c, n_items=n_items,
                        reduce=reduce)
    if reduce is identity and all(length == 1 for length in lengths):
        return _item_by_item(scored, cur, sizes, rule, d_c=d_c, n_items=n_items)
    k = scored.shape[1]
    device = scored.device
    ends = torch.tensor(lengths, device=device).cumsum(0).tolist()
    starts = [0] + ends[:-1]
    new = torch.empty_like(cur)
    done = 0
    while done < len(lengths):
        last = min(len(lengths), done + LOOKAHEAD)
        rows = slice(starts[done], ends[last - 1])
        d_b, cur_b = scored[rows], cur[rows]
        new_b = rule.scores(d_b, sizes, cur_b, d_c=d_c, n_items=n_items).argmin(1)
        batch = torch.repeat_interleave(torch.arange(last - done, device=device),
                                        torch.tensor(lengths[done:last], device=device))
        # per batch +1 at the new class, −1 at the old one (an unassigned item has none)
        delta = torch.bincount(batch * k + new_b, minlength=(last - done) * k)
        placed = cur_b >= 0
        delta -= torch.bincount(batch[placed] * k + cur_b[placed], minlength=(last - done) * k)
        delta = reduce({"sizes": delta.view(-1, k)})["sizes"]
        moved = delta.any(1)
        accepted = int(moved.to(torch.uint8).argmax()) + 1 if bool(moved.any()) else last - done
        stop = ends[done + accepted - 1]
        new[starts[done]:stop] = new_b[:stop - starts[done]]
        sizes = sizes + delta[:accepted].sum(0)
        done += accepted
    return new, sizes


def _guessed(scored: Tensor, cur: Tensor, lengths: list[int], sizes: Tensor,
             rule: SizePenalty, *, d_c: float, n_items: int,
             reduce: Reduce) -> tuple[Tensor, Tensor]:
    """:func:`_sequential` for a rule that scores rows with sizes of their own
    (:attr:`SizePenalty.row_sizes`): :data:`SCAN` global batches are scored at once, each with
    the sizes that a guess of the labels of the batches before it leaves (the guessed size
    changes all-reduced). Up to the first batch whose labels differ from their guess on any
    process, every batch met the sizes of exact labels, so those are exact and kept; the rest
    is scored again with this round's labels as the guess (the first of them met exact sizes
    this round, so it is kept in the next). A few rounds a chunk, two all-reduces each, where
    scoring resumed after each batch that changed the sizes before: ACK-means in one process,
    batch 1, on 30,000 items, K = 3, 32 % moving, 0.02 s against 0.77 s."""
    k = scored.shape[1]
    device = scored.device
    counts = torch.tensor(lengths, device=device)
    ends = counts.cumsum(0).tolist()
    starts = [0] + ends[:-1]
    batch = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)
    placed = cur >= 0
    new = torch.empty_like(cur)
    guess = cur[:0]
    done = 0
    while done < len(lengths):
        last = min(len(lengths), done + SCAN)
        low, high = starts[done], ends[last - 1]
        if low + len(guess) < high:  # rows not guessed yet: scored with the current sizes
            rows = slice(low + len(guess), high)
            fresh = rule.scores(scored[rows], sizes, cur[rows], d_c=d_c, n_items=n_items)
            guess = torch.cat([guess, fresh.argmin(1)])
        local, cur_b = batch[low:high] - done, cur[low:high]
        # per batch +1 at the guessed class, −1 at the old one (an unassigned item has none)
        delta = torch.bincount(local * k + guess, minlength=(last - done) * k)
        old = placed[low:high]
        delta -= torch.bincount(local[old] * k + cur_b[old], minlength=(last - done) * k)
        delta = reduce({"sizes": delta.view(-1, k)})["sizes"]
        met = (delta.cumsum(0) - delta).add_(sizes)  # the sizes each batch meets
        again = rule.scores(scored[low:high], met[local], cur_b, d_c=d_c,
                            n_items=n_items).argmin(1)
        wrong = torch.bincount(local[again != guess], minlength=last - done)
        wrong = torch.nonzero(reduce({"wrong": wrong})["wrong"])
        kept = int(wrong[0, 0]) if len(wrong) else last - done  # the batches kept
        stop = ends[done + kept - 1] if kept else low
        new[low:stop] = guess[:stop - low]
        sizes = met[kept] if kept < last - done else met[-1] + delta[-1]
        done += kept
        guess = again[stop - low:]
    return new, sizes


def _item_by_item(scored: Tensor, cur: Tensor, sizes: Tensor, rule: SizePenalty, *,
                  d_c: float, n_items: int) -> tuple[Tensor, Tensor]:
    """:func:`_sequential` in one process with the sizes refreshed after every item (the
    paper's order, ``batch_size=1``) for a rule that takes one size vector: an item changes
    the sizes exactly when its label changes, so the batches' size changes need no counting;
    rows scored with the current sizes up to :data:`LOOKAHEAD` at a time, resumed after each
    one that moves."""
    new = torch.empty_like(cur)
    sizes = sizes.clone()
    done, n = 0, len(cur)
    while done < n:
        last = min(n, done + LOOKAHEAD)
        cur_b = cur[done:last]
        new_b = rule.scores(scored[done:last], sizes, cur_b, d_c=d_c, n_items=n_items).argmin(1)
        moved = torch.nonzero(new_b != cur_b)
        if not len(moved):
            new[done:last] = new_b
            done = last
            continue
        j = int(moved[0, 0])
        new[done:done + j + 1] = new_b[:j + 1]
        sizes[new_b[j]] += 1
        if int(cur_b[j]) >= 0:
            sizes[cur_b[j]] -= 1
        done += j + 1
    return new, sizes


def _pass(provider: Dissimilarity, centers: Tensor, labels: Tensor, sizes: Tensor,
          rule: SizePenalty, *, d_c: Tensor, batch_size: int, chunk_size: int, shard: Shard,
          reduce: Reduce, members: Tensor | None, temperature: float = 0.0,
          kept: _Kept | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor], _Kept | None]:
    """One assignment pass over all items in index order (paper steps 9–12).

    Sizes are refreshed (all-reduced) after every global batch of ``batch_size`` items.
    ``members``: the centres' class sizes for the leave-one-out own-class distance (None: the
    paper's distances). ``temperature`` τ > 0 makes it an EM pass: each item's memberships are
    q = softmax(−scores / (τ·d_c)) of the same scores, the sizes are the expected sizes Σ q
    (refreshed by batch like the hard ones, the item's previous class taken out as in s′), the
    statistics are weighted by q (:meth:`Dissimilarity.soft_statistics`) and the label is the
    most probable class. ``kept``: the last hard pass's statistics (:class:`_Kept`), updated by
    the items that change class instead of summed afresh when ``labels`` are the labels they
    were made with (module docstring). Returns new labels (complete after the final reduce),
    new sizes, the reduced statistics (Σd of the plain distances, Σ q·d when soft; ``q_max`` per
    item when soft) and this pass's kept statistics (None when soft).
    """
    n, k = provider.n_items, centers.shape[0]
    device = centers.device
    soft = temperature > 0
    scale = temperature * (float(d_c) if float(d_c) > 0 else 1.0)
    if soft:
        sizes = sizes.to(torch.float64)
        q_max = torch.zeros(n, dtype=torch.float64, device=device)
    new_labels = torch.zeros(n, dtype=torch.int64, device=device)  # label + 1 on own items
    statistics = None
    counts = torch.zeros(k, dtype=torch.float64 if soft else torch.int64, device=device)
    d_sum = torch.zeros((), dtype=torch.float64, device=device)
    moves = torch.zeros((), dtype=torch.int64, device=device)
    moved: list[tuple[Tensor, Tensor, Tensor]] = []  # (items, old, new labels) not moved yet
    incremental = (not soft and kept is not None and torch.equal(kept.labels, labels)
                   and kept.moved < FULL_AFTER_MOVES * n)
    if incremental:
        statistics = kept.statistics
    batches_per_chunk = max(1, chunk_size // batch_size)
    for start in range(0, n, batches_per_chunk * batch_size):
        stop = min(n, start + batches_per_chunk * batch_size)
        if shard is identity:
            # (a tensor per item of a chunk when batch_size is 1 cost ~0.3 s a pass at 30,000)
            chunk_index = torch.arange(start, stop)
            lengths = [min(batch_size, stop - at) for at in range(start, stop, batch_size)]
        else:
            local = [shard(idx) for idx in torch.arange(start, stop).split(batch_size)]
            chunk_index, lengths = torch.cat(local), [len(idx) for idx in local]
        d = provider.dissimilarity(chunk_index, centers) if len(chunk_index) else \
            centers.new_zeros((0, k))
        _check_finite(d, start)
        cur = labels[chunk_index.to(device)]
        scored = d if members is None else provider.leave_one_out(d, cur, members)
        if soft:
            chunk_new = torch.empty_like(cur)
            chunk_q = d.new_zeros(d.shape)
            offset = 0
            for b in lengths:
                d_b, cur_b = scored[offset:offset + b], cur[offset:offset + b]
                scores = rule.scores(d_b, sizes, cur_b, d_c=d_c, n_items=n)
                # Old labels count in bins k..2k−1; an unassigned item (−1, first pass) goes to
                # the dropped bin 3k.
                old = torch.bincount(cur_b.where(cur_b >= 0, 2 * k) + k,
                                     minlength=3 * k + 1)[k:2 * k]
                q_b = torch.softmax(-scores / scale, dim=1)
                chunk_new[offset:offset + b] = q_b.argmax(1)
                chunk_q[offset:offset + b] = q_b
                sizes = sizes + reduce({"sizes": q_b.sum(0).to(torch.float64) - old})["sizes"]
                offset += b
        else:
            chunk_new, sizes = _sequential(scored, cur, lengths, sizes, rule,
                                           d_c=d_c, n_items=n, reduce=reduce)
        dev_index = chunk_index.to(device)
        new_labels[dev_index] = chunk_new + 1
        if soft:
            statistics = _add(statistics, provider.soft_statistics(chunk_index, chunk_q, centers))
            counts += chunk_q.sum(0).to(torch.float64)
            d_sum += (chunk_q * d).sum().to(torch.float64)
            q_max[dev_index] = chunk_q.amax(1).to(torch.float64)
        else:
            if incremental:
                changed = chunk_new != cur
                if bool(changed.any()):
                    moved.append((chunk_index[changed.to(chunk_index.device)], cur[changed],
                                  chunk_new[changed]))
                    if sum(len(m[0]) for m in moved) >= chunk_size:
                        statistics = _move(provider, statistics, moved, centers)
                        moved = []
            else:
                statistics = provider.add_statistics(statistics, chunk_index, chunk_new, centers)
            counts += torch.bincount(chunk_new, minlength=k)
            d_sum += d.gather(1, chunk_new[:, None]).sum().to(torch.float64)
        moves += (chunk_new != cur).sum()
    if moved:
        statistics = _move(provider, statistics, moved, centers)
    extra = {"q_max": q_max} if soft else {}
    stats = reduce({**statistics, "labels": new_labels, "counts": counts, "d_sum": d_sum,
                    "moves": moves, **extra})
    labels = stats["labels"] - 1
    if soft or not provider.incremental:
        return labels, sizes, stats, None
    # (the moves of every process, so all take the same path in the next pass)
    return labels, sizes, stats, _Kept(statistics, labels,
                                       kept.moved + int(stats["moves"]) if incremental else 0)


def _move(provider: Dissimilarity, statistics: dict[str, Tensor],
          moved: list[tuple[Tensor, Tensor, Tensor]], centers: Tensor) -> dict[str, Tensor]:
    """``statistics`` with the ``moved`` items taken out of their old class and put into their
    new one. They come from several chunks (up to a chunk's worth of items): a few items of each
    chunk, inserted together, sit closer in the statistics than those of one chunk (3D
    classification at 3 % moving: 0.18 s of insertions a pass, 0.39 s chunk by chunk)."""
    items, old, new = (torch.cat(part) for part in zip(*moved))
    return provider.move_statistics(statistics, items, old, new, centers)


def _global_pass(provider: Dissimilarity, centers: Tensor, labels: Tensor, rule: GlobalSizeRule,
                 *, chunk_size: int, shard: Shard, reduce: Reduce,
                 members: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """A pass of a global rule (EQK-means): it assigns from the whole (N, K) matrix at once
    (leave-one-out own-class distances when ``members`` is given, as in :func:`_pass`: made
    chunk by chunk, right after each chunk's distances)."""
    n, k = provider.n_items, centers.shape[0]
    d_all = centers.new_zeros((n, k))
    scored = None if members is None else centers.new_zeros((n, k))
    for start in range(0, n, chunk_size):
        idx = shard(torch.arange(start, min(n, start + chunk_size)))
        if len(idx):
            d = provider.dissimilarity(idx, centers)
            _check_finite(d, start)
            rows = idx.to(centers.device)
            d_all[rows] = d
            if members is not None:
                scored[rows] = provider.leave_one_out(d, labels[rows], members)
    summed = reduce({"d": d_all} if members is None else {"d": d_all, "scored": scored})
    d_all = summed["d"]
    new = rule.assign(summed.get("scored", d_all))
    statistics = None
    for start in range(0, n, chunk_size):
        idx = shard(torch.arange(start, min(n, start + chunk_size)))
        statistics = provider.add_statistics(statistics, idx, new[idx.to(centers.device)],
                                             centers)
    stats = reduce(statistics)
    stats.update(counts=torch.bincount(new, minlength=k),
                 d_sum=d_all.gather(1, new[:, None]).sum().to(torch.float64),
                 moves=(new != labels).sum())
    return new, stats


def _reseed_small(provider: Dissimilarity, centers: Tensor, updated: Tensor, labels: Tensor,
                  counts: Tensor, *, min_size: int, generator: torch.Generator, shard: Shard,
                  reduce: Reduce) -> tuple[Tensor, list[int]]:
    """Give every class with fewer than ``min_size`` members a new centre: the M-step of a
    random half of the currently largest class (EMAN2's ``mininclass`` idea: a class that holds
    almost nothing is a wasted reference; splitting the largest class puts it where the data
    are). Statistics are taken against ``centers`` (those of the pass just made, which the
    provider holds), drawn from the CPU ``generator`` (the same on every process), and summed
    with ``reduce``. Returns the centres and the reseeded classes."""
    counts, updated = counts.clone(), updated.clone()
    reseeded = []
    for j in torch.nonzero(counts < min_size).squeeze(1).tolist():
        big = int(counts.argmax())
        members = torch.nonzero(labels == big).squeeze(1).cpu()
        if len(members) < 2 * max(min_size, 1):
            break  # nothing left to split
        half = members[torch.randperm(len(members), generator=generator)[: len(members) // 2]]
        own = shard(half)
        stats = reduce(provider.statistics(own, torch.full((len(own),), big, dtype=torch.int64,
                                                           device=labels.device), centers))
        stats["counts"] = torch.zeros_like(counts).index_fill_(0, torch.tensor([big]), len(half))
        updated[j] = provider.update(stats, centers)[big]
        counts[big] -= len(half)
        counts[j] = len(half)
        reseeded.append(j)
    return updated, reseeded


@torch.no_grad()  # hard assignment: no graph, also not through an autograd penalty's marginal
def fit_clusters(provider: Dissimilarity, centers: Tensor, *, rule: SizeRule,
                 max_iter: int = 100, sigma0: float = 0.0, batch_size: int = 1,
                 chunk_size: int = 4096, n_probe: int = 10, generator: torch.Generator,
                 shard: Shard = identity, reduce: Reduce = identity,
                 on_iteration: Callable[[LoopState], None] | None = None,
                 start: LoopState | None = None,
                 leave_one_out: bool = False, min_class_size: int = 0,
                 plateau: int = 0, temperature: float = 0.0) -> ClusterResult:
    """Run the ACK-means loop from initial ``centers`` (K, *F) with size rule ``rule``.

    ``leave_one_out``: compare each item with its own class's centre made without it
    (:meth:`Dissimilarity.leave_one_out`) from iteration 1 on, unless the rule already accounts
    for it (SPIDER's factor); False is the paper's plain distance.
    ``min_class_size``: after each update, a class with fewer items is reseeded from a random
    half of the largest class (:func:`_reseed_small`); 0 keeps every centre as updated (an empty
    class keeps its previous centroid).
    ``plateau``: also stop when σ has not fallen by :data:`PLATEAU_GAIN` over this many
    iterations (:func:`_plateaued`: the images still moving sit at near-ties; 0: never).
    ``temperature``: 0 assigns hard; τ > 0 runs EM from iteration 1 on (:func:`_pass`:
    memberships softmax(−score / (τ·d_c)); τ → 0 is the hard rule), for rules that score items
    (not a global rule); sizes are then expected sizes and ``history[t]["mean_q_max"]`` is the
    mean largest membership.
    ``batch_size``: items between size refreshes (1 = the paper's sequential order).
    ``chunk_size``: items per dissimilarity call (memory only; results do not depend on it).
    ``generator``: CPU generator for the d_c probes (paper step 5).
    Stops when σ (fraction of changed labels) ≤ ``sigma0`` or after ``max_iter`` iterations of
    the while-loop; warns with :class:`ConvergenceWarning` in the second case.
    ``on_iteration`` / ``start``: checkpoint hooks (module docstring); with ``start`` the
    ``centers`` argument gives only the device and the loop goes on after ``start.iteration``.
    """
    n, k = provider.n_items, centers.shape[0]
    if temperature < 0 or (temperature > 0 and isinstance(rule, GlobalSizeRule)):
        raise InputError(f"temperature={temperature} must be >= 0, and 0 for {rule.label} "
                         "(a global assignment has no per-item scores to soften)")
    device = centers.device
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    sizes = torch.zeros(k, dtype=torch.int64, device=device)
    history: list[dict] = []
    zero = torch.zeros((), dtype=torch.float64, device=device)
    stopped = "max_iter"
    n_iter = 0
    first = 0
    # the last hard pass's statistics on this process, for an incremental M-step (_pass); not
    # in the loop's state, so the first pass after a resume sums every item
    kept = None
    if start is not None:
        if start.labels.shape != (n,) or start.centers.shape[0] != k:
            raise InputError(f"saved state has {start.labels.shape[0]} items and "
                             f"{start.centers.shape[0]} classes, the run {n} and {k}; "
                             "resume with the run's own data and n_classes")
        labels, centers = start.labels.to(device), start.centers.to(device)
        sizes, history = start.sizes.to(device), list(start.history)
        generator.set_state(start.generator_state)
        n_iter, first = start.iteration, start.iteration + 1
        stopped = history[-1].get("stopped", "max_iter")
        if stopped in ("sigma0", "plateau"):
            first = max_iter + 1
    for it in range(first, max_iter + 1):
        # iteration 0 is the paper's steps 2–3 (the rule's first pass: plain nearest centroid,
        # sizes play no part yet, for every per-item rule)
        active = rule.first_pass() if it == 0 else rule
        # the centres were made from the previous pass's members, whose counts are its sizes
        members = sizes if (leave_one_out and it > 0
                            and not active.corrects_self_inclusion) else None
        soft = temperature > 0 and it > 0
        # (the temperature is in units of d_c, for every rule)
        d_c = zero if active.size_free and not soft else characteristic_dissimilarity(
            provider, centers, generator=generator, n_probe=n_probe)
        if active.global_assignment:
            new_labels, stats = _global_pass(provider, centers, labels, active,
                                             chunk_size=chunk_size, shard=shard, reduce=reduce,
                                             members=members)
            sizes, kept = stats["counts"], None
        else:
            # Without a size term the batch size cannot change a label: use whole chunks.
            step = chunk_size if active.size_free else batch_size
            new_labels, sizes, stats, kept = _pass(
                provider, centers, labels, sizes, active, d_c=d_c, batch_size=step,
                chunk_size=chunk_size, shard=shard, reduce=reduce, members=members,
                temperature=temperature if soft else 0.0,
                kept=kept if history and history[-1]["sigma"] <= INCREMENTAL_MOVES else None)
        size_term = active.value(sizes, d_c=d_c, n_items=n)
        lam = active.strength(d_c=d_c, n_items=n, n_classes=k)
        inertia = float(stats["d_sum"])
        sigma = float(stats["moves"]) / n
        labels = new_labels
        updated = provider.update(stats, centers)
        reseeded = []
        if min_class_size > 0:
            updated, reseeded = _reseed_small(provider, centers, updated, labels, stats["counts"],
                                              min_size=min_class_size, generator=generator,
                                              shard=shard, reduce=reduce)
        centers = updated
        history.append({"iteration": it, "J": inertia + float(size_term), "inertia": inertia,
                        "sigma": sigma, "lambda_": lam, "d_c": float(d_c),
                        "sizes": sizes.tolist(), "n_empty": int((sizes < 0.5).sum()),
                        "reseeded": len(reseeded)})
        if soft:
            history[-1]["mean_q_max"] = float(stats["q_max"].mean())
        n_iter = it
        if it > 0 and not reseeded:  # a reseeded class needs another pass
            if sigma <= sigma0:
                stopped = "sigma0"
            elif _plateaued(history, plateau):
                stopped = "plateau"
        if stopped != "max_iter" or it == max_iter:
            history[-1]["stopped"] = stopped  # the saved history says why the loop ended
        if on_iteration is not None:
            on_iteration(LoopState(iteration=it, labels=labels, centers=centers, sizes=sizes,
                                   history=list(history),
                                   generator_state=generator.get_state()))
        if stopped != "max_iter":
            break
        if not math.isfinite(history[-1]["J"]):
            raise InputError(f"objective J became {history[-1]['J']} at iteration {it}; "
                             "check the input for NaN/inf")
    if stopped == "max_iter":
        warnings.warn(f"stopped after max_iter={max_iter} iterations with sigma="
                      f"{history[-1]['sigma']:.4g} > sigma0={sigma0}; raise max_iter or sigma0",
                      ConvergenceWarning, stacklevel=3)  # caller of the no_grad wrapper
    if history[-1]["n_empty"]:
        fate = ("were reseeded after the last pass; raise max_iter" if history[-1]["reseeded"]
                else "they keep their previous centroid; lower n_classes or use a size penalty")
        warnings.warn(f"{history[-1]['n_empty']} of {k} classes ended empty ({fate})",
                      ConvergenceWarning, stacklevel=3)  # caller of the no_grad wrapper
    return ClusterResult(labels=labels, centers=centers, sizes=sizes, n_iter=n_iter,
                         inertia=history[-1]["inertia"],
                         objective=history[-1]["J"], history=history, stopped=stopped)
