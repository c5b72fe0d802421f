"""Size penalties: how class sizes enter the assignment of one item (ACK-means paper, Eq. 1).

The objective is J = Σ_j Σ_{i∈j} d(x_i, μ_j) + R(s) over class sizes s (K,). Reassigning item i
with s′ = sizes without i (the paper's "Adaptive constraint" derivation) picks

    p_i = argmin_j  d(x_i, μ_j) + ∂R/∂s_j (s′)

so a penalty only has to say, per batch, the score matrix (B, K) whose argmin is the new label.

Shapes: ``d`` (B, K) dissimilarities of B items to K centroids; ``sizes`` (K,) int64 class sizes
*including* the B items at their current labels; ``current`` (B,) int64 current labels, ``-1`` for
an item not yet in any class (its s′ is then ``sizes`` itself). A rule whose ``scores`` also take
``sizes`` (B, K), each row its own (``row_sizes``: every marginal penalty, SPIDER), lets the
engine score many items at once, each with the sizes the items before it leave.

Every penalty receives ``d_c`` (the characteristic dissimilarity, paper section "Characteristic
dissimilarity": mean over 10 random items of max_j d − min_j d, recomputed every iteration) and
``n_items`` (n), so a penalty written in units of d_c is invariant to scaling the data.

Every rule is a :class:`SizeRule`: it says whether it assigns item by item (``SizePenalty``) or
all items at once (``GlobalSizeRule``), whether its scores ignore the sizes (``size_free``: the
engine then needs no size refresh between batches), the rule of the initial pass
(``first_pass``: plain nearest centroid, the paper's steps 2–3), its size term R(s) and λ for the
history, and a human ``label`` for plots ("ACK-means, β = 0.5").

Families:
* :class:`MarginalPenalty` — additive marginal cost c(s′) (B, K); subclasses write it
  analytically (:class:`NoPenalty` = K-means, :class:`QuadraticPenalty` = ACK-means) or write R(s)
  in torch and get c = ∂R/∂s from autograd (:class:`AutogradPenalty`, e.g.
  :class:`EntropyPenalty`). A new variant is one subclass plus one ``configs/objective/*.yaml``.
* :class:`SpiderFactor` — SPIDER's size-factor K-means (a multiplicative rule, not a marginal).
* :class:`EqualSize` — EQK-means (SPARX): a global assignment with equal sizes, not a per-item
  score; the engine hands it the whole (N, K) matrix.

What happens to an empty class is stated per class below; the engine keeps an empty class's
previous centroid (never a 0/0 NaN) and records the number of empty classes per iteration.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ackmeans_torch.errors import InputError

__all__ = [
    "SizeRule",
    "SizePenalty",
    "GlobalSizeRule",
    "MarginalPenalty",
    "NoPenalty",
    "QuadraticPenalty",
    "AutogradPenalty",
    "EntropyPenalty",
    "SpiderFactor",
    "EqualSize",
    "sizes_without_self",
]


def sizes_without_self(sizes: Tensor, current: Tensor) -> Tensor:
    """s′ per item: (B, K) float = ``sizes`` (K,), or each item's own (B, K), minus one at its
    ``current`` label (B,).

    Items with ``current == -1`` belong to no class, so their s′ is ``sizes`` unchanged.
    """
    # (current == j) is false in every column for −1: no special case
    own = current[:, None] == torch.arange(sizes.shape[-1], device=current.device)
    return sizes.to(torch.float64) - own.to(torch.float64)


class SizeRule(nn.Module, ABC):
    """Base of every size rule (module docstring). ``nn.Module`` so that a penalty's parameters
    (e.g. β as a ``nn.Parameter``) receive gradients through the soft assignment
    (``cluster/soft.py``)."""

    #: assigns from the whole (N, K) matrix at once (``assign``) instead of per-item ``scores``
    global_assignment: bool = False
    #: the scores do not depend on the class sizes
    size_free: bool = False
    #: the rule itself corrects an item's own-class distance for the item's part in the centre
    #: (the engine's leave-one-out distance is then not applied on top)
    corrects_self_inclusion: bool = False

    def first_pass(self) -> SizeRule:
        """The rule of the initial assignment (paper steps 2–3): plain nearest centroid."""
        return NoPenalty()

    def value(self, sizes: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        """R(s): the size term of the objective J (a scalar in units of d). Default 0."""
        return sizes.new_zeros((), dtype=torch.float64)

    def strength(self, *, d_c: float | Tensor, n_items: int, n_classes: int) -> float | None:
        """λ of the paper's Eq. 1 for the history, or ``None`` for rules without one."""
        return None

    @property
    def label(self) -> str:
        """A human name for plots and logs."""
        return type(self).__name__


