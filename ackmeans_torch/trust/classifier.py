"""What the trust tools need of a classification method, and the 2D adapter that gives it.

Reproducibility and exhaustive splitting work on any classifier through one small callable:

``Classifier(subset, n_classes, seed) -> Partition``: classify the particles ``subset`` (``(n,)``
int indices into the whole set) into ``n_classes`` with ``seed``. A :class:`Partition` holds the
``labels (n,)`` (0-based) and ``distances (n, K)``: each particle's dissimilarity to each class's
summary (its average, its map), the own class's made without the particle (leave-one-out, the
engine's ``mean_leave_one_out``: infinite for a one-member class), so that a particle
is not closer to its own class just because it helped make it. The split test
and the continuous heterogeneity check read these distances; the reproducibility report reads
the labels only.

:class:`Classify2D` is it for 2D, on top of the front door
(:func:`ackmeans_torch.classify.run.run_classification`): a subset is an
:class:`~ackmeans_torch.data.source.ArraySource` of the selected images with their table rows;
the distances are the aligned squared distances (``ops/align.py``, ``mode="distances"``) of the
preprocessed images to the final class averages. :class:`Classify3D` is it for 3D
(:func:`ackmeans_torch.class3d.run_class3d` with ``keep_distances``: the distances of the
E-step to the final class references at the particles' poses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ackmeans_torch.classify.distributed import TrainerOptions
from ackmeans_torch.classify.run import Pipeline, run_classification
from ackmeans_torch.cluster.engine import mean_leave_one_out
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import SizeRule
from ackmeans_torch.data.prepared import PreprocessOptions
from ackmeans_torch.data.source import ArraySource, ImageSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.align import AlignOptions

__all__ = ["Classifier", "Partition", "Classify2D", "Classify3D", "check_subset",
           "classifier_for", "subset_source"]


@dataclass
class Partition:
    """One classification of a subset: ``labels (n,)`` 0-based and ``distances (n, K)``, the
    own class's leave-one-out (module docstring)."""

    labels: np.ndarray
    distances: np.ndarray


Classifier = Callable[[np.ndarray, int, int], Partition]


def check_subset(subset, n_items: int) -> np.ndarray:
    """``subset`` as a ``(n,)`` int64 array of distinct indices in [0, ``n_items``)."""
    index = np.asarray(subset, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n_items):
        raise InputError(f"particle index out of range: the set has {n_items} particles")
    if np.unique(index).size != index.size:
        raise InputError("a particle subset repeats particles; give each index once")
    return index


def subset_source(source: ImageSource, subset) -> ArraySource:
    """The images of ``subset`` of ``source`` and their table rows as one in-memory source."""
    index = check_subset(subset, len(source))
    return ArraySource(source.images(index), source.particles.iloc[index],
                       pixel_size=source.pixel_size, phase_flipped=source.phase_flipped)


class Classify2D:
    """2D classification of subsets of ``source`` with one method (module docstring).

    ``pipeline``, ``rule``, ``options`` (its ``n_classes`` and ``seed`` are replaced per call),
    ``align``, ``preprocess_options``, ``trainer``: the arguments of
    :func:`~ackmeans_torch.classify.run.run_classification`. Nothing is written."""

    def __init__(self, source: ImageSource, *, pipeline: Pipeline, rule: SizeRule,
                 options: ClusterOptions, align: AlignOptions | None = None,
                 preprocess_options: PreprocessOptions | None = None,
                 trainer: TrainerOptions | None = None) -> None:
        self.source, self.pipeline, self.rule, self.options = source, pipeline, rule, options
        self.align, self.preprocess_options, self.trainer = align, preprocess_options, trainer

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, subset) -> ArraySource:
        """The images of ``subset`` and their table rows as one in-memory source."""
        return subset_source(self.source, subset)

    def __call__(self, subset, n_classes: int, seed: int) -> Partition:
        """The :class:`Partition` of the particles ``subset`` in ``n_classes`` classes."""
        options = dataclasses.replace(self.options, n_classes=n_classes, seed=seed)
        run = run_classification(self.subset(subset), pipeline=self.pipeline, rule=self.rule,
                                 options=options, align=self.align,
                                 preprocess_options=self.preprocess_options,
                                 trainer=self.trainer)
        search = self.align or AlignOptions()
        result = run.result
        distances = search.align(run.images.to_tensor().to(result.averages.device),
                                 result.averages, mask_radius=run.images.mask_radius,
                                 mode="distances")
        labels = result.labels.to(distances.device)
        distances = mean_leave_one_out(distances, labels, result.sizes.to(distances.device))
        return Partition(labels=labels.cpu().numpy(),
                         distances=distances.double().cpu().numpy())


class Classify3D:
    """3D classification with known poses of subsets of ``source`` (module docstring).

    ``rule``, ``options`` (its ``n_classes`` and ``seed`` are replaced per call), ``class3d``,
    ``trainer``: the arguments of :func:`~ackmeans_torch.class3d.run_class3d`. Nothing is
    written."""

    def __init__(self, source: ImageSource, *, rule: SizeRule, options: ClusterOptions,
                 class3d=None, trainer: TrainerOptions | None = None) -> None:
        self.source, self.rule, self.options = source, rule, options
        self.class3d, self.trainer = class3d, trainer

    def __len__(self) -> int:
        return len(self.source)

    def __call__(self, subset, n_classes: int, seed: int) -> Partition:
        """The :class:`Partition` of the particles ``subset`` in ``n_classes`` classes."""
        from ackmeans_torch.class3d.run import run_class3d

        options = dataclasses.replace(self.options, n_classes=n_classes, seed=seed)
        run = run_class3d(subset_source(self.source, subset), rule=self.rule, options=options,
                          class3d=self.class3d, trainer=self.trainer, keep_distances=True)
        return Partition(labels=run.result.labels.numpy(),
                         distances=run.result.distances.numpy())


#: the classifiers the commands can build, by ``dimension``
DIMENSIONS = {"2d": Classify2D, "3d": Classify3D}


def classifier_for(dimension: str) -> type:
    """The classifier class of ``dimension`` ("2d", "3d"), refused before any data is read when
    there is none; it is made with the source and the run settings (the keywords of
    :class:`Classify2D` or :class:`Classify3D`)."""
    if dimension not in DIMENSIONS:
        raise InputError(f"dimension={dimension!r} is not available; choose one of "
                         f"{', '.join(DIMENSIONS)}")
    return DIMENSIONS[dimension]
