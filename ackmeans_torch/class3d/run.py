"""The front door of 3D classification with known poses: one call runs a whole job.

>>> from ackmeans_torch import ClusterOptions, QuadraticPenalty, open_source
>>> from ackmeans_torch.class3d import Class3DOptions, run_class3d
>>> run = run_class3d(open_source("refined.star"), rule=QuadraticPenalty(beta=0.5),
...                   options=ClusterOptions(n_classes=4, sigma0=0.02, max_iter=25,
...                                          leave_one_out=False, plateau=0),
...                   class3d=Class3DOptions(resolution=8.0), out_dir="runs/c3d")
>>> run.result.labels, run.result.maps, run.result.resolution

The particles keep the poses of a consensus refinement (RELION's ``--skip_align``, cryoSPARC's
heterogeneous refinement without pose search); only the class of each particle is sought, with
any size rule of ``cluster/penalties.py`` (ACK-means, K-means, SPIDER, EQK-means, an autograd
penalty) and hard or soft assignment (``ClusterOptions.temperature``). The loop is the same
ACK-means engine as 2D; the data side is :class:`~ackmeans_torch.class3d.model.SliceMatch`.
Convergence is the practitioners' "% of particles changing class": ``ClusterOptions.sigma0``
(0.02 = 2 %, down to 1e-5 = 0.001 %) or ``max_iter`` rounds.

Initial maps (:class:`Class3DOptions` ``init``):

* ``variability`` (default): 2(K − 1) components of variability about the consensus map,
  fitted to all particles at their poses (``class3d/variability.py``, probabilistic PCA as
  cryoSPARC's 3D variability analysis), a Gaussian mixture of every particle's coordinates on
  the K − 1 leading ones (:data:`MIXTURE_ROUNDS`), and each class the reconstruction of its
  group (:data:`OVERSAMPLING`). Fitted to all N particles instead of maps of random subsets,
  whose differences are mostly noise when the states differ in a small domain;
* ``simple`` (cryoSPARC's default): class k starts as the reconstruction of a random subset of
  ``init_subset`` particles (default N // K, disjoint subsets);
* ``pca`` (cryoSPARC 3D classification's PCA initialisation): ``init_maps`` reconstructions of
  disjoint random subsets, PCA of the maps under the mask, K-means++ / K-means of their
  coordinates on the first K − 1 components, and each class starts as the mean of its group
  of maps. Random subsets differ in their mixture of states by chance; the leading components
  of the maps are where those differences (and the noise) lie, so the start already points
  along the heterogeneity instead of a random direction of noise;
* ``maps``: K given maps (one per class, e.g. from an earlier run);
* ``reference``: one given map for every class (RELION's way, low-passed to ``init_resolution``,
  40 Å by default as RELION users set ``--ini_high``), each class given the deviation of its own
  random-subset reconstruction from their mean, so the classes differ as RELION's random first
  iteration makes them.

All initial maps are low-passed to ``init_resolution`` (default: the target resolution; 30 Å
for ``variability``, :data:`VARIABILITY_RESOLUTION`).

``refine_poses`` > 0 first refines every particle's pose locally against the consensus map
(``class3d/poses.py``; Gauss-Newton on the rotation and shift, that many rounds of map and
poses): the classification, its maps and the written ``run_data.star`` then use the refined
poses. Off by default, as RELION's ``--skip_align`` and cryoSPARC's 3D classification keep the
consensus poses.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ackmeans_torch.class3d.model import CACHE_BYTES, FSC_POWER, SliceMatch, low_pass_gains
from ackmeans_torch.class3d.poses import refine_poses, rotation_angle, with_poses
from ackmeans_torch.class3d.variability import variability
from ackmeans_torch.classify.checkpoint import (
    CHECKPOINT_NAME, IterationRecorder, config_hash, load_checkpoint,
)
from ackmeans_torch.classify.distributed import TrainerOptions, fabric_hooks, make_fabric
from ackmeans_torch.classify.run import plugin_settings, source_signature
from ackmeans_torch.cluster.engine import LoopState, Reduce, Shard
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError, check_int, check_number
from ackmeans_torch.eval.metrics import adjusted_rand_index, matched_accuracy
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.io.mrc import load_volume
from ackmeans_torch.ops.fourier import filter_shells, fourier_crop_volume
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN

__all__ = ["Class3DOptions", "Class3DResult", "Class3DRun", "run_class3d", "INIT_METHODS"]

INIT_METHODS = ("variability", "simple", "pca", "maps", "reference")
#: the default band (Å) of the variability start: the states' differences are large-scale,
#: every finer shell adds unknowns to the components faster than it adds signal, and at finer
#: bands the pose terms take a part of a domain's difference (tests/test_class3d_poses.py)
VARIABILITY_RESOLUTION = 30.0
#: components of variability fitted per one the grouping keeps (the leading K − 1): a weak
#: state's direction emerges in fewer rounds among more. On 30,000 particles of the 70S set
#: (30 Å) the absent domain's direction was found in 12 rounds with 4 components and took 30
#: with 2 at the true poses, and was not found in 30 at refined ones (K-means then 0.76 against
#: 0.87). Where the states are found with K − 1 alone the extra ones can cost: on the built-in
#: phantom set (3,000 particles) grouping on the leading 2 of 4 made 74.6 % correct, 2 alone
#: 85.4 % (README, "3D classification")
OVERSAMPLING = 2
#: EM rounds of the Gaussian mixture that groups the variability start's coordinates. On the
#: 70S set's coordinates (30,000 particles, refined poses) the grouping was 0.864 correct
#: against K-means' 0.844 at 50/30/20 %, and 0.848 against 0.548 at 70/20/10 %, where K-means
#: cut the 70 % state into three near-equal groups (neither found the 10 % state: 371
#: particles in its group)
MIXTURE_ROUNDS = 200
#: the fewest particles per random-subset map of the pca start (fewer maps are made instead)
MIN_MAP_PARTICLES = 100
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Class3DOptions:
    """What 3D classification needs beyond the loop's :class:`ClusterOptions`.

    ``init``: one of :data:`INIT_METHODS` (module docstring); ``maps``: the map files of
    ``maps``/``reference``; ``init_subset``: particles per random-subset map (None: N // K for
    ``simple``, N // the number of maps for ``pca``); ``init_maps``: the most maps ``pca`` makes
    (fewer when N / ``init_maps`` < :data:`MIN_MAP_PARTICLES`, never fewer than K);
    ``init_resolution`` Å: low-pass of the initial maps and band of the components of
    ``variability`` (None: ``resolution``; 30 Å for ``variability``, 40 Å for ``reference``);
    ``init_iterations``: EM rounds of the components of ``variability``; ``refine_poses``:
    rounds of local pose refinement before classifying (0: the input poses are kept).
    ``resolution`` Å: the target resolution (E-step band and the references' low-pass each
    round; None: Nyquist). ``mask_diameter`` Å: the particle mask and the
    references' sphere (None: 90 % of the box); ``mask``: a mask map file (values 0–1) for the
    references instead of the sphere. ``whiten``: per-shell noise weighting from the data;
    ``scale``: a per-particle scale factor; ``regularisation``: the reconstruction's constant
    Wiener term relative to the mean weight, ``fsc_power``: the references' per-shell weight
    (2·FSC / (1 + FSC))^p (both ``class3d/model.py``); ``padding``: of the Fourier
    grids; ``use_ctf``: weight by the CTF when the table has one. ``cache_gb``: memory (GiB) for
    what the loop keeps between rounds (``class3d/model.py``, ``CACHE_BYTES``); each part that
    does not fit is made afresh every round.
    """

    init: str = "variability"
    maps: tuple[str, ...] = ()
    init_subset: int | None = None
    init_maps: int = 40
    init_iterations: int = 15
    refine_poses: int = 0
    init_resolution: float | None = None
    resolution: float | None = None
    mask_diameter: float | None = None
    mask: str | None = None
    whiten: bool = False
    scale: bool = True
    regularisation: float = 0.01
    fsc_power: float = FSC_POWER
    padding: int = 2
    use_ctf: bool = True
    cache_gb: float = CACHE_BYTES / 2**30

    def __post_init__(self) -> None:
        if self.init not in INIT_METHODS:
            raise InputError(f"class3d.init={self.init!r} must be one of {INIT_METHODS}")
        object.__setattr__(self, "maps", tuple(str(m) for m in (self.maps or ())))
        if self.init == "maps" and not self.maps:
            raise InputError("class3d.init=maps needs class3d.maps=[one.mrc,two.mrc,...] "
                             "(one map per class)")
        if self.init == "reference" and len(self.maps) != 1:
            raise InputError("class3d.init=reference needs exactly one map: "
                             "class3d.maps=[reference.mrc]")
        if self.init_subset is not None:
            check_int("class3d.init_subset", self.init_subset, 1)
        check_int("class3d.init_maps", self.init_maps, 2)
        check_int("class3d.init_iterations", self.init_iterations, 1)
        check_int("class3d.refine_poses", self.refine_poses, 0)
        for name in ("init_resolution", "resolution", "mask_diameter"):
            if getattr(self, name) is not None:
                check_number(f"class3d.{name}", getattr(self, name), 1e-6)
        check_number("class3d.regularisation", self.regularisation, 0.0)
        check_number("class3d.fsc_power", self.fsc_power, 0.0)
        check_int("class3d.padding", self.padding, 1)
        check_number("class3d.cache_gb", self.cache_gb, 0.0)
        for name in ("whiten", "scale", "use_ctf"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"class3d.{name}={getattr(self, name)!r} must be true or false")


@dataclass
class Class3DResult:
    """``labels (N,)`` 0-based; ``maps (K, L, L, L)`` FSC-weighted class maps to Nyquist under
    the reference mask; ``half_maps (K, 2, L, L, L)`` unfiltered; ``fsc (K, L//2+1)`` half-map
    FSC; ``resolution (K,)`` Å at 0.143 (999: a class without two half sets); ``sizes (K,)``;
    ``history`` per round; ``stopped`` why the loop ended; ``distances (N, K)`` when asked
    (:func:`run_class3d` ``keep_distances``), else None."""

    labels: Tensor
    maps: Tensor
    half_maps: Tensor
    fsc: np.ndarray
    resolution: np.ndarray
    sizes: Tensor
    history: list[dict]
    stopped: str
    distances: Tensor | None = None

    @property
    def converged(self) -> bool:
        return self.stopped == "sigma0"


@dataclass
class Class3DRun:
    """What :func:`run_class3d` returns on rank zero."""

    result: Class3DResult
    summary: dict
    out_dir: Path | None


def _read_maps(paths, *, box_size: int, pixel_size: float) -> Tensor:
    """Maps ``(M, L, L, L)`` from ``paths``, Fourier-cropped to the particles' box when their voxel
    size is finer; refused when they cannot match the particles."""
    maps = []
    for path in paths:
        volume, voxel = load_volume(path)
        size = volume.shape[-1]
        if size != box_size:
            if size < box_size or abs(voxel * size / box_size - pixel_size) > 0.01 * pixel_size:
                raise InputError(f"{path}: a {size}-voxel map of {voxel:.3f} Å cannot match "
                                 f"particles of {box_size} px at {pixel_size:.3f} Å; resample it")
            volume = fourier_crop_volume(volume, box_size)
        elif abs(voxel - pixel_size) > 0.01 * pixel_size:
            log.warning("%s: voxel size %.3f Å, particles %.3f Å; used as if equal", path, voxel,
                        pixel_size)
        maps.append(volume.to(torch.float32))
    return torch.stack(maps)


def _m_step(provider: SliceMatch, members: Tensor, labels: Tensor, centers: Tensor, *,
            chunk_size: int, shard: Shard, reduce: Reduce) -> Tensor:
    """The M-step of particles ``members (M,)`` in classes ``labels (M,)``, statistics summed over
    chunks and processes: the provider's new references (and, for all particles, what it records
    of a complete M-step: :attr:`SliceMatch.last` and the own-class correction)."""
    totals = None
    for start in range(0, len(members), chunk_size):
        own = shard(torch.arange(start, min(start + chunk_size, len(members))))
        part = provider.statistics(members[own], labels[own.to(labels.device)], centers)
        totals = part if totals is None else {key: totals[key] + part[key] for key in totals}
    totals = reduce(totals)
    totals["counts"] = torch.bincount(labels, minlength=centers.shape[0]).to(provider.device)
    return provider.update(totals, centers)


def _subset_maps(provider: SliceMatch, n_maps: int, subset: int, *,
                 generator: torch.Generator, shard: Shard, reduce: Reduce,
                 group: int = 8) -> Tensor:
    """Reconstructions of ``n_maps`` disjoint random subsets of ``subset`` particles each, made
    ``group`` maps at a time (the statistics of a map are two padded grids)."""
    order = torch.randperm(provider.n_items, generator=generator)[: n_maps * subset]
    size = provider.box_size
    maps = []
    for first in range(0, n_maps, group):
        count = min(group, n_maps - first)
        empty = torch.zeros((count, size, size, size), device=provider.device)
        maps.append(_m_step(provider, order[first * subset:(first + count) * subset],
                            torch.arange(count).repeat_interleave(subset), empty,
                            chunk_size=1024, shard=shard, reduce=reduce))
    return torch.cat(maps)


def _groups(coordinates: Tensor, n_classes: int, *, seed: int) -> Tensor:
    """``(M,)`` labels of K-means (k-means++ seeding, our engine) on ``coordinates (M, q)``."""
    from ackmeans_torch.cluster.engine import SquaredEuclidean
    from ackmeans_torch.cluster.penalties import NoPenalty

    grouping = ClusterOptions(n_classes=n_classes, init="k-means++", max_iter=50, sigma0=0.0,
                              seed=seed, leave_one_out=False, min_class_size=1, plateau=0)
    return grouping.fit(SquaredEuclidean(coordinates.float()), rule=NoPenalty()).labels


def _mixture_groups(coordinates: Tensor, n_classes: int, *, seed: int,
                    iterations: int = MIXTURE_ROUNDS) -> Tensor:
    """``(M,)`` labels of a Gaussian mixture on ``coordinates (M, q)``: a weight, mean and
    full covariance per group, EM from the K-means labels (:func:`_groups`), each particle to
    its most probable group. K-means' equal Voronoi cells cut a large state into pieces;
    the weights let the groups be as unequal as the states (measured: :data:`MIXTURE_ROUNDS`)."""
    x = coordinates.double()
    q = torch.nn.functional.one_hot(_groups(coordinates, n_classes, seed=seed),
                                    n_classes).double()
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        counts = q.sum(0).clamp_min(1e-9)
        means = (q.T @ x) / counts[:, None]
        centred = x[:, None, :] - means
        covariances = torch.einsum("mk,mki,mkj->kij", q, centred, centred) / counts[:, None, None]
        # a ridge of 10⁻⁶ of the mean variance keeps a group of few particles invertible
        covariances = covariances + 1e-6 * covariances.diagonal(dim1=1, dim2=2).mean() * eye
        log_p = (torch.distributions.MultivariateNormal(means, covariance_matrix=covariances)
                 .log_prob(x[:, None, :]) + torch.log(counts / len(x)))
        q = torch.softmax(log_p, 1)
    return q.argmax(1)


def _pca_start(maps: Tensor, mask: Tensor, n_classes: int, *, seed: int) -> Tensor:
    """Class maps as the means of groups of ``maps`` clustered on their first K − 1 principal
    components under ``mask``."""
    x = (maps * mask).flatten(1).double()
    x = x - x.mean(0)
    _, _, components = torch.linalg.svd(x, full_matrices=False)
    labels = _groups(x @ components[: max(1, n_classes - 1)].T, n_classes, seed=seed)
    return torch.stack([maps[labels == k].mean(0) for k in range(n_classes)])


def _variability_start(provider: SliceMatch, options: Class3DOptions, n_classes: int, *,
                       resolution: float | None, generator: torch.Generator, chunk_size: int,
                       shard: Shard, reduce: Reduce) -> Tensor:
    """The maps of the groups of particles clustered on their coordinates along the first
    K − 1 components of variability (``class3d/variability.py``)."""
    leading = max(1, n_classes - 1)
    found = variability(provider, OVERSAMPLING * leading, iterations=options.init_iterations,
                        resolution=resolution, generator=generator, chunk_size=chunk_size,
                        shard=shard, reduce=reduce, pose_terms=not options.refine_poses)
    log.info("components of variability: subspace change per round %s",
             " ".join(f"{c:.3f}" for c in found.change))
    labels = _mixture_groups(found.coordinates[:, :leading], n_classes,
                             seed=int(torch.randint(2**31, (1,), generator=generator)))
    labels = labels.to(provider.device)
    size = provider.box_size
    return _m_step(provider, torch.arange(provider.n_items), labels,
                   torch.zeros((n_classes, size, size, size), device=provider.device),
                   chunk_size=chunk_size, shard=shard, reduce=reduce)


def initial_maps(provider: SliceMatch, options: Class3DOptions, n_classes: int, *,
                 generator: torch.Generator, shard: Shard, reduce: Reduce,
                 chunk_size: int = 1024) -> Tensor:
    """The K starting maps of :class:`Class3DOptions` ``init`` (module docstring)."""
    size = provider.box_size
    resolution = options.init_resolution or options.resolution
    if options.init == "variability":
        resolution = options.init_resolution or VARIABILITY_RESOLUTION
        maps = _variability_start(provider, options, n_classes, resolution=resolution,
                                  generator=generator, chunk_size=chunk_size, shard=shard,
                                  reduce=reduce)
    elif options.init == "maps":
        maps = _read_maps(options.maps, box_size=size, pixel_size=provider.pixel_size)
        if len(maps) != n_classes:
            raise InputError(f"class3d.maps has {len(maps)} maps for n_classes={n_classes}; "
                             "give one map per class")
        maps = maps.to(provider.device)
    else:
        # pca: at most init_maps maps, each of at least MIN_MAP_PARTICLES (a map of a dozen
        # particles is noise only), and never fewer maps than classes
        n_maps = n_classes if options.init != "pca" else max(
            n_classes, min(options.init_maps, provider.n_items // MIN_MAP_PARTICLES))
        subset = options.init_subset or max(1, provider.n_items // n_maps)
        if n_maps * subset > provider.n_items:
            raise InputError(f"class3d.init_subset={subset} x {n_maps} maps exceeds the "
                             f"{provider.n_items} particles; lower it")
        maps = _subset_maps(provider, n_maps, subset, generator=generator, shard=shard,
                            reduce=reduce)
        if options.init == "pca":
            maps = _pca_start(maps, provider.reference_mask, n_classes,
                              seed=int(torch.randint(2**31, (1,), generator=generator)))
        if options.init == "reference":
            resolution = options.init_resolution or 40.0
            reference = _read_maps(options.maps, box_size=size,
                                   pixel_size=provider.pixel_size)[0].to(provider.device)
            maps = reference + (maps - maps.mean(0))
    if resolution is not None:
        radius = min(size // 2, size * provider.pixel_size / resolution)
        maps = filter_shells(maps, low_pass_gains(size, radius))
    return maps * provider.reference_mask


def _fingerprint(source: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 class3d: Class3DOptions) -> str:
    cluster = {k: v for k, v in dataclasses.asdict(options).items()
               if k not in ("max_iter", "chunk_size", "init")}
    # (the memory kept between rounds changes the time, not the result)
    settings = {k: v for k, v in dataclasses.asdict(class3d).items() if k != "cache_gb"}
    return config_hash({"cluster": cluster, "class3d": settings,
                        "rule": plugin_settings(rule), "source": source_signature(source)})


def _distances(provider: SliceMatch, fit, *, chunk_size: int, shard: Shard,
               reduce: Reduce) -> Tensor:
    """``(N, K)`` distances of every particle to the final references, own class corrected
    (:meth:`SliceMatch.leave_one_out`), gathered from all processes."""
    n, k = provider.n_items, fit.centers.shape[0]
    out = torch.zeros((n, k), dtype=torch.float64, device=fit.centers.device)
    for start in range(0, n, chunk_size):
        own = shard(torch.arange(start, min(start + chunk_size, n)))
        if len(own):
            rows = own.to(out.device)
            d = provider.dissimilarity(own, fit.centers)
            out[rows] = provider.leave_one_out(d, fit.labels[rows], fit.sizes).double()
    return reduce({"d": out})["d"].cpu()


def run_class3d(source: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                class3d: Class3DOptions | None = None, trainer: TrainerOptions | None = None,
                out_dir: str | Path | None = None, resume: bool | str | Path = False,
                progress: bool = False, project_dir: str | Path | None = None,
                keep_distances: bool = False) -> Class3DRun | None:
    """Classify the particles of ``source`` (with poses) into ``options.n_classes`` 3D classes
    (module docstring); a :class:`Class3DRun` on rank zero, None on other ranks.

    ``options``: the loop's (the ``classify3d`` config runs it with ``leave_one_out=False``:
    in 3D the own-class correction makes the labels swing, ``class3d/model.py``).
    ``trainer``: where to run (Lightning Fabric; statistics are summed across processes).
    ``out_dir``: where rank zero writes maps, STAR files, plots and the checkpoint (None:
    nothing is written). ``resume``: True continues the checkpoint in ``out_dir``, or a path
    to another run directory. ``project_dir``: where the written image names hold from.
    ``keep_distances``: one more E-step pass gives ``result.distances``, each particle's
    distance to every final reference (its own class's corrected as by ``leave_one_out``)."""
    from ackmeans_torch.class3d.outputs import write_class3d_outputs

    class3d = class3d or Class3DOptions()
    trainer = trainer or TrainerOptions()
    options.check_items(len(source))
    if resume is True and out_dir is None:
        raise InputError("resume=true needs the run's out_dir")
    out_dir = None if out_dir is None else Path(out_dir)
    fabric = make_fabric(trainer)
    rank_zero = fabric.global_rank == 0
    if not rank_zero:
        logging.getLogger().setLevel(logging.WARNING)
    start = time.perf_counter()
    mask = None
    if class3d.mask is not None:
        mask = _read_maps([class3d.mask], box_size=source.box_size,
                          pixel_size=source.pixel_size)[0].clamp(0, 1)
    # background normalised under the particle mask as RELION's extraction leaves it; never
    # phase-flipped here: the distance and the reconstruction apply the CTF themselves
    images = preprocess(source, PreprocessOptions(mask_diameter=class3d.mask_diameter,
                                                  phase_flip=False),
                        device=fabric.device, chunk_size=options.chunk_size)

    def slice_match(particles: ImageSource) -> SliceMatch:
        return SliceMatch(particles, resolution=class3d.resolution,
                          mask_radius=images.mask_radius, reference_mask=mask,
                          whiten=class3d.whiten, scale=class3d.scale,
                          regularisation=class3d.regularisation, fsc_power=class3d.fsc_power,
                          padding=class3d.padding,
                          use_ctf=class3d.use_ctf, cache_bytes=int(class3d.cache_gb * 2**30))

    provider = slice_match(images)
    digest = _fingerprint(source, rule=rule, options=options, class3d=class3d)
    saved = None
    if resume not in (False, None):
        directory = out_dir if resume is True else Path(resume)
        saved = load_checkpoint(directory / CHECKPOINT_NAME, config_hash=digest)
    shard, reduce = fabric_hooks(fabric)
    if class3d.refine_poses:
        # classified (and written) at the refined poses; the input table is not touched
        rotations, shifts = refine_poses(provider, rounds=class3d.refine_poses,
                                         chunk_size=options.chunk_size, shard=shard,
                                         reduce=reduce)
        log.info("poses refined locally (%d rounds): turned by %.2f° and moved by %.2f px "
                 "(medians)", class3d.refine_poses,
                 float(rotation_angle(provider.rotations, rotations).median()),
                 float((shifts - provider.shifts).norm(dim=1).median()))
        refined = with_poses(source.particles, rotations, shifts)
        images, source = copy.copy(images), copy.copy(source)
        images.particles = source.particles = refined
        provider = slice_match(images)
    generator = torch.Generator().manual_seed(options.seed)
    if saved is None:
        centers = initial_maps(provider, class3d, options.n_classes, generator=generator,
                               shard=shard, reduce=reduce, chunk_size=options.chunk_size)
        start_state = None
    else:
        centers, start_state = saved.state.centers.to(fabric.device), saved.state
        # the provider's record of the saved round's M-step (the own-class correction) is
        # made again from its labels, so the continued run scores as the uninterrupted one
        _m_step(provider, torch.arange(len(source)), saved.state.labels.to(fabric.device),
                centers, chunk_size=options.chunk_size, shard=shard, reduce=reduce)
    recorder = None
    if out_dir is not None:
        recorder = IterationRecorder(
            out_dir, config_hash=digest, max_iter=options.max_iter, rank_zero=rank_zero,
            first_iteration=0 if saved is None else saved.state.iteration + 1, progress=progress)

    def on_iteration(state: LoopState) -> None:
        if recorder is not None:
            recorder(state, None)

    loop = dataclasses.replace(options, init=centers)
    try:
        fit = loop.fit(provider, rule=rule, device=fabric.device, shard=shard, reduce=reduce,
                       on_iteration=on_iteration, start=start_state, generator=generator)
    finally:
        if recorder is not None:
            recorder.close()
    distances = None
    if keep_distances:
        distances = _distances(provider, fit, chunk_size=options.chunk_size, shard=shard,
                               reduce=reduce)
    # the output maps to Nyquist from the final classes
    provider.full_band()
    _m_step(provider, torch.arange(len(source)), fit.labels, fit.centers,
            chunk_size=options.chunk_size, shard=shard, reduce=reduce)
    if not rank_zero:
        return None
    last = provider.last
    labels = fit.labels.cpu()
    sizes = torch.bincount(labels, minlength=options.n_classes)
    result = Class3DResult(labels=labels, maps=last["maps"].cpu(),
                           half_maps=last["half_maps"].cpu(), fsc=last["fsc"],
                           resolution=last["resolution"], sizes=sizes, history=fit.history,
                           stopped=fit.stopped, distances=distances)
    summary = {"label": f"3D / {rule.label}" + (f" / soft tau={options.temperature}"
                                                if options.temperature > 0 else ""),
               "n_images": len(source), "n_classes": options.n_classes,
               "iterations": len(fit.history) - 1, "converged": result.converged,
               "stopped": fit.stopped, "changing": fit.history[-1]["sigma"],
               "sizes": sizes.tolist(), "resolution": [float(r) for r in result.resolution],
               "seconds": time.perf_counter() - start, "processes": fabric.world_size,
               "resumed_after": None if saved is None else saved.state.iteration}
    if CENTRE_LABEL_COLUMN in source.particles:
        truth = source.particles[CENTRE_LABEL_COLUMN].to_numpy()
        summary["accuracy"] = matched_accuracy(labels.numpy(), truth)
        summary["ari"] = adjusted_rand_index(labels.numpy(), truth)
    if out_dir is not None:
        write_class3d_outputs(out_dir, result, source, pixel_size=source.pixel_size,
                              title=summary["label"], project_dir=project_dir)
        with atomic_output(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    log.info("classified %d particles into %d 3D classes in %.1f s%s", len(source),
             options.n_classes, summary["seconds"], "" if out_dir is None else f"; outputs in {out_dir}")
    return Class3DRun(result=result, summary=summary, out_dir=out_dir)
