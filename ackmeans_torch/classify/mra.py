"""Multi-reference alignment (SPARX-style MRA) as a dissimilarity for the clustering engine.

The ACK-means paper's MRA: repeat {align every image to the current class averages → the N×K
aligned distances → assignment by the chosen objective → new class averages from the aligned
images}. Here the repeat loop is ``cluster.engine.fit_clusters``; this module supplies

* ``dissimilarity(index, centers)``: the aligned squared distances ``min_T ‖x − T(μ)‖²``
  (``ops/align.py``) of images ``index`` to the references made from ``centers``;
* ``statistics(index, labels, centers)``: the sum, per class, of the images brought into their
  class reference's frame (``ops.transform.Poses.to_class_frame``), masked — so the engine's
  default M-step, sums / counts, is the class average of aligned images.

References: each class average is re-centred (``classify/common.py``) and masked before it is
aligned to; the images' poses are found against, and the next averages built in, those
re-centred frames. The pose of an image in its final class is the one of the last assignment
pass, which the returned averages were built with.

Images come from any :class:`~ackmeans_torch.data.source.ImageSource`: held in memory, or read
and preprocessed chunk by chunk from a memory-mapped stack each pass (per-image state is only the
N-sized poses). Each chunk is read once per pass: the dissimilarity call keeps it for the
statistics that follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification, recentre
from ackmeans_torch.classify.distributed import RunHooks, gather_owned
from ackmeans_torch.classify.run import Pipeline, poses_after
from ackmeans_torch.cluster.engine import Dissimilarity
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.ops.align import Alignment, AlignOptions
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import Poses


class AlignedImages(Dissimilarity):
    """MRA dissimilarity of the preprocessed images of ``source`` (module docstring).

    ``align``: the rotation/translation search; ``mask_radius`` px: the particle mask, used by the
    aligner and on the averages. ``on_items(done, total)``: told after each chunk how far the
    pass is (the index after the chunk's last image), for a progress bar. After a pass, ``poses``
    holds the pose of each image in the
    class it was put in, on the images this process summed in the current pass (``owned``, reset
    when the centroids change); :meth:`gathered_poses` completes them across processes.
    """

    def __init__(self, source: ImageSource, *, align: AlignOptions, mask_radius: float,
                 recentre_references: bool = True,
                 on_items: Callable[[int, int], None] | None = None) -> None:
        self._read, device = source.images, source.device
        self.n_items, size = len(source), source.box_size
        self.mask_radius = float(mask_radius)
        self.mask = circular_mask(size, mask_radius, device=device)
        self.recentre_references = recentre_references
        self.align = align
        self.on_items = on_items
        self._centers: Tensor | None = None
        self._references: Tensor | None = None
        self._cache: dict[bytes, tuple[Tensor, Alignment]] = {}
        self.poses = Poses.zeros(self.n_items, device=device)
        self.owned = torch.zeros(self.n_items, dtype=torch.bool, device=device)

    def references(self, centers: Tensor) -> Tensor:
        """The re-centred, masked references made from ``centers (K, L, L)`` (cached per
        centroid tensor, which the engine replaces after every update)."""
        if centers is not self._centers:  # new centroids: a new pass begins
            refs = recentre(centers, self.mask) if self.recentre_references else centers
            self._centers, self._references, self._cache = centers, refs * self.mask, {}
            self.owned.zero_()
        return self._references

    def _align(self, index: Tensor, centers: Tensor) -> tuple[Tensor, Alignment]:
        refs = self.references(centers)
        key = index.cpu().numpy().tobytes()
        if key not in self._cache:
            images = self._read(index)
            self._cache[key] = images, self.align.align(images, refs, mode="all",
                                                        mask_radius=self.mask_radius)
        return self._cache[key]

    def items(self, index: Tensor) -> Tensor:
        return self._read(index) * self.mask

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        return self._align(index, centers)[1].distances

    def statistics(self, index: Tensor, labels: Tensor, centers: Tensor) -> dict[str, Tensor]:
        sums = torch.zeros_like(centers)
        if not len(index):  # a rank whose shard of this chunk is empty
            return {"sums": sums}
        images, result = self._align(index, centers)
        # each (index, centers) pair is summed once per pass: free its images and N×K poses now
        self._cache.pop(index.cpu().numpy().tobytes(), None)
        poses = result.select(labels)
        dev_index = index.to(self.mask.device)
        self.poses.put(dev_index, poses)
        self.owned[dev_index] = True
        aligned = poses.to_class_frame(images)
        if self.on_items is not None:
            # the statistics close a chunk's work once per pass (the d_c probe never gets here)
            self.on_items(int(index.max()) + 1, self.n_items)
        return {"sums": sums.index_add_(0, labels.to(centers.device), aligned * self.mask)}

    def gathered_poses(self, reduce) -> Poses:
        """The poses of every image from the last pass, from all processes (a collective:
        every rank calls it); ``owned`` marks this process's images of the current pass."""
        return Poses(**gather_owned(self.poses.as_dict(), self.owned, reduce))


@dataclass(frozen=True)
class MRA(Pipeline):
    """Align every image to the class averages every iteration (SPARX MRA, the paper's)."""

    label = "MRA"

    def classify(self, images: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 align: AlignOptions, mask_radius: float, hooks: RunHooks) -> Classification:
        provider = AlignedImages(images, align=align, mask_radius=mask_radius,
                                 on_items=hooks.on_items)
        if hooks.resume is not None:
            provider.poses = hooks.resume.poses.to(images.device)
        result = options.fit(provider, rule=rule, device=images.device, shard=hooks.shard,
                             reduce=hooks.reduce, start=None if hooks.resume is None
                             else hooks.resume.state,
                             on_iteration=poses_after(hooks, lambda: provider.gathered_poses(
                                 hooks.reduce)))
        return Classification(labels=result.labels, poses=provider.gathered_poses(hooks.reduce),
                              averages=result.centers, sizes=result.sizes,
                              history=result.history, converged=result.converged)
