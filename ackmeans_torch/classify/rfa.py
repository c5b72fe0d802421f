"""Reference-free alignment (SPIDER-style RFA): align every image to the iteratively refined
global average, then cluster the aligned images without further alignment (paper,
"Introduction": RFA). The global average is re-centred and masked each round; the clustering
runs on the masked, aligned pixels as feature vectors (squared Euclidean distance), with any size
rule of the engine.

The aligned images are the clustering's features, so RFA holds ``(N, L²)`` in memory (a source
read per chunk is read whole); on P processes each aligns its share of the images and the
reference sums, features and poses are all-reduced. A resumed run recomputes the reference rounds
(deterministic) and continues the clustering from its saved state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ackmeans_torch.classify.common import Classification, recentre
from ackmeans_torch.classify.distributed import RunHooks, gather_owned
from ackmeans_torch.classify.run import Pipeline, poses_after
from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import check_int
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import Poses


@dataclass(frozen=True)
class RFA(Pipeline):
    """Align to the refined global average ``n_reference_rounds`` times, then cluster."""

    n_reference_rounds: int = 5
    label = "RFA"

    def __post_init__(self) -> None:
        check_int("pipeline.n_reference_rounds", self.n_reference_rounds, 1)

    def classify(self, images: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 align: AlignOptions, mask_radius: float, hooks: RunHooks) -> Classification:
        stack = images.to_tensor(options.chunk_size)
        n, size = stack.shape[0], stack.shape[-1]
        mask = circular_mask(size, mask_radius, device=stack.device, dtype=stack.dtype)
        own = hooks.shard(torch.arange(n)).to(stack.device)
        owned = torch.zeros(n, dtype=torch.bool, device=stack.device)
        owned[own] = True
        mine = stack[own]

        def global_average(part):  # re-centred, masked mean over every process's images
            return recentre(hooks.reduce({"sum": part.sum(0, keepdim=True)})["sum"] / n,
                            mask) * mask

        reference, aligned = global_average(mine), mine
        poses = Poses.zeros(len(mine), device=stack.device)
        for _ in range(self.n_reference_rounds):
            poses = align.align(mine, reference, mode="best", mask_radius=mask_radius).poses
            aligned = poses.to_class_frame(mine) * mask
            reference = global_average(aligned)
        features = stack.new_zeros(n, size * size)
        features[own] = aligned.reshape(len(own), -1)
        full = Poses.zeros(n, device=stack.device)
        full.put(own, poses)
        gathered = gather_owned({"features": features, **full.as_dict()}, owned, hooks.reduce)
        provider = SquaredEuclidean(gathered.pop("features"))
        poses = Poses(**gathered)
        result = options.fit(provider, rule=rule, device=stack.device, shard=hooks.shard,
                             reduce=hooks.reduce, start=None if hooks.resume is None
                             else hooks.resume.state,
                             on_iteration=poses_after(hooks, lambda: poses))
        poses.distance = (provider.x - result.centers[result.labels]).pow(2).sum(1)
        return Classification(labels=result.labels, poses=poses,
                              averages=result.centers.reshape(-1, size, size),
                              sizes=result.sizes, history=result.history,
                              converged=result.converged)
