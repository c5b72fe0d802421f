"""MSA/MRA (EMAN2 e2refine2d-style) classification, with any size rule of the engine.

1. Invariant features: the power spectrum of an image does not change when the image shifts,
   and the magnitudes of its angular Fourier coefficients do not change when it turns, so
   ``|FFT_θ |X(r, θ)|²|`` on the polar grid (``ops/polar.py``) is rotation- and
   translation-invariant (it also cannot tell an image from its mirror).
2. MSA: principal components of those features (``torch.pca_lowrank``) → initial classes by the
   engine in that space → initial class averages, each from its members aligned to the member
   nearest the class centre.
3. Rounds of MRA: align every image to its best class average (``mode="best"``), take the
   principal components of the aligned, masked images, and re-cluster in that space starting from
   the current classes; new averages from the aligned images (re-centred, masked).
Poses are finally recomputed against each image's own class average, so the reported pose is the
one that average is built with.

This pipeline chains several engine runs, so it runs in one process and cannot resume from a
checkpoint (``pipeline=mra`` or ``rfa`` can): it says so (``resumable``/``distributed``), and
the run refuses such a request before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ackmeans_torch.classify.common import Classification, class_frame_averages, class_means
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


def invariant_features(images: Tensor, *, n_angles: int, mask_radius: float) -> Tensor:
    """``(N, F)`` rotation/translation-invariant features of ``images (N, L, L)`` (step 1). The
    square root compresses their range so that low frequencies do not drown the rest; a log did
    worse (it blows up the interpolation noise of near-zero high-order coefficients: a turned
    copy then looked half as far away as another view, measured)."""
    polar = polar_transform(images, n_angles=n_angles, mask_radius=mask_radius)
    power = polar.values.abs() ** 2  # (N, R, M/2): period π in θ, so the half circle suffices
    return torch.fft.rfft(power, dim=-1).abs().sqrt().reshape(len(images), -1)


def principal_components(x: Tensor, n_components: int, *, seed: int) -> Tensor:
    """Scores ``(N, q)`` of ``x (N, F)`` on its first ``q`` principal components."""
    q = min(n_components, *x.shape)
    centred = x - x.mean(0)
    torch.manual_seed(seed)  # pca_lowrank draws its sketch from the global generator
    _, _, basis = torch.pca_lowrank(centred, q=q, center=False, niter=4)
    return centred @ basis


def _own_class_poses(images: Tensor, labels: Tensor, references: Tensor, *, mask_radius: float,
                     align: AlignOptions) -> Poses:
    """Pose and distance of every image against its own class's reference (one small alignment
    per class instead of N × K)."""
    poses = Poses.zeros(len(images), device=images.device, dtype=images.dtype)
    for j in labels.unique():
        members = (labels == j).nonzero().squeeze(1)
        poses.put(members, align.align(images[members], references[j: j + 1], mode="best",
                                       mask_radius=mask_radius).poses)
    return poses


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
        stack = images.to_tensor(options.chunk_size)
        n_classes = options.n_classes
        mask = circular_mask(stack.shape[-1], mask_radius, device=stack.device, dtype=stack.dtype)

        generator = torch.Generator().manual_seed(options.seed)

        def cluster(features: Tensor, start: str | Tensor):
            return replace(options, init=start).fit(SquaredEuclidean(features), rule=rule,
                                                    generator=generator)

        features = principal_components(
            invariant_features(stack, n_angles=align.n_angles, mask_radius=mask_radius),
            self.n_components, seed=options.seed)
        result = cluster(features, options.init)
        labels, history = result.labels, list(result.history)
        # initial references: per class, the member nearest the class centre in feature space
        gap = (features - class_means(features, labels, n_classes)[labels]).pow(2).sum(1)
        medoid = torch.zeros(n_classes, dtype=torch.long, device=stack.device)
        for j in labels.unique():
            members = (labels == j).nonzero().squeeze(1)
            medoid[j] = members[gap[members].argmin()]
        poses = _own_class_poses(stack, labels, stack[medoid] * mask, mask_radius=mask_radius,
                                 align=align)
        references = class_frame_averages(stack, labels, poses, mask, n_classes)
        for _ in range(self.n_rounds):
            poses = align.align(stack, references, mode="best", mask_radius=mask_radius).poses
            aligned = poses.to_class_frame(stack) * mask
            features = principal_components(aligned.reshape(len(stack), -1), self.n_components,
                                            seed=options.seed)
            result = cluster(features, class_means(features, labels, n_classes))
            labels = result.labels
            history += result.history
            references = class_frame_averages(stack, labels, poses, mask, n_classes)
        poses = _own_class_poses(stack, labels, references, mask_radius=mask_radius, align=align)
        return Classification(labels=labels, poses=poses,
                              averages=class_frame_averages(stack, labels, poses, mask, n_classes),
                              sizes=torch.bincount(labels, minlength=n_classes), history=history,
                              converged=result.converged)
