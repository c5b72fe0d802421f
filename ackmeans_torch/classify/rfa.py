"""Reference-free alignment (SPIDER-style RFA): align every image to the iteratively refined
global average, then cluster the aligned images without further alignment (paper,
"Introduction": RFA). The global average is re-centred and masked each round; the clustering
runs on the masked, aligned pixels as feature vectors (squared Euclidean distance), with any size
rule of the engine.

The aligned images are the clustering's features, so RFA holds ``(N, L²)`` in memory (a
:class:`PreparedImages` input is read whole); on P processes each aligns its share of the images
and the reference sums, features and poses are all-reduced. A resumed run recomputes the
reference rounds (deterministic) and continues the clustering from its saved state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.classify.distributed import RunHooks, gather_owned
from ackmeans_torch.classify.mra import recentre, run_engine
from ackmeans_torch.classify.outputs import Classification
from ackmeans_torch.classify.preprocess import PreparedImages
from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.align import align
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import apply_transform


def classify_rfa(images: Tensor | PreparedImages, *, n_classes: int, rule, mask_radius: float,
                 align_options: dict, n_reference_rounds: int = 5, init: str = "random",
                 max_iter: int = 20, sigma0: float = 0.01, batch_size: int = 1,
                 chunk_size: int = 4096, seed: int = 0,
                 hooks: RunHooks | None = None) -> Classification:
    """RFA classification of preprocessed ``images (N, L, L)`` (module docstring; the signature
    is the pipelines' common one, ``classify/mra.py``)."""
    if n_reference_rounds < 1:
        raise InputError(f"pipeline.n_reference_rounds={n_reference_rounds} must be >= 1")
    hooks = hooks or RunHooks()
    if isinstance(images, PreparedImages):
        images = images.materialise()
    n, size = images.shape[0], images.shape[-1]
    mask = circular_mask(size, mask_radius, device=images.device, dtype=images.dtype)
    own = hooks.shard(torch.arange(n)).to(images.device)
    owned = torch.zeros(n, dtype=torch.bool, device=images.device)
    owned[own] = True
    mine = images[own]
    reference = recentre(hooks.reduce({"sum": mine.sum(0, keepdim=True)})["sum"] / n, mask) * mask
    for _ in range(n_reference_rounds):
        best = align(mine, reference, mode="best", mask_radius=mask_radius, **align_options)
        aligned = apply_transform(mine, best.angle, best.shift, best.mirror, inverse=True) * mask
        total = hooks.reduce({"sum": aligned.sum(0, keepdim=True)})["sum"]
        reference = recentre(total / n, mask) * mask
    features = images.new_zeros(n, size * size)
    features[own] = aligned.reshape(len(own), -1)
    poses = {"angle": images.new_zeros(n), "shift": images.new_zeros(n, 2),
             "mirror": torch.zeros(n, dtype=torch.bool, device=images.device)}
    for key in poses:
        poses[key][own] = getattr(best, key)
    gathered = gather_owned({"features": features, **poses}, owned, hooks.reduce)
    features = gathered.pop("features")
    provider = SquaredEuclidean(features)
    result = run_engine(provider, n_classes=n_classes, rule=rule, init=init, max_iter=max_iter,
                        sigma0=sigma0, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                        hooks=hooks, poses=lambda: gathered, device=features.device)
    distance = (features - result.centers[result.labels]).pow(2).sum(1)
    return Classification(labels=result.labels, averages=result.centers.reshape(-1, size, size),
                          sizes=result.sizes, history=result.history, converged=result.converged,
                          distance=distance, **gathered)
