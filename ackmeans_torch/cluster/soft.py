"""Soft, differentiable ACK-means assignment.

The hard rule picks argmin_j of the score matrix of a size penalty (``cluster/penalties.py``,
d + ∂R/∂s at s′ for the marginal family). Its soft relaxation is

    q_ij = softmin_j(score_ij / τ) = softmax_j(−score_ij / τ),

which tends to the one-hot hard assignment as τ → 0 (for untied rows). Nothing is detached, so
gradients reach the centroids through d and the penalty's parameters (e.g. a ``nn.Parameter`` β)
through the marginal cost. Sizes are data here (the caller passes the hard sizes or the expected
sizes Σ_i q_ij); the same score function serves both variants, so they cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.cluster.penalties import SizePenalty
from ackmeans_torch.errors import InputError

__all__ = ["soft_assignment"]


def soft_assignment(d: Tensor, sizes: Tensor, rule: SizePenalty, *, tau: float,
                    d_c: float | Tensor, n_items: int, current: Tensor | None = None) -> Tensor:
    """Assignment probabilities (B, K), rows summing to 1.

    d: (B, K) dissimilarities (differentiable w.r.t. centroids if computed from them);
    sizes: (K,) class sizes including the B items at ``current`` (B,) labels (default: none, −1);
    tau: temperature > 0 in units of d (scale it with d_c to be data-scale free).
    """
    if not tau > 0:
        raise InputError(f"tau={tau} must be > 0; the hard assignment is tau -> 0")
    if d.ndim != 2 or sizes.shape != (d.shape[1],):
        raise InputError(f"d must be (B, K) and sizes (K,); got {tuple(d.shape)} and "
                         f"{tuple(sizes.shape)}")
    if current is None:
        current = torch.full((d.shape[0],), -1, dtype=torch.int64, device=d.device)
    scores = rule.scores(d, sizes, current, d_c=d_c, n_items=n_items)
    return torch.softmax(-scores / tau, dim=1)
