"""Process-level settings for shared machines: how many CPU threads torch uses, and how its
OpenMP threads wait.

OpenMP threads that wait for work spin by default. On a node shared with other jobs (a facility
node, a laptop running other work) a spinning thread holds a core another process needs, and the
threads of one parallel region wait for each other: measured here, the main job took 491 s with
2 spinning threads against 89 s with 1, and ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep while they
wait) alone took an alignment benchmark from 344 s to 57 s. The wait policy must be set before
the OpenMP runtime starts, i.e. before torch is imported: ``import ackmeans_torch`` sets it
(:func:`default_wait_policy`) unless the environment already says otherwise.
"""

from __future__ import annotations

import os

__all__ = ["default_wait_policy", "available_cpus", "set_threads"]


def default_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy (module docstring)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a batch system's allocation
    (``SLURM_CPUS_PER_TASK``), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit():
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def set_threads(threads: int | str = "auto") -> int:
    """Set torch's intra-op threads: a number, or "auto" (``OMP_NUM_THREADS`` when set, else
    :func:`available_cpus`). Returns the number set."""
    import torch

    if threads == "auto":
        given = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(given) if given.isdigit() and int(given) > 0 else available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from ackmeans_torch.errors import InputError

        raise InputError(f"threads={threads!r} must be an integer >= 1 or auto")
    torch.set_num_threads(threads)
    return threads
