"""What every classification pipeline shares: its result type and the class averages built in
the class frame.

A class average is made the same way everywhere: bring each member onto its class reference's
frame with its pose (``ops.transform.Poses.to_class_frame``: the inverse of the pose that moves
the reference onto the image), mask, average, then re-centre the average (its centre of mass to
the box centre, so averages cannot drift with the shift search) and mask it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ackmeans_torch.ops.fourier import shift_images
from ackmeans_torch.ops.transform import Poses

__all__ = ["Classification", "class_means", "class_frame_averages", "recentre"]


@dataclass
class Classification:
    """``labels (N,)`` 0-based; ``poses``: each image's pose in its class (``ops/transform.py``
    conventions) and aligned distance; ``averages (K, L, L)``, ``sizes (K,)``; the engine's
    per-iteration ``history`` and whether σ ≤ σ0 was reached."""

    labels: Tensor
    poses: Poses
    averages: Tensor
    sizes: Tensor
    history: list[dict]
    converged: bool


def recentre(averages: Tensor, mask: Tensor) -> Tensor:
    """Move each ``(K, L, L)`` average's centre of mass (of its positive, masked part) to the box
    centre ``L // 2`` by a sub-pixel shift; an average with no positive mass is left as is."""
    size = averages.shape[-1]
    weights = (averages * mask).clamp_min(0)
    total = weights.sum((-2, -1))
    axis = torch.arange(size, device=averages.device, dtype=averages.dtype) - size // 2
    com_x = (weights.sum(-2) * axis).sum(-1) / total.clamp_min(1e-20)
    com_y = (weights.sum(-1) * axis).sum(-1) / total.clamp_min(1e-20)
    shifts = torch.stack([-com_x, -com_y], -1) * (total > 0)[:, None]
    return shift_images(averages, shifts)


def class_means(values: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """``(K, ...)`` mean of ``values (N, ...)`` per label; an empty class is 0."""
    sums = values.new_zeros(n_classes, *values.shape[1:]).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=n_classes).clamp_min(1).to(values.dtype)
    return sums / counts.view(-1, *([1] * (values.ndim - 1)))


def class_frame_averages(images: Tensor, labels: Tensor, poses: Poses, mask: Tensor,
                         n_classes: int) -> Tensor:
    """``(K, L, L)`` re-centred, masked class averages of ``images (N, L, L)`` with ``labels
    (N,)`` and their ``poses`` (module docstring)."""
    aligned = poses.to_class_frame(images) * mask
    return recentre(class_means(aligned, labels, n_classes), mask) * mask
