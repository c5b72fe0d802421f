"""MSA/MRA (EMAN2 e2refine2d-style) classification, with any size rule of the engine.

1. Invariant features: the power spectrum of an image does not change when the image shifts,
   and the magnitudes of its angular Fourier coefficients do not change when it turns, so
   ``|FFT_θ |X(r, θ)|²|`` on the polar grid (``ops/polar.py``) is rotation- and
   translation-invariant (it also cannot tell an image from its mirror).
2. MSA: principal components of those features → initial classes by the engine in that space →
   initial class averages, each from its members aligned to the member nearest the class centre.
3. Rounds of MRA: align every image to its best class average (``mode="best"``), take the
   principal components of the aligned, masked images, and re-cluster in that space starting from
   the current classes; new averages from the aligned images (re-centred, masked).
Poses are finally recomputed against each image's own class average (``ops.align.align_pairs``),
so the reported pose is the one that average is built with.

Memory: the images are read chunk by chunk (``chunk_size`` of the options) from the source on
every pass, like MRA, and never held all at once. The principal components come from the
feature covariance (F × F, F = features per image) summed over chunks (:class:`Covariance`),
the scores from a second pass; per image only the ``n_components`` scores, the label and the
pose are kept, so a 200k stack runs in the memory of a small one.

This pipeline chains several engine runs, so it runs in one process and cannot resume from a
checkpoint (``pipeline=mra`` or ``rfa`` can): it says so (``resumable``/``distributed``), and
the run refuses such a request before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification, class_means, recentre
from ackmeans_torch.classify.distributed import RunHooks
from ackmeans_torch.classify.run import Pipeline
from ackmeans_torch.cluster.engine import SquaredEuclidean
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import check_int
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.polar import circular_mask, polar_transform
from ackmeans_torch.ops.transform import Poses


_FEATURE_BLOCK = 256


def invariant_features(images: Tensor, *, n_angles: int, mask_radius: float) -> Tensor:
    """``(N, F)`` rotation/translation-invariant features of ``images (N, L, L)`` (step 1). The
    square root compresses their range so that low frequencies do not drown the rest; a log did
    worse (it blows up the interpolation noise of near-zero high-order coefficients: a turned
    copy then looked half as far away as another view, measured)."""
    features = []
    # blocks of images: the polar transform's padded spectra take 32·L² bytes per image
    for block in images.split(_FEATURE_BLOCK):
        polar = polar_transform(block, n_angles=n_angles, mask_radius=mask_radius)
        power = polar.values.abs() ** 2  # (B, R, M/2): period π in θ, so the half circle suffices
        features.append(torch.fft.rfft(power, dim=-1).abs().sqrt().reshape(len(block), -1))
    return torch.cat(features)


class Covariance:
    """Mean and covariance of feature rows ``(B, F)`` summed over chunks (float64 sums, rows
    centred on the first chunk's mean so the sums do not cancel), and the principal axes from
    them: ``add`` every chunk, then ``basis``, then ``scores`` of every chunk."""

    def __init__(self) -> None:
        self.n, self.origin, self.sum, self.outer = 0, None, None, None

    def add(self, x: Tensor) -> None:
        if self.origin is None:
            self.origin = x.mean(0)
            self.sum = x.new_zeros(x.shape[1], dtype=torch.float64)
            self.outer = x.new_zeros((x.shape[1], x.shape[1]), dtype=torch.float64)
        centred = x - self.origin
        self.n += len(x)
        self.sum += centred.sum(0, dtype=torch.float64)
        self.outer += (centred.T @ centred).double()

    def basis(self, n_components: int, *, seed: int) -> tuple[Tensor, Tensor]:
        """``(mean (F,), axes (F, q))``: the first ``q = min(n_components, F, n)`` principal axes
        (``torch.svd_lowrank`` of the covariance, 4 power iterations, 10 extra sketch columns so
        that axes of nearly equal variance are still told apart)."""
        offset = self.sum / self.n
        covariance = self.outer / self.n - torch.outer(offset, offset)
        q = min(n_components, covariance.shape[0], self.n)
        torch.manual_seed(seed)  # svd_lowrank draws its sketch from the global generator
        axes, _, _ = torch.svd_lowrank(covariance, q=min(q + 10, covariance.shape[0]), niter=4)
        return self.origin + offset.to(self.origin.dtype), axes[:, :q].to(self.origin.dtype)


def _chunks(source: ImageSource, chunk_size: int):
    for index, images in source.chunks(chunk_size):
        yield torch.as_tensor(index, device=images.device), images


def _aligned(images: Tensor, poses: Poses, mask: Tensor) -> Tensor:
    return (poses.to_class_frame(images) * mask).reshape(len(images), -1)


def _averages(source: ImageSource, labels: Tensor, poses: Poses, mask: Tensor, n_classes: int,
              chunk_size: int) -> Tensor:
    """``classify.common.class_frame_averages`` of the whole source, summed chunk by chunk."""
    sums = mask.new_zeros((n_classes, *mask.shape))
    for index, images in _chunks(source, chunk_size):
        sums.index_add_(0, labels[index], poses.select(index).to_class_frame(images) * mask)
    counts = torch.bincount(labels, minlength=n_classes).clamp_min(1).to(sums.dtype)
    return recentre(sums / counts[:, None, None], mask) * mask


def _principal_scores(source: ImageSource, features, n_components: int, *, seed: int,
                      chunk_size: int) -> Tensor:
    """``(N, q)`` scores on the first principal axes of ``features(index, images) → (B, F)``,
    in two passes over the source."""
    covariance = Covariance()
    for index, images in _chunks(source, chunk_size):
        covariance.add(features(index, images))
    mean, axes = covariance.basis(n_components, seed=seed)
    return torch.cat([(features(index, images) - mean) @ axes
                      for index, images in _chunks(source, chunk_size)])


@dataclass(frozen=True)
class MSAMRA(Pipeline):
    """MSA start (``n_components`` principal components of invariant features), then
    ``n_rounds`` rounds of alignment to the class averages with clustering in the PCA space of the
    aligned images (module docstring). The options' ``max_iter``/``sigma0`` bound each
    clustering."""

    n_components: int = 20
    n_rounds: int = 4
    label = "MSA/MRA"
    resumable = False
    distributed = False

    def __post_init__(self) -> None:
        check_int("pipeline.n_components", self.n_components, 1)
        check_int("pipeline.n_rounds", self.n_rounds, 0)

    def classify(self, images: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 align: AlignOptions, mask_radius: float, hooks: RunHooks) -> Classification:
        n_classes, chunk = options.n_classes, options.chunk_size
        mask = circular_mask(images.box_size, mask_radius, device=images.device)
        generator = torch.Generator().manual_seed(options.seed)

        def cluster(features: Tensor, start: str | Tensor):
            return replace(options, init=start).fit(SquaredEuclidean(features), rule=rule,
                                                    generator=generator)

        features = _principal_scores(
            images, lambda _, x: invariant_features(x, n_angles=align.n_angles, mask_radius=mask_radius),
            self.n_components, seed=options.seed, chunk_size=chunk)
        result = cluster(features, options.init)
        labels, history = result.labels, list(result.history)
        # initial references: per class, the member nearest the class centre in feature space
        gap = (features - class_means(features, labels, n_classes)[labels]).pow(2).sum(1)
        medoid = torch.zeros(n_classes, dtype=torch.long, device=labels.device)
        for j in labels.unique():
            members = (labels == j).nonzero().squeeze(1)
            medoid[j] = members[gap[members].argmin()]
        references = images.images(medoid.cpu().numpy()) * mask
        references = self._averages_against(images, labels, references, align, mask_radius, mask,
                                            chunk)[1]
        for _ in range(self.n_rounds):
            poses = Poses.zeros(len(images), device=mask.device)
            for index, chunk_images in _chunks(images, chunk):
                poses.put(index, align.align(chunk_images, references, mode="best",
                                             mask_radius=mask_radius).poses)
            features = _principal_scores(
                images, lambda index, x: _aligned(x, poses.select(index), mask),
                self.n_components, seed=options.seed, chunk_size=chunk)
            result = cluster(features, class_means(features, labels, n_classes))
            labels = result.labels
            history += result.history
            references = _averages(images, labels, poses, mask, n_classes, chunk)
        poses, averages = self._averages_against(images, labels, references, align, mask_radius,
                                                 mask, chunk)
        return Classification(labels=labels, poses=poses, averages=averages,
                              sizes=torch.bincount(labels, minlength=n_classes), history=history,
                              converged=result.converged)

    @staticmethod
    def _averages_against(images: ImageSource, labels: Tensor, references: Tensor,
                          align: AlignOptions, mask_radius: float, mask: Tensor,
                          chunk: int) -> tuple[Poses, Tensor]:
        """Each image's pose against its own class's reference (its pair only, chunk by chunk)
        and the class averages built with those poses."""
        poses = Poses.zeros(len(images), device=mask.device)
        for index, chunk_images in _chunks(images, chunk):
            poses.put(index, align.align_pairs(chunk_images, references, labels[index],
                                               mask_radius=mask_radius))
        return poses, _averages(images, labels, poses, mask, len(references), chunk)
