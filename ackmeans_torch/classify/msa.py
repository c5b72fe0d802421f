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
checkpoint (``pipeline=mra`` or ``rfa`` can); it says so rather than running wrongly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ackmeans_torch.classify.distributed import RunHooks
from ackmeans_torch.classify.mra import recentre
from ackmeans_torch.classify.outputs import Classification
from ackmeans_torch.classify.preprocess import PreparedImages
from ackmeans_torch.cluster.engine import SquaredEuclidean, fit_clusters
from ackmeans_torch.cluster.init import initial_centers
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.align import align
from ackmeans_torch.ops.polar import circular_mask, polar_transform
from ackmeans_torch.ops.transform import apply_transform


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
                     align_options: dict) -> dict[str, Tensor]:
    """Pose and distance of every image against its own class's reference (one small alignment
    per class instead of N × K)."""
    n = len(images)
    out = {"angle": images.new_zeros(n), "shift": images.new_zeros(n, 2),
           "mirror": torch.zeros(n, dtype=torch.bool, device=images.device),
           "distance": images.new_zeros(n)}
    for j in labels.unique():
        members = (labels == j).nonzero().squeeze(1)
        best = align(images[members], references[j : j + 1], mode="best",
                     mask_radius=mask_radius, **align_options)
        out["angle"][members], out["shift"][members] = best.angle, best.shift
        out["mirror"][members], out["distance"][members] = best.mirror, best.distance
    return out


def _class_means(values: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """``(K, ...)`` mean of ``values (N, ...)`` per label; an empty class is 0."""
    sums = values.new_zeros(n_classes, *values.shape[1:]).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=n_classes).clamp_min(1).to(values.dtype)
    return sums / counts.view(-1, *([1] * (values.ndim - 1)))


def _averages(images: Tensor, labels: Tensor, poses: dict[str, Tensor], mask: Tensor,
              n_classes: int) -> Tensor:
    aligned = apply_transform(images, poses["angle"], poses["shift"], poses["mirror"],
                              inverse=True) * mask
    return recentre(_class_means(aligned, labels, n_classes), mask) * mask


def classify_msa_mra(images: Tensor | PreparedImages, *, n_classes: int, rule,
                     mask_radius: float, align_options: dict, n_components: int = 20,
                     n_rounds: int = 4, init: str = "random", max_iter: int = 20,
                     sigma0: float = 0.01, batch_size: int = 1, chunk_size: int = 4096,
                     seed: int = 0, hooks: RunHooks | None = None) -> Classification:
    """MSA/MRA classification of preprocessed ``images (N, L, L)`` (module docstring; the
    pipelines' common signature, ``classify/mra.py``). ``max_iter``/``sigma0`` bound each
    clustering; ``n_rounds`` MRA rounds follow the MSA start."""
    hooks = hooks or RunHooks()
    if isinstance(images, PreparedImages):
        images = images.materialise()
    if hooks.resume is not None:
        raise InputError("pipeline=msa_mra cannot resume from a checkpoint; use pipeline=mra "
                         "or rfa, or start afresh (resume=false)")
    if len(hooks.shard(torch.arange(len(images)))) != len(images):
        raise InputError("pipeline=msa_mra runs in one process; use trainer=cpu/gpu, or "
                         "pipeline=mra for trainer=ddp")
    generator = torch.Generator().manual_seed(seed)
    mask = circular_mask(images.shape[-1], mask_radius, device=images.device, dtype=images.dtype)
    n_angles = align_options.get("n_angles", 128)

    def cluster(features: Tensor, start) -> tuple[Tensor, list[dict], bool]:
        provider = SquaredEuclidean(features)
        centers = start if isinstance(start, Tensor) else initial_centers(
            provider, n_classes, method=start, generator=generator)
        result = fit_clusters(provider, centers, rule=rule, max_iter=max_iter, sigma0=sigma0,
                              batch_size=batch_size, chunk_size=chunk_size, generator=generator)
        return result.labels, result.history, result.converged

    features = principal_components(
        invariant_features(images, n_angles=n_angles, mask_radius=mask_radius),
        n_components, seed=seed)
    labels, history, converged = cluster(features, init)
    # initial references: per class, the member nearest the class centre in feature space
    gap = (features - _class_means(features, labels, n_classes)[labels]).pow(2).sum(1)
    medoid = torch.zeros(n_classes, dtype=torch.long, device=images.device)
    for j in labels.unique():
        members = (labels == j).nonzero().squeeze(1)
        medoid[j] = members[gap[members].argmin()]
    references = images[medoid] * mask
    poses = _own_class_poses(images, labels, references, mask_radius=mask_radius,
                             align_options=align_options)
    references = _averages(images, labels, poses, mask, n_classes)
    for _ in range(n_rounds):
        best = align(images, references, mode="best", mask_radius=mask_radius, **align_options)
        aligned = apply_transform(images, best.angle, best.shift, best.mirror, inverse=True) * mask
        features = principal_components(aligned.reshape(len(images), -1), n_components, seed=seed)
        labels, round_history, converged = cluster(
            features, _class_means(features, labels, n_classes))
        history += round_history
        poses = {"angle": best.angle, "shift": best.shift, "mirror": best.mirror}
        references = _averages(images, labels, poses, mask, n_classes)
    poses = _own_class_poses(images, labels, references, mask_radius=mask_radius,
                             align_options=align_options)
    sizes = torch.bincount(labels, minlength=n_classes)
    return Classification(labels=labels, averages=_averages(images, labels, poses, mask, n_classes),
                          sizes=sizes, history=history, converged=converged, **poses)
