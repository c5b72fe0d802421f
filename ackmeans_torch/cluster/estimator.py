"""``ACKMeans``: the scikit-learn-like face of the clustering engine for feature tensors.

>>> model = ACKMeans(n_classes=100, beta=0.5, seed=0).fit(x)     # x: (N, F) or (N, L, L)
>>> model.labels_, model.centers_, model.n_iter_, model.history_

``__init__`` only stores; ``fit`` validates (the loop options are the
:class:`~ackmeans_torch.cluster.options.ClusterOptions` every pipeline shares), builds the size
rule and runs the loop on squared Euclidean distances. Pipelines with another dissimilarity (MRA
alignment) run the same options on their own ``Dissimilarity``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import (
    EqualSize,
    NoPenalty,
    QuadraticPenalty,
    SizeRule,
    SpiderFactor,
)
from ackmeans_torch.errors import InputError, check_number

__all__ = ["ACKMeans", "OBJECTIVES"]

OBJECTIVES = ("ack", "kmeans", "spider", "eqk", "eqk-exact")


def _make_rule(objective: str | SizeRule, beta: float) -> SizeRule:
    if isinstance(objective, SizeRule):
        return objective
    rules = {"ack": lambda: QuadraticPenalty(beta=beta), "kmeans": NoPenalty,
             "spider": SpiderFactor, "eqk": lambda: EqualSize(method="greedy"),
             "eqk-exact": lambda: EqualSize(method="exact")}
    if objective not in rules:
        raise InputError(f"objective={objective!r} must be one of {OBJECTIVES} or a SizeRule "
                         "instance")
    return rules[objective]()


class ACKMeans:
    """Adaptively constrained K-means (paper Eq. 1 and pseudocode) and its baselines.

    Parameters (keyword-only): ``n_classes`` k; ``beta`` β ≥ 0 (paper 0.5, used by
    ``objective="ack"``); ``objective`` one of :data:`OBJECTIVES` or a size-rule instance from
    ``cluster/penalties.py``; ``init`` "random" (k random items, paper), "k-means++" or a
    (K, *F) tensor; ``max_iter``; ``sigma0`` σ0 in [0, 1] (stop when the fraction of changed
    labels σ ≤ σ0); ``batch_size`` items between size refreshes (1 = paper's sequential order);
    ``seed`` for the CPU generator (init and the d_c probes); ``leave_one_out`` and
    ``min_class_size`` and ``plateau`` as in
    :class:`~ackmeans_torch.cluster.options.ClusterOptions` (here the paper's loop by default:
    False, 0 and 0); ``device`` (None: the input's).

    Attributes after ``fit``: ``labels_`` (N,) int64, ``centers_`` (K, *F) (alias
    ``cluster_centers_``), ``sizes_`` (K,), ``n_iter_`` (while-loop iterations after the initial
    assignment), ``converged_``, ``inertia_`` (Σ d of the last pass), ``objective_`` (J of the
    last pass, Eq. 1), ``history_`` (one dict per iteration: J, sigma, lambda_, d_c, sizes, ...).
    """

    def __init__(self, *, n_classes: int, beta: float = 0.5,
                 objective: str | SizeRule = "ack",
                 init: str | Tensor = "random", max_iter: int = 100, sigma0: float = 0.0,
                 batch_size: int = 1, chunk_size: int = 4096, seed: int = 0,
                 leave_one_out: bool = False, min_class_size: int = 0, plateau: int = 0,
                 device: str | torch.device | None = None) -> None:
        # scikit-learn's habit: __init__ only stores its keywords; fit validates them
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def _options(self) -> ClusterOptions:
        """The shared, validated loop options (``cluster/options.py``)."""
        return ClusterOptions(n_classes=self.n_classes, init=self.init, max_iter=self.max_iter,
                              sigma0=self.sigma0, batch_size=self.batch_size,
                              chunk_size=self.chunk_size, seed=self.seed,
                              leave_one_out=self.leave_one_out,
                              min_class_size=self.min_class_size, plateau=self.plateau)

    def fit(self, x: Tensor | np.ndarray) -> ACKMeans:
        """Cluster ``x`` (N, *F) float; returns self."""
        x = torch.as_tensor(x)
        if x.ndim < 2:
            raise InputError(f"input must have shape (N, F) or (N, L, L); got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.device is not None:
            x = x.to(self.device)
        if isinstance(self.init, Tensor) and self.init.shape != (self.n_classes, *x.shape[1:]):
            raise InputError(f"init has shape {tuple(self.init.shape)}; expected "
                             f"{(self.n_classes, *x.shape[1:])} (n_classes, *item shape)")
        options = self._options()
        check_number("beta", self.beta, 0.0)
        if not bool(torch.isfinite(x).all()):
            raise InputError("input contains NaN or inf; clean or drop those items")
        if isinstance(self.init, Tensor):
            options = replace(options, init=self.init.to(x.device, x.dtype).reshape(
                self.n_classes, -1))
        rule = _make_rule(self.objective, float(self.beta))
        result = options.fit(SquaredEuclidean(x.reshape(x.shape[0], -1)), rule=rule)
        self.labels_ = result.labels
        self.centers_ = result.centers.reshape(self.n_classes, *x.shape[1:])
        self.sizes_ = result.sizes
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.inertia_ = result.inertia
        self.objective_ = result.objective
        self.history_ = result.history
        return self

    @property
    def cluster_centers_(self) -> Tensor:
        """scikit-learn's name for ``centers_``."""
        return self.centers_