class SizePenalty(SizeRule):
    """A rule that scores each item against every class given the current sizes."""

    #: :meth:`scores` also takes ``sizes (B, K)``, row i scored with ``sizes[i]`` (the engine
    #: then scores many rows together, each with the sizes its predecessors leave)
    row_sizes: bool = False

    @abstractmethod
    def scores(self, d: Tensor, sizes: Tensor, current: Tensor, *, d_c: float | Tensor,
               n_items: int) -> Tensor:
        """(B, K) scores whose row-wise argmin is each item's new class (see module docstring)."""


class GlobalSizeRule(SizeRule):
    """A rule that assigns every item at once from the full dissimilarity matrix."""

    global_assignment = True

    @abstractmethod
    def assign(self, d: Tensor) -> Tensor:
        """Labels (N,) int64 on d's device from the full dissimilarity matrix ``d`` (N, K)."""


class MarginalPenalty(SizePenalty):
    """Additive size cost: scores = d + c(s′) with c the marginal cost ∂R/∂s_j at s′."""

    row_sizes = True  # s′ is (B, K) whatever the sizes' shape

    @abstractmethod
    def marginal(self, s_prime: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        """∂R/∂s_j evaluated at s′ (B, K) float64 → (B, K)."""

    def scores(self, d: Tensor, sizes: Tensor, current: Tensor, *, d_c: float | Tensor,
               n_items: int) -> Tensor:
        s_prime = sizes_without_self(sizes, current)
        return d + self.marginal(s_prime, d_c=d_c, n_items=n_items).to(d.dtype)


class NoPenalty(MarginalPenalty):
    """K-means (R = 0): scores are the dissimilarities themselves.

    Empty class: nothing pulls items back into it; it stays empty with its old centroid (Lloyd's
    behaviour without relocation) and the estimator warns.
    """

    size_free = True
    label = "K-means"

    def marginal(self, s_prime: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        return torch.zeros_like(s_prime)

    def scores(self, d: Tensor, sizes: Tensor, current: Tensor, *, d_c: float | Tensor,
               n_items: int) -> Tensor:
        return d


class QuadraticPenalty(MarginalPenalty):
    """ACK-means (paper Eq. 1): R = λ‖s‖², marginal 2λ s′_j with 2λ = β·d_c/(n/k).

    β = 0 adds an exact zero, so the labels are exactly K-means'. Empty class: s′ = 0 gives it the
    lowest size cost, so the next pass draws items back into it.
    """

    def __init__(self, *, beta: float | Tensor = 0.5) -> None:
        super().__init__()
        if not isinstance(beta, Tensor) and not (math.isfinite(beta) and beta >= 0):
            raise InputError(f"beta={beta} must be a finite number >= 0 (paper: 0.5)")
        self.beta = beta

    def two_lambda(self, *, d_c: float | Tensor, n_items: int, n_classes: int) -> float | Tensor:
        return self.beta * d_c / (n_items / n_classes)

    def marginal(self, s_prime: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        return self.two_lambda(d_c=d_c, n_items=n_items, n_classes=s_prime.shape[-1]) * s_prime

    def value(self, sizes: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        lam = self.two_lambda(d_c=d_c, n_items=n_items, n_classes=sizes.shape[0]) / 2
        return lam * (sizes.to(torch.float64) ** 2).sum()

    def strength(self, *, d_c: float | Tensor, n_items: int, n_classes: int) -> float:
        return float(self.two_lambda(d_c=d_c, n_items=n_items, n_classes=n_classes)) / 2

    @property
    def label(self) -> str:
        return f"ACK-means, β = {float(self.beta):g}"


class AutogradPenalty(MarginalPenalty):
    """Any penalty written as R(s) in torch; its marginal cost ∂R/∂s comes from autograd.

    Subclasses implement :meth:`penalty` for sizes of shape (..., K) returning (...) — one R per
    row, so one backward pass gives every item's marginal. When gradients are enabled (soft
    assignment) the marginal keeps its graph, so R's parameters are trainable.
    """

    @abstractmethod
    def penalty(self, s: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        """R(s) for sizes s (..., K) float64 → (...)."""

    def marginal(self, s_prime: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            s = s_prime.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(
                self.penalty(s, d_c=d_c, n_items=n_items).sum(), s, create_graph=keep_graph
            )
        return grad if keep_graph else grad.detach()

    def value(self, sizes: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        return self.penalty(sizes.to(torch.float64), d_c=d_c, n_items=n_items)


class EntropyPenalty(AutogradPenalty):
    """Negative entropy of the size distribution: R = β·d_c·n·Σ_j p_j log p_j, p = (s+1)/(n+k).

    An example of a researcher-added variant (a few lines + ``configs/objective/entropy.yaml``).
    Its marginal ≈ β·d_c·(log p_j + 1): doubling a class's size costs β·d_c·log 2 per item, the
    same order as ACK's β·d_c per n/k. The +1 (Laplace smoothing) keeps log finite for an empty
    class, which then has the lowest cost and refills on the next pass.
    """

    def __init__(self, *, beta: float | Tensor = 0.5) -> None:
        super().__init__()
        if not isinstance(beta, Tensor) and not (math.isfinite(beta) and beta >= 0):
            raise InputError(f"beta={beta} must be a finite number >= 0")
        self.beta = beta

    def penalty(self, s: Tensor, *, d_c: float | Tensor, n_items: int) -> Tensor:
        p = (s + 1.0) / (n_items + s.shape[-1])
        return self.beta * d_c * n_items * (p * torch.log(p)).sum(-1)

    @property
    def label(self) -> str:
        return f"entropy penalty, β = {float(self.beta):g}"


class SpiderFactor(SizePenalty):
    """SPIDER's size-factor K-means: move item i from class a to b when
    n_a/(n_a−1)·d_a > n_b/(n_b+1)·d_b (sizes n include i in a; paper's "traditional K-means").

    Written as scores: d_a·n_a/(n_a−1) for the current class and d_j·n_j/(n_j+1) for the others
    (an unassigned item uses the second form for all). For a singleton (n_a = 1) the factor is
    0/0 in Hartigan's derivation (removing the only member saves nothing), and SPIDER keeps
    one-image classes (paper, Introduction), so a singleton's own score is −inf: it stays, and a
    non-empty class never empties. An empty class scores 0 and takes the next item visited.
    """

    label = "SPIDER size factor"
    corrects_self_inclusion = True
    row_sizes = True

    def scores(self, d: Tensor, sizes: Tensor, current: Tensor, *, d_c: float | Tensor,
               n_items: int) -> Tensor:
        n = sizes.to(d.dtype).expand_as(d)
        out = d * (n / (n + 1))
        member = current >= 0
        rows = torch.nonzero(member).squeeze(1)
        cols = current[member]
        n_a = n[rows, cols]
        own = d[rows, cols] * n_a / (n_a - 1).clamp_min(1)
        out[rows, cols] = torch.where(n_a > 1, own, torch.full_like(own, -math.inf))
        return out


class EqualSize(GlobalSizeRule):
    """EQK-means (SPARX): every class gets ⌊n/k⌋ items and r = n mod k classes get one more.

    Which classes take the r extra items is decided by the assignment itself, not by class index.
    ``method="greedy"`` is SPARX's rule: walk all (item, class) pairs by increasing d and assign
    when the item is free and the class has room. ``method="exact"`` solves the same constraint
    optimally with ``scipy.optimize.linear_sum_assignment`` on an (n, k·(⌊n/k⌋+1)) slot matrix
    (cubic cost: meant for small n, to measure how far greedy is from optimal). Classes are never
    empty (⌊n/k⌋ ≥ 1 because k ≤ n).
    """

    def __init__(self, *, method: str = "greedy") -> None:
        super().__init__()
        if method not in ("greedy", "exact"):
            raise InputError(f"method={method!r} must be 'greedy' or 'exact' for EQK-means")
        self.method = method

    def first_pass(self) -> SizeRule:
        return self  # equal sizes from the first assignment on

    @property
    def label(self) -> str:
        return "EQK-means" if self.method == "greedy" else "EQK-means (exact)"

    @staticmethod
    def capacities(n_items: int, n_classes: int) -> tuple[int, int]:
        """(⌊n/k⌋, r = n mod k): base class size and how many classes get one extra item."""
        return n_items // n_classes, n_items % n_classes

    def assign(self, d: Tensor) -> Tensor:
        d_np = d.detach().to("cpu", torch.float64).numpy()
        labels = self._greedy(d_np) if self.method == "greedy" else self._exact(d_np)
        return torch.from_numpy(labels).to(d.device)

    def _greedy(self, d: np.ndarray) -> np.ndarray:
        n, k = d.shape
        base, extra = self.capacities(n, k)
        labels = np.full(n, -1, dtype=np.int64)
        sizes = np.zeros(k, dtype=np.int64)
        extras_used = 0
        left = n
        # A Python walk over sorted pairs: the rule is sequential by nature (each pair depends on
        # the sizes left by the previous ones); it stops as soon as every item is placed.
        for flat in np.argsort(d, axis=None, kind="stable"):
            i, j = divmod(int(flat), k)
            if labels[i] >= 0:
                continue
            if sizes[j] < base or (sizes[j] == base and extras_used < extra):
                extras_used += int(sizes[j] == base)
                sizes[j] += 1
                labels[i] = j
                left -= 1
                if left == 0:
                    break
        return labels

    def _exact(self, d: np.ndarray) -> np.ndarray:
        n, k = d.shape
        base, _ = self.capacities(n, k)
        # Slots: base ones per class, plus one optional extra per class costing M more. M > the
        # range of d makes the optimum fill every base slot and use exactly r extras.
        big = float(d.max() - d.min()) + 1.0
        cost = np.concatenate([np.repeat(d, base, axis=1), d + big], axis=1)
        owner = np.concatenate([np.repeat(np.arange(k), base), np.arange(k)])
        rows, cols = linear_sum_assignment(cost)
        labels = np.empty(n, dtype=np.int64)
        labels[rows] = owner[cols]
        return labels
