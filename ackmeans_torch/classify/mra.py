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

Images come either as a tensor in memory or as a :class:`~ackmeans_torch.classify.preprocess.
PreparedImages` view of a (memory-mapped) source that is read and preprocessed chunk by chunk
each pass (issue 7: larger than memory; per-image state is only the N-sized poses). Each chunk
is read once per pass: the dissimilarity call keeps it for the class sums that follow.

Every pipeline function (``classify_mra``, ``classify_rfa``, ``classify_msa``) has the same
signature: ``(images, *, n_classes, rule, mask_radius, align_options, init, max_iter, sigma0,
batch_size, chunk_size, seed, hooks)`` plus its own keyword options, and returns a
:class:`~ackmeans_torch.classify.outputs.Classification`; ``hooks``
(:class:`~ackmeans_torch.classify.distributed.RunHooks`) runs it on P processes, checkpoints it
and continues a saved run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ackmeans_torch.classify.distributed import RunHooks, gather_owned
from ackmeans_torch.classify.outputs import Classification
from ackmeans_torch.classify.preprocess import PreparedImages
from ackmeans_torch.cluster.engine import Dissimilarity, LoopState, fit_clusters
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
    """MRA dissimilarity of preprocessed images ``(N, L, L)``: a tensor, or a
    :class:`PreparedImages` read per chunk (module docstring).

    ``align_options``: keyword arguments of ``ops.align.align`` (n_angles, max_shift,
    shift_step, mirror, max_radius, metric, memory_bytes). ``mask_radius`` px: the particle
    mask, used by the aligner and on the averages.

    After a pass, ``poses`` holds the pose of each image in the class it was put in:
    ``angle (N,)`` rad, ``shift (N, 2)`` px, ``mirror (N,)`` bool, ``distance (N,)`` — on the
    images this process summed in the current pass (``owned``, reset when the centroids
    change); :meth:`gathered_poses` completes them across processes.
    """

    def __init__(self, images: Tensor | PreparedImages, *, mask_radius: float,
                 recentre_references: bool = True, **align_options) -> None:
        if isinstance(images, PreparedImages):
            self._read, device = images.read, images.device
        else:
            self._read, device = (lambda index: images[index.to(images.device)]), images.device
        self.n_items, size = images.shape[0], images.shape[-1]
        self.mask_radius = float(mask_radius)
        self.mask = circular_mask(size, mask_radius, device=device)
        self.recentre_references = recentre_references
        self.align_options = align_options
        self._centers: Tensor | None = None
        self._references: Tensor | None = None
        self._cache: dict[bytes, tuple[Tensor, Alignment]] = {}
        n = self.n_items
        self.poses = {"angle": torch.zeros(n, device=device),
                      "shift": torch.zeros(n, 2, device=device),
                      "mirror": torch.zeros(n, dtype=torch.bool, device=device),
                      "distance": torch.zeros(n, device=device)}
        self.owned = torch.zeros(n, dtype=torch.bool, device=device)

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
            self._cache[key] = images, align(images, refs, mode="all",
                                             mask_radius=self.mask_radius, **self.align_options)
        return self._cache[key]

    def items(self, index: Tensor) -> Tensor:
        return self._read(index) * self.mask

    def dissimilarity(self, index: Tensor, centers: Tensor) -> Tensor:
        return self._align(index, centers)[1].distances

    def class_sums(self, index: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
        sums = torch.zeros_like(centers)
        if not len(index):  # a rank whose shard of this chunk is empty
            return sums
        images, result = self._align(index, centers)
        # each (index, centers) pair is summed once per pass: free its images and N×K poses now
        self._cache.pop(index.cpu().numpy().tobytes(), None)
        rows = torch.arange(len(index), device=labels.device)
        angle, shift = result.angle[rows, labels], result.shift[rows, labels]
        mirror = result.mirror[rows, labels]
        dev_index = index.to(self.mask.device)
        self.poses["angle"][dev_index] = angle
        self.poses["shift"][dev_index] = shift
        self.poses["mirror"][dev_index] = mirror
        self.poses["distance"][dev_index] = result.distances[rows, labels]
        self.owned[dev_index] = True
        aligned = apply_transform(images, angle, shift, mirror, inverse=True)
        return sums.index_add_(0, labels.to(centers.device), aligned * self.mask)

    def gathered_poses(self, reduce) -> dict[str, Tensor]:
        """The poses of every image from the last pass, from all processes (a collective:
        every rank calls it); ``owned`` marks this process's images of the current pass."""
        return gather_owned(self.poses, self.owned, reduce)


def run_engine(provider: Dissimilarity, *, n_classes: int, rule, init: str, max_iter: int,
               sigma0: float, batch_size: int, chunk_size: int, seed: int, hooks: RunHooks,
               poses: Callable[[], dict[str, Tensor]], device: torch.device):
    """Initial centroids and the engine loop with ``hooks`` on ``device`` (shared by the
    pipelines): ``poses()`` gives the gathered per-image poses passed to ``hooks.on_iteration``;
    a resumed run skips the initialisation and continues from ``hooks.resume``."""
    generator = torch.Generator().manual_seed(seed)
    if hooks.resume is None:
        centers = initial_centers(provider, n_classes, method=init, generator=generator,
                                  chunk_size=chunk_size, shard=hooks.shard, reduce=hooks.reduce)
        start = None
    else:
        start = hooks.resume.state
        centers = start.centers.to(device)  # a checkpoint is read onto the CPU
    callback = None
    if hooks.on_iteration is not None:
        def callback(state: LoopState) -> None:
            hooks.on_iteration(state, poses())
    return fit_clusters(provider, centers, rule=rule, max_iter=max_iter, sigma0=sigma0,
                        batch_size=batch_size, chunk_size=chunk_size, generator=generator,
                        shard=hooks.shard, reduce=hooks.reduce, on_iteration=callback,
                        start=start)


def classify_mra(images: Tensor | PreparedImages, *, n_classes: int, rule, mask_radius: float,
                 align_options: dict, init: str = "random", max_iter: int = 20,
                 sigma0: float = 0.01, batch_size: int = 1, chunk_size: int = 1024,
                 seed: int = 0, hooks: RunHooks | None = None) -> Classification:
    """MRA classification of preprocessed ``images (N, L, L)`` (a tensor, or a
    :class:`PreparedImages` read per chunk) into ``n_classes`` with the size rule ``rule``
    (``cluster/penalties.py``: ACK-means, K-means, SPIDER, EQK, any penalty).
    Initial references: ``init`` ("random": k random images, the paper's; "k-means++").
    ``hooks``: processes, checkpoints, resume (module docstring)."""
    hooks = hooks or RunHooks()
    provider = AlignedImages(images, mask_radius=mask_radius, **align_options)
    if hooks.resume is not None:
        provider.poses = {k: v.to(provider.mask.device).clone()
                          for k, v in hooks.resume.poses.items()}
    result = run_engine(provider, n_classes=n_classes, rule=rule, init=init, max_iter=max_iter,
                        sigma0=sigma0, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                        hooks=hooks, poses=lambda: provider.gathered_poses(hooks.reduce),
                        device=provider.mask.device)
    return Classification(labels=result.labels, averages=result.centers, sizes=result.sizes,
                          history=result.history, converged=result.converged,
                          **provider.gathered_poses(hooks.reduce))
