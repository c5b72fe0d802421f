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
N-sized poses). The images and the shift grid do not change between passes, so each chunk's
shifted angular spectra (``ops.align.ShiftedSpectra``, with its images) are made once and kept
while they fit :data:`~ackmeans_torch.ops.align.SPECTRA_CACHE_BYTES` in all; such a chunk is then
neither read nor transformed again, its distances take one search without poses, and the pose is
found for the assigned class only (``ops.align.align_pairs``). A chunk beyond the budget is read
once per pass and searched with every pair's pose, kept for the statistics that follow.
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
from ackmeans_torch.ops.align import (
    SPECTRA_CACHE_BYTES,
    Alignment,
    AlignOptions,
    ShiftedSpectra,
)
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import Poses


class AlignedImages(Dissimilarity):
    """MRA dissimilarity of the preprocessed images of ``source`` (module docstring).

    ``align``: the rotation/translation search; ``mask_radius`` px: the particle mask, used by the
    aligner and on the averages. ``on_items(done, total)``: told after each chunk how far the
    pass is (the index after the chunk's last image), for a progress bar. ``cache_bytes`` bounds
    the kept spectra (None: :data:`~ackmeans_torch.ops.align.SPECTRA_CACHE_BYTES`; 0 keeps none).
    After a pass, ``poses``
    holds the pose of each image in the
    class it was put in, on the images this process summed in the current pass (``owned``, reset
    when the centroids change); :meth:`gathered_poses` completes them across processes.
    """

    def __init__(self, source: ImageSource, *, align: AlignOptions, mask_radius: float,
                 recentre_references: bool = True,
                 on_items: Callable[[int, int], None] | None = None,
                 cache_bytes: int | None = None) -> None:
        self._read, device = source.images, source.device
        self.n_items, size = len(source), source.box_size
        self.mask_radius = float(mask_radius)
        self.mask = circular_mask(size, mask_radius, device=device)
        self.recentre_references = recentre_references
        self.align = align
        self.on_items = on_items
        self.cache_bytes = SPECTRA_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._centers: Tensor | None = None
        self._references: Tensor | None = None
        self._pass: dict[bytes, tuple[Tensor, Alignment]] = {}  # chunks beyond the budget
        self._kept: dict[bytes, tuple[Tensor, ShiftedSpectra]] = {}  # across passes
        self._used: set[bytes] = set()
        self.poses = Poses.zeros(self.n_items, device=device)
        self.owned = torch.zeros(self.n_items, dtype=torch.bool, device=device)

    def references(self, centers: Tensor) -> Tensor:
        """The re-centred, masked references made from ``centers (K, L, L)`` (cached per
        centroid tensor, which the engine replaces after every update)."""
        if centers is not self._centers:  # new centroids: a new pass begins
            refs = recentre(centers, self.mask) if self.recentre_references else centers
            self._centers, self._references, self._pass = centers, refs * self.mask, {}
            # spectra not asked for during the last centroids' pass (the d_c probe's) make room
            self._kept = {key: kept for key, kept in self._kept.items() if key in self._used}
            self._used = set()
            self.owned.zero_()
        return self._references

    def _kept_bytes(self) -> int:
        return sum(images.numel() * images.element_size() + spectra.nbytes
                   for images, spectra in self._kept.values())

    def _spectra(self, key: bytes, index: Tensor) -> tuple[Tensor, ShiftedSpectra] | None:
        """The kept images and spectra of chunk ``index``, made when they fit the budget."""
        if key not in self._kept:
            itemsize = self.mask.element_size()
            wanted = self.align.spectra_nbytes(self.mask.shape[-1], len(index), itemsize=itemsize) \
                + len(index) * self.mask.numel() * itemsize
            if self._kept_bytes() + wanted > self.cache_bytes:
                return None
            images = self._read(index)
            self._kept[key] = images, self.align.spectra(images, mask_radius=self.mask_radius)
        self._used.add(key)
        return self._kept[key]

    def _align(self, key: bytes, index: Tensor, centers: Tensor) -> tuple[Tensor, Alignment]:
        if key not in self._pass:
            images = self._read(index)
            self._pass[key] = images, self.align.align(images, self.references(centers), mode="all",
                                                       mask_radius=self.mask_radius)
        return self._pass[key]

    def items(self, index: Tensor) -> Tensor:
        return self._read(index) * self.mask

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        refs = self.references(centers)
        key = index.cpu().numpy().tobytes()
        kept = self._spectra(key, index)
        if kept is None:
            return self._align(key, index, centers)[1].distances
        return self.align.align(kept[1], refs, mode="distances", mask_radius=self.mask_radius)

    def statistics(self, index: Tensor, labels: Tensor, centers: Tensor) -> dict[str, Tensor]:
        sums = torch.zeros_like(centers)
        if not len(index):  # a rank whose shard of this chunk is empty
            return {"sums": sums}
        refs = self.references(centers)
        key = index.cpu().numpy().tobytes()
        labels = labels.to(refs.device)
        if key in self._kept:
            images, spectra = self._spectra(key, index)
            poses = self.align.align_pairs(spectra, refs, labels, mask_radius=self.mask_radius)
        elif key in self._pass:
            # each (index, centers) pair is summed once per pass: free its images and N×K poses now
            images, result = self._pass.pop(key)
            poses = result.select(labels)
        else:  # items never scored in this pass (a reseeded class's half): their pairs only
            images = self._read(index)
            poses = self.align.align_pairs(images, refs, labels, mask_radius=self.mask_radius)
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
