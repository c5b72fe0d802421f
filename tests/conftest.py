"""Shared fixtures. Real third-party data lives beside the repository in ../shared/data and is
never copied in; tests that need it take the ``shared_data`` fixture and skip when it is absent."""

import threading
from pathlib import Path

import pytest

import ackmeans_torch  # noqa: F401  (first, so OpenMP starts with its wait policy: runtime.py)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"{SHARED_DATA} is absent: the real third-party test files live in ../shared/data "
            "beside the repository (a clone on its own has none)"
        )
    return SHARED_DATA


class ThreadReduce:
    """Sum-all-reduce across P threads: a stand-in for torch.distributed in one process, to check
    that P ranks following the engine's shard/reduce hooks equal one rank."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def for_rank(self, rank):
        def reduce(stats):
            self.slots[rank] = stats
            self.barrier.wait()
            total = {key: sum(slot[key] for slot in self.slots) for key in stats}
            self.barrier.wait()
            return total
        return reduce


def run_on_thread_ranks(world: int, work):
    """Run ``work(rank, reduce)`` on ``world`` threads sharing one :class:`ThreadReduce`; returns
    the per-rank results, re-raising the first exception a rank raised."""
    hub, results, errors = ThreadReduce(world), [None] * world, []

    def worker(rank):
        try:
            results[rank] = work(rank, hub.for_rank(rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)
            hub.barrier.abort()  # release the other ranks instead of deadlocking them

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def thread_ranks():
    """:func:`run_on_thread_ranks`, for tests that check P ranks against one."""
    return run_on_thread_ranks


def classify_tensor(pipeline, images, *, rule, mask_radius, align=None, hooks=None, **options):
    """Run ``pipeline`` (a ``classify.run.Pipeline``) on an in-memory ``images (N, L, L)``
    tensor with ``ClusterOptions(**options)``; the pipelines' contract without files."""
    import pandas as pd

    from ackmeans_torch.classify.distributed import RunHooks
    from ackmeans_torch.cluster.options import ClusterOptions
    from ackmeans_torch.data.source import ArraySource
    from ackmeans_torch.ops.align import AlignOptions

    source = images if not hasattr(images, "ndim") else ArraySource(
        images, pd.DataFrame(index=range(len(images))), pixel_size=1.0)
    return pipeline.classify(source, rule=rule, options=ClusterOptions(**options),
                             align=align or AlignOptions(), mask_radius=mask_radius,
                             hooks=hooks or RunHooks())
