"""The clustering options every classifier shares (the ``ACKMeans`` estimator, the image
pipelines, and any new pipeline), validated once when they are made, before any data is read.

>>> options = ClusterOptions(n_classes=20, max_iter=10, seed=0)
>>> result = options.fit(provider, rule=QuadraticPenalty(beta=0.5))   # initial centres + loop

Messages name the parameter and the value (``errors.check_int``), so a command line reports them
as one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ackmeans_torch.cluster.engine import (
    ClusterResult,
    Dissimilarity,
    LoopState,
    Reduce,
    Shard,
    fit_clusters,
    identity,
)
from ackmeans_torch.cluster.init import INIT_METHODS, initial_centers
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.errors import InputError, check_int, check_number

__all__ = ["ClusterOptions"]


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """How the assignment/update loop (``cluster/engine.py``) runs.

    ``n_classes`` K ≥ 1; ``init`` "random" (K random items, the paper's step 1), "k-means++", or a
    ``(K, *F)`` tensor of initial centres; ``max_iter`` ≥ 1 iterations after the initial
    assignment; ``sigma0`` σ0 in [0, 1]: stop when the fraction of changed labels σ ≤ σ0;
    ``batch_size`` items between class-size refreshes (1 = the paper's sequential order);
    ``chunk_size`` items per dissimilarity call (memory only; results do not depend on it);
    ``seed`` of the CPU generator that draws the initial centres and the d_c probes;
    ``leave_one_out``: compare an item with its own class's centre made without it
    (``Dissimilarity.leave_one_out``; False: the paper's plain distance); ``min_class_size``:
    a class with fewer items after an update is reseeded from half of the largest class (0: never);
    ``plateau``: also stop when σ has not fallen by 5 % over this many iterations (0: never);
    ``temperature`` τ ≥ 0: 0 assigns hard, τ > 0 soft (EM memberships softmax(−score / (τ·d_c)),
    for data with a weighted M-step: 3D classification, feature vectors).

    Defaults: leave-one-out distances and reseeding of empty classes (the paper-exact loop is
    ``leave_one_out=False, min_class_size=0``): without them a one-image class, whose average
    *is* its image, can never lose it, and runs at low SNR keep such stranded classes. σ0 = 0.05
    because ACK-means with sequential size updates settles near σ ≈ 0.03 (items at near-ties
    move back and forth between classes of equal cost), so σ0 = 0.01 is never reached; at SNR
    1/30 σ levels off far higher (≈ 0.13 on the paper's Fig. 1 set), where ``plateau`` ends the
    run and the history says so.
    """

    n_classes: int
    init: str | Tensor = "random"
    max_iter: int = 20
    sigma0: float = 0.05
    batch_size: int = 1
    chunk_size: int = 1024
    seed: int = 0
    leave_one_out: bool = True
    min_class_size: int = 1
    plateau: int = 5
    temperature: float = 0.0

    def __post_init__(self) -> None:
        check_int("n_classes", self.n_classes, 1)
        check_int("max_iter", self.max_iter, 1)
        check_number("sigma0", self.sigma0, 0.0, 1.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("chunk_size", self.chunk_size, 1)
        check_int("seed", self.seed, 0)
        check_int("min_class_size", self.min_class_size, 0)
        check_int("plateau", self.plateau, 0)
        check_number("temperature", self.temperature, 0.0)
        if not isinstance(self.leave_one_out, bool):
            raise InputError(f"leave_one_out={self.leave_one_out!r} must be true or false")
        if isinstance(self.init, Tensor):
            if self.init.ndim < 2 or self.init.shape[0] != self.n_classes:
                raise InputError(f"init has shape {tuple(self.init.shape)}; expected "
                                 f"(n_classes={self.n_classes}, ...)")
        elif self.init not in INIT_METHODS:
            raise InputError(f"init={self.init!r} must be one of {INIT_METHODS} or a tensor")

    def check_items(self, n_items: int) -> None:
        """Refuse more classes than items."""
        if self.n_classes > n_items:
            raise InputError(f"n_classes={self.n_classes} must be <= the {n_items} items to "
                             "classify; lower n_classes")

    def fit(self, provider: Dissimilarity, *, rule: SizeRule, device: torch.device | None = None,
            shard: Shard = identity, reduce: Reduce = identity,
            on_iteration=None, start: LoopState | None = None,
            generator: torch.Generator | None = None) -> ClusterResult:
        """Initial centres (or the saved ``start``) and the loop on ``provider`` with ``rule``.

        ``device``: where a saved state's centres go (a checkpoint is read onto the CPU).
        ``shard``/``reduce``/``on_iteration``/``start``: the engine's hooks. ``generator``: the
        CPU generator to draw from (default: a new one seeded with ``seed``; a pipeline that
        chains several clusterings passes one, so they do not repeat each other's draws)."""
        self.check_items(provider.n_items)
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        if start is not None:
            centers = start.centers.to(device) if device is not None else start.centers
        elif isinstance(self.init, Tensor):
            centers = self.init.clone()
        else:
            centers = initial_centers(provider, self.n_classes, method=self.init,
                                      generator=generator, chunk_size=self.chunk_size,
                                      shard=shard, reduce=reduce)
        return fit_clusters(provider, centers, rule=rule, max_iter=self.max_iter,
                            sigma0=self.sigma0, batch_size=self.batch_size,
                            chunk_size=self.chunk_size, generator=generator, shard=shard,
                            reduce=reduce, on_iteration=on_iteration, start=start,
                            leave_one_out=self.leave_one_out,
                            min_class_size=self.min_class_size, plateau=self.plateau,
                            temperature=self.temperature)
