"""Replicate runs of a classifier in parallel processes.

A replicate is one call ``classifier(subset, n_classes, seed)`` (``trust/classifier.py``); the
replicates of a reproducibility report or of one split decision share nothing but the
classifier, so they can run side by side. :class:`Replicates` runs a list of such calls either
here, one after another (``workers=1``), or on a pool of ``workers`` processes forked from a
``forkserver`` (a clean single-threaded process: this process's OpenMP thread pools and CUDA
context would not survive a plain ``fork``). The classifier is sent once to each process when
the pool starts (its tensors through torch's shared-memory pickling), so it must pickle: the 2D
and 3D adapters do, a lambda does not. Each call's result depends on its own arguments only, so
the list comes back in the order of the calls and equal to the sequential one; bit for bit when
each run uses the same number of torch threads in both (each worker takes this process's thread
count divided by ``workers``, at least 1: with ``OMP_NUM_THREADS=1`` every run has one thread
either way). The workers run on the devices the classifier names (its trainer options), sharing
them. Starting the fork server costs one import of the package and Lightning (seconds), once per
process; each pool's workers then fork from it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ackmeans_torch.errors import check_int
from ackmeans_torch.trust.classifier import Classifier, Partition

__all__ = ["Replicates"]

#: the classifier of this worker process (set once by the pool's initializer)
_WORKER_CLASSIFIER: Classifier | None = None


def _start_worker(classifier: Classifier, threads: int) -> None:
    import torch

    global _WORKER_CLASSIFIER
    _WORKER_CLASSIFIER = classifier
    torch.set_num_threads(threads)


def _run_in_worker(call: tuple[np.ndarray, int, int]) -> Partition:
    return _WORKER_CLASSIFIER(*call)


class Replicates:
    """Runs calls of ``classifier`` here (``workers=1``) or on ``workers`` processes (module
    docstring); a context manager that shuts its pool down on exit. The pool starts at the first
    list of two or more calls, so a run that never needs it starts none."""

    def __init__(self, classifier: Classifier, workers: int = 1) -> None:
        check_int("workers", workers, 1)
        self.classifier, self.workers = classifier, workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Replicates:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __call__(self, calls: Sequence[tuple[np.ndarray, int, int]]) -> list[Partition]:
        """The partitions of ``calls`` (each ``(subset, n_classes, seed)``), in their order."""
        if self.workers == 1 or len(calls) < 2:
            return [self.classifier(*call) for call in calls]
        if self._pool is None:
            import torch

            threads = max(1, torch.get_num_threads() // self.workers)
            context = multiprocessing.get_context("forkserver")
            # the adapters run through Lightning Fabric, seconds to import: the fork server
            # imports it (and the classifier's module) once, every worker forks from it ready
            context.set_forkserver_preload(["lightning.fabric", type(self.classifier).__module__])
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context,
                initializer=_start_worker, initargs=(self.classifier, threads))
        return list(self._pool.map(_run_in_worker, calls))
