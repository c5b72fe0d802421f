"""Reference-free alignment (SPIDER-style RFA): align every image to the iteratively refined
global average, then cluster the aligned images without further alignment (paper,
"Introduction": RFA). The global average is re-centred and masked each round; the clustering
runs on the masked, aligned pixels as feature vectors (squared Euclidean distance), with any size
rule of the engine.

Everything is read chunk by chunk: the reference rounds sum the aligned images of each chunk,
and the clustering's features (each image turned into the global frame by its pose, masked) are
made per chunk when the engine asks for them (:class:`FramedImages`), kept in memory only while
they fit the in-memory budget of ``data/prepared.py`` — so a stack larger than memory runs, and
per-image state is the N-sized poses. On P processes each aligns its share of the images and the
reference sums and poses are all-reduced. A resumed run recomputes the reference rounds
(deterministic) and continues the clustering from its saved state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification, recentre
from ackmeans_torch.classify.distributed import RunHooks, gather_owned
from ackmeans_torch.classify.run import Pipeline, poses_after
from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.prepared import IN_MEMORY_BYTES
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import check_int
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import Poses


class FramedImages(SquaredEuclidean):
    """The images of ``source`` turned into the global frame by their ``poses`` and masked, as
    ``(N, L²)`` feature vectors made per chunk on request. ``keep``: hold every chunk made (the
    features then cost their memory once); otherwise only the last one, which the engine's
    statistics call reuses right after its dissimilarity call."""

    def __init__(self, source: ImageSource, poses: Poses, mask: Tensor, *, keep: bool) -> None:
        self._read, self.poses, self.mask, self.keep = source.images, poses, mask, keep
        self.n_items = len(source)
        self._made: dict[bytes, Tensor] = {}

    def _rows(self, index: Tensor) -> Tensor:
        key = index.cpu().numpy().tobytes()
        if key not in self._made:
            if not self.keep:
                self._made.clear()
            frame = self.poses.select(index.to(self.mask.device)).to_class_frame(self._read(index))
            self._made[key] = (frame * self.mask).reshape(len(index), -1)
        return self._made[key]

    def _norms(self, index: Tensor, rows: Tensor) -> Tensor:
        return (rows * rows).sum(1)

    def items(self, index: Tensor) -> Tensor:
        return self._rows(index)


@dataclass(frozen=True)
class RFA(Pipeline):
    """Align to the refined global average ``n_reference_rounds`` times, then cluster."""

    n_reference_rounds: int = 5
    label = "RFA"

    def __post_init__(self) -> None:
        check_int("pipeline.n_reference_rounds", self.n_reference_rounds, 1)

    def classify(self, images: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 align: AlignOptions, mask_radius: float, hooks: RunHooks) -> Classification:
        n, size, device = len(images), images.box_size, images.device
        mask = circular_mask(size, mask_radius, device=device)
        own = hooks.shard(torch.arange(n))
        chunks = own.split(options.chunk_size)
        poses = Poses.zeros(n, device=device)  # filled on this process's images

        def global_average(framed: bool) -> Tensor:
            """Re-centred, masked mean over every process's images (in their current frames)."""
            total = torch.zeros(1, size, size, device=device)
            for index in chunks:
                x = images.images(index)
                if framed:
                    x = poses.select(index.to(device)).to_class_frame(x) * mask
                total += x.sum(0, keepdim=True)
            return recentre(hooks.reduce({"sum": total})["sum"] / n, mask) * mask

        reference = global_average(framed=False)
        for round_ in range(self.n_reference_rounds):
            for index in chunks:
                poses.put(index.to(device), align.align(images.images(index), reference,
                                                        mode="best",
                                                        mask_radius=mask_radius).poses)
            if round_ < self.n_reference_rounds - 1:  # the last round's poses give the features
                reference = global_average(framed=True)
        owned = torch.zeros(n, dtype=torch.bool, device=device)
        owned[own.to(device)] = True
        poses = Poses(**gather_owned(poses.as_dict(), owned, hooks.reduce))
        provider = FramedImages(images, poses, mask, keep=n * size * size * 4 <= IN_MEMORY_BYTES)
        result = options.fit(provider, rule=rule, device=device, shard=hooks.shard,
                             reduce=hooks.reduce, start=None if hooks.resume is None
                             else hooks.resume.state,
                             on_iteration=poses_after(hooks, lambda: poses))
        distance = torch.zeros(n, device=device)
        for index in chunks:
            rows = index.to(device)
            distance[rows] = (provider.items(index) - result.centers[result.labels[rows]]
                              ).pow(2).sum(1)
        poses.distance = gather_owned({"d": distance}, owned, hooks.reduce)["d"]
        return Classification(labels=result.labels, poses=poses,
                              averages=result.centers.reshape(-1, size, size),
                              sizes=result.sizes, history=result.history,
                              converged=result.converged)
