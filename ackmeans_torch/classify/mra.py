"""Multi-reference alignment (SPARX-style MRA) as a dissimilarity for the clustering engine.

The ACK-means paper's MRA: repeat {align every image to the current class averages → the N×K
aligned distances → assignment by the chosen objective → new class averages from the aligned
images}. Here the repeat loop is ``cluster.engine.fit_clusters``; this module supplies

* ``dissimilarity(index, centers)``: the aligned squared distances ``min_T ‖x − T(μ)‖²``
  (``ops/align.py``) of images ``index`` to the references made from ``centers``;
* ``class_sums(index, labels, centers)``: the sum, per class, of the images brought into their
  class reference's frame (``ops.transform.apply_transform(..., inverse=True)``), masked — so
  a centroid, sums / counts, is the class average of aligned images.

References: each class average is re-centred (its centre of mass moved to the box centre, so the
averages cannot drift with the shift search) and masked before it is aligned to; the images'
poses are found against, and the next averages built in, those re-centred frames. The pose of an
image in its final class is the one of the last assignment pass, which the returned averages were
built with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.classify.outputs import Classification
from ackmeans_torch.cluster.engine import Dissimilarity, fit_clusters
from ackmeans_torch.cluster.init import initial_centers
from ackmeans_torch.ops.align import Alignment, align
from ackmeans_torch.ops.fourier import shift_images
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.transform import apply_transform


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


class AlignedImages(Dissimilarity):
    """MRA dissimilarity of preprocessed images ``(N, L, L)`` (module docstring).

    ``align_options``: keyword arguments of ``ops.align.align`` (n_angles, max_shift,
    shift_step, mirror, max_radius, metric, memory_bytes). ``mask_radius`` px: the particle
    mask, used by the aligner and on the averages.

    After a pass, ``poses`` holds the pose of each image in the class it was put in:
    ``angle (N,)`` rad, ``shift (N, 2)`` px, ``mirror (N,)`` bool, ``distance (N,)``.
    """

    def __init__(self, images: Tensor, *, mask_radius: float, recentre_references: bool = True,
                 **align_options) -> None:
        self.images = images
        self.n_items = images.shape[0]
        self.mask_radius = float(mask_radius)
        self.mask = circular_mask(images.shape[-1], mask_radius, device=images.device,
                                  dtype=images.dtype)
        self.recentre_references = recentre_references
        self.align_options = align_options
        self._centers: Tensor | None = None
        self._references: Tensor | None = None
        self._cache: dict[bytes, Alignment] = {}
        n = self.n_items
        self.poses = {"angle": images.new_zeros(n), "shift": images.new_zeros(n, 2),
                      "mirror": torch.zeros(n, dtype=torch.bool, device=images.device),
                      "distance": images.new_zeros(n)}

    def references(self, centers: Tensor) -> Tensor:
        """The re-centred, masked references made from ``centers (K, L, L)`` (cached per
        centroid tensor, which the engine replaces after every update)."""
        if centers is not self._centers:
            refs = recentre(centers, self.mask) if self.recentre_references else centers
            self._centers, self._references, self._cache = centers, refs * self.mask, {}
        return self._references

    def _align(self, index: Tensor, centers: Tensor) -> Alignment:
        refs = self.references(centers)
        key = index.cpu().numpy().tobytes()
        if key not in self._cache:
            self._cache[key] = align(self.images[index.to(self.images.device)], refs, mode="all",
                                     mask_radius=self.mask_radius, **self.align_options)
        return self._cache[key]

    def items(self, index: Tensor) -> Tensor:
        return self.images[index.to(self.images.device)] * self.mask

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        return self._align(index, centers).distances

    def class_sums(self, index: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
        result = self._align(index, centers)
        # each (index, centers) pair is summed once per pass: free its N×K poses now
        self._cache.pop(index.cpu().numpy().tobytes(), None)
        rows = torch.arange(len(index), device=labels.device)
        angle, shift = result.angle[rows, labels], result.shift[rows, labels]
        mirror = result.mirror[rows, labels]
        dev_index = index.to(self.images.device)
        self.poses["angle"][dev_index] = angle
        self.poses["shift"][dev_index] = shift
        self.poses["mirror"][dev_index] = mirror
        self.poses["distance"][dev_index] = result.distances[rows, labels]
        aligned = apply_transform(self.images[dev_index], angle, shift, mirror, inverse=True)
        sums = torch.zeros_like(centers)
        return sums.index_add_(0, labels.to(centers.device), aligned * self.mask)


def classify_mra(images: Tensor, *, n_classes: int, rule, mask_radius: float,
                 align_options: dict, init: str = "random", max_iter: int = 20,
                 sigma0: float = 0.01, batch_size: int = 1, chunk_size: int = 1024,
                 seed: int = 0) -> Classification:
    """MRA classification of preprocessed ``images (N, L, L)`` into ``n_classes`` with the size
    rule ``rule`` (``cluster/penalties.py``: ACK-means, K-means, SPIDER, EQK, any penalty).
    Initial references: ``init`` ("random": k random images, the paper's; "k-means++")."""
    generator = torch.Generator().manual_seed(seed)
    provider = AlignedImages(images, mask_radius=mask_radius, **align_options)
    centers = initial_centers(provider, n_classes, method=init, generator=generator)
    result = fit_clusters(provider, centers, rule=rule, max_iter=max_iter, sigma0=sigma0,
                          batch_size=batch_size, chunk_size=chunk_size, generator=generator)
    return Classification(labels=result.labels, averages=result.centers, sizes=result.sizes,
                          history=result.history, converged=result.converged, **provider.poses)
