"""Reference-free alignment (SPIDER-style RFA): align every image to the iteratively refined
global average, then cluster the aligned images without further alignment (paper,
"Introduction": RFA). The global average is re-centred and masked each round; the clustering
runs on the masked, aligned pixels as feature vectors (squared Euclidean distance), with any size
rule of the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.classify.mra import recentre
from ackmeans_torch.classify.outputs import Classification
from ackmeans_torch.cluster.engine import SquaredEuclidean, fit_clusters
from ackmeans_torch.cluster.init import initial_centers
from ackmeans_torch.ops.align import align
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import apply_transform


def classify_rfa(images: Tensor, *, n_classes: int, rule, mask_radius: float,
                 align_options: dict, n_reference_rounds: int = 5, init: str = "random",
                 max_iter: int = 20, sigma0: float = 0.01, batch_size: int = 1,
                 chunk_size: int = 4096, seed: int = 0) -> Classification:
    """RFA classification of preprocessed ``images (N, L, L)`` (module docstring)."""
    n, size = images.shape[0], images.shape[-1]
    mask = circular_mask(size, mask_radius, device=images.device, dtype=images.dtype)
    reference = recentre(images.mean(0, keepdim=True), mask) * mask
    for _ in range(n_reference_rounds):
        best = align(images, reference, mode="best", mask_radius=mask_radius, **align_options)
        aligned = apply_transform(images, best.angle, best.shift, best.mirror, inverse=True) * mask
        reference = recentre(aligned.mean(0, keepdim=True), mask) * mask
    generator = torch.Generator().manual_seed(seed)
    provider = SquaredEuclidean(aligned.reshape(n, -1))
    centers = initial_centers(provider, n_classes, method=init, generator=generator)
    result = fit_clusters(provider, centers, rule=rule, max_iter=max_iter, sigma0=sigma0,
                          batch_size=batch_size, chunk_size=chunk_size, generator=generator)
    distance = (aligned.reshape(n, -1) - result.centers[result.labels]).pow(2).sum(1)
    return Classification(labels=result.labels, averages=result.centers.reshape(-1, size, size),
                          sizes=result.sizes, history=result.history, converged=result.converged,
                          angle=best.angle, shift=best.shift, mirror=best.mirror,
                          distance=distance)
