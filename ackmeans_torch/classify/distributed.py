"""Classification on 1 … P processes (CPU, one GPU, many GPUs and nodes) through Lightning Fabric.

Why Fabric and not the Trainer: the classification loop is not gradient descent. The Trainer's
contract (a ``LightningModule`` with ``training_step`` returning a loss, an optimizer, epochs
over a ``DataLoader`` with a ``DistributedSampler``) would have to be bent around a loop whose
steps are "align a global batch, all-reduce the size change, reassign" and whose data order must
be the same global order on every process (so P processes equal one process, engine docstring).
Fabric gives exactly what the loop needs and nothing it must work around: the launcher and
strategy (``cpu``/``gpu``/``ddp``, ``num_nodes``, SLURM and torchrun environments detected),
``global_rank``/``world_size``, and ``all_reduce``. The library keeps taking its device from
tensors; Fabric only says which device this process owns.

The engine's hooks (``cluster/engine.py``) are filled in here:

* ``shard(global batch)``: this rank's contiguous slice of every global batch
  (``tensor_split``: ranks' slices differ in length by at most one item; contiguous slices read
  memory-mapped stacks sequentially);
* ``reduce(dict)``: element-wise sum over processes through ``Fabric.all_reduce`` — the dict's
  tensors are packed into one flat buffer per dtype, so a size refresh is one collective.

:class:`RunHooks` is what every pipeline takes (``classify/run.py``): the two hooks, a
per-iteration callback (checkpoint, log, progress — rank zero decides what to write) and a saved
state to continue from. :class:`TrainerOptions` (``configs/trainer/*.yaml``) says where to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ackmeans_torch.cluster.engine import LoopState, Reduce, Shard, identity
from ackmeans_torch.errors import InputError, check_int
from ackmeans_torch.ops.transform import Poses

__all__ = ["RunHooks", "Resume", "TrainerOptions", "make_fabric", "fabric_hooks", "pack_reduce",
           "gather_owned"]

STRATEGIES = ("auto", "ddp", "ddp_spawn")
ACCELERATORS = ("cpu", "cuda", "gpu", "mps", "auto")


@dataclass
class Resume:
    """A saved point to continue from: the engine's state and the poses of the same iteration
    (None where the poses are given, not searched: 3D classification)."""

    state: LoopState
    poses: Poses | None


@dataclass
class RunHooks:
    """How a pipeline's loop runs beyond one process and one go (all no-ops by default).

    ``on_iteration(state, poses)`` is called on every process after each iteration, with the
    poses already gathered from all processes (a collective: every rank must call it).
    ``on_items(done, total)``: how far this process is through the current pass (items), for a
    progress bar inside an iteration (local, no collective).
    """

    shard: Shard = identity
    reduce: Reduce = identity
    on_iteration: Callable[[LoopState, Poses], None] | None = None
    resume: Resume | None = None
    on_items: Callable[[int, int], None] | None = None


def pack_reduce(all_reduce: Callable[[Tensor], Tensor]) -> Reduce:
    """A ``reduce`` hook from a sum-all-reduce of one tensor: the dict's tensors are flattened
    into one buffer per dtype (bool travels as uint8), reduced, and cut back into their shapes."""

    def reduce(stats: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        by_dtype: dict[torch.dtype, list[str]] = {}
        for key, value in stats.items():
            by_dtype.setdefault(value.dtype, []).append(key)
        for dtype, keys in by_dtype.items():
            wire = torch.uint8 if dtype == torch.bool else dtype
            flat = torch.cat([stats[key].reshape(-1).to(wire) for key in keys])
            flat = all_reduce(flat)
            for key, part in zip(keys, flat.split([stats[key].numel() for key in keys])):
                out[key] = part.reshape(stats[key].shape).to(dtype)
        return out

    return reduce


def gather_owned(values: dict[str, Tensor], owned: Tensor, reduce: Reduce) -> dict[str, Tensor]:
    """Per-item vectors ``(N, …)`` that each process filled on its own items (``owned (N,)``
    bool) → the complete vectors on every process. Items no process owns keep ``values``
    (a state resumed with no pass since)."""
    mask = {key: owned.view((-1,) + (1,) * (v.ndim - 1)) for key, v in values.items()}
    summed = reduce({**{key: torch.where(mask[key], v, torch.zeros_like(v))
                        for key, v in values.items()},
                     "_owners": owned.to(torch.int64)})
    any_owner = summed.pop("_owners") > 0
    return {key: torch.where(any_owner.view(mask[key].shape), summed[key], values[key])
            for key in values}


@dataclass(frozen=True, kw_only=True)
class TrainerOptions:
    """Where a run goes: Lightning Fabric's ``accelerator`` ("cpu", "cuda", "gpu", "auto"),
    ``strategy`` (one of :data:`STRATEGIES`), ``devices`` per node and ``num_nodes``."""

    accelerator: str = "cpu"
    strategy: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"trainer.strategy={self.strategy!r} must be one of {STRATEGIES}")
        if self.accelerator not in ACCELERATORS:
            raise InputError(f"trainer.accelerator={self.accelerator!r} must be one of "
                             f"{ACCELERATORS}")
        if not (self.devices == "auto" or (isinstance(self.devices, int)
                                           and not isinstance(self.devices, bool)
                                           and self.devices >= 1)):
            raise InputError(f"trainer.devices={self.devices!r} must be an integer >= 1 or auto")
        check_int("trainer.num_nodes", self.num_nodes, 1)


def make_fabric(options: TrainerOptions):
    """A launched :class:`lightning.fabric.Fabric` for ``options``.

    With ``strategy="ddp"`` and no launcher environment (torchrun, SLURM) Lightning re-executes
    the command line once per extra local device; under ``srun``/``torchrun`` it joins the
    processes they started. Returns the Fabric object after ``launch()``."""
    from lightning.fabric import Fabric  # imported here: the library does not need Lightning

    fabric = Fabric(**asdict(options))
    fabric.launch()
    return fabric


def fabric_hooks(fabric) -> tuple[Shard, Reduce]:
    """The engine's ``shard`` and ``reduce`` hooks for this Fabric process (module docstring)."""
    rank, world = fabric.global_rank, fabric.world_size
    if world == 1:
        return identity, identity

    def shard(index: Tensor) -> Tensor:
        return index.tensor_split(world)[rank]

    # NCCL reduces device tensors only; the k-means++ distances live on the CPU
    return shard, pack_reduce(lambda flat: fabric.all_reduce(
        flat.to(fabric.device), reduce_op="sum").to(flat.device))
