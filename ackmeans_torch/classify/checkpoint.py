"""Checkpoint and resume of a classification, and its per-iteration record.

After every iteration rank zero writes, atomically (``io/atomic.py``), into the run directory:

* ``checkpoint.pt`` — everything the loop carries to the next iteration (``cluster.engine.
  LoopState``: centroids, labels, sizes, history, the d_c generator's state), the poses of the
  same iteration (angle, shift, mirror, distance), and the hash of the config that made it;
* ``history.csv`` — the engine's history so far (J, σ, λ, d_c, empty classes, sizes);

and advances a progress bar (tqdm) and logs one line; inside an iteration a second bar follows the
images of the pass with their rate and ETA (:meth:`IterationRecorder.items`). A run killed at
any moment leaves the checkpoint of its last finished iteration; :func:`load_checkpoint` reads
it back (refusing one made by a different config) and the pipeline continues from it, giving
the uninterrupted run's result (the loop is deterministic given its state and generator).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ackmeans_torch.classify.distributed import Resume
from ackmeans_torch.classify.outputs import history_frame
from ackmeans_torch.cluster.engine import LoopState
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.ops.transform import Poses

__all__ = ["CHECKPOINT_NAME", "config_hash", "save_checkpoint", "load_checkpoint",
           "IterationRecorder"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = 1
log = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    """SHA-256 of the settings that decide a run's result (a JSON-able dict; the caller leaves
    out what does not: output paths, devices, max_iter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: Path, *, state: LoopState, poses: Poses | None,
                    config_hash: str) -> None:
    """Write ``state`` and ``poses`` (CPU copies; None for a classification whose poses are
    given, 3D) to ``path`` atomically."""
    payload = {
        "format": _FORMAT, "config_hash": config_hash, "iteration": state.iteration,
        "labels": state.labels.cpu(), "centers": state.centers.cpu(), "sizes": state.sizes.cpu(),
        "history": list(state.history), "generator_state": state.generator_state.cpu(),
        "poses": None if poses is None else {key: value.cpu()
                                             for key, value in poses.as_dict().items()},
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, *, config_hash: str) -> Resume:
    """The saved point in ``path``; an :class:`InputError` when it is missing, unreadable or was
    made by a config with another hash."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no checkpoint to resume; run without resume=true first")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise InputError(f"{path}: unreadable checkpoint ({error}); start a new run") from error
    if data.get("format") != _FORMAT or data.get("config_hash") != config_hash:
        raise InputError(f"{path}: checkpoint made with a different config; resume with the "
                         "same settings (only max_iter, devices and out_dir may change)")
    state = LoopState(iteration=data["iteration"], labels=data["labels"],
                      centers=data["centers"], sizes=data["sizes"], history=data["history"],
                      generator_state=data["generator_state"])
    return Resume(state=state, poses=None if data["poses"] is None else Poses(**data["poses"]))


class IterationRecorder:
    """The per-iteration callback of a run (``RunHooks.on_iteration``): on rank zero it writes
    the checkpoint and ``history.csv``, advances a tqdm bar and logs σ, J, λ; other ranks only
    take part in the pose gathering that precedes the call. :meth:`items`
    (``RunHooks.on_items``) drives a bar over the images of the current pass (rank zero, with
    ``progress``). ``close()`` ends the bars."""

    def __init__(self, run_dir: Path, *, config_hash: str, max_iter: int, rank_zero: bool,
                 first_iteration: int = 0, progress: bool = True) -> None:
        self.run_dir, self.hash, self.rank_zero = Path(run_dir), config_hash, rank_zero
        self.bar = self.pass_bar = None
        self.iteration = first_iteration
        if rank_zero and progress:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.bar = tqdm(total=max_iter + 1, initial=first_iteration, unit="it",
                            desc="classify", dynamic_ncols=True)

    def items(self, done: int, total: int) -> None:
        """This process has finished ``done`` of the pass's ``total`` images."""
        if self.bar is None:
            return
        if self.pass_bar is None:
            # below the iteration bar, gone when the iteration ends: the rate and ETA of a pass
            self.pass_bar = self._tqdm(total=total, unit="img", desc=f"iteration {self.iteration}",
                                       leave=False, dynamic_ncols=True)
        self.pass_bar.update(max(0, done - self.pass_bar.n))

    def _end_pass(self) -> None:
        if self.pass_bar is not None:
            self.pass_bar.close()
            self.pass_bar = None

    def __call__(self, state: LoopState, poses: Poses) -> None:
        if not self.rank_zero:
            return
        self._end_pass()
        self.iteration = state.iteration + 1
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, state=state, poses=poses,
                        config_hash=self.hash)
        with atomic_output(self.run_dir / "history.csv") as tmp:
            history_frame(state.history).to_csv(tmp, index=False)
        h = state.history[-1]
        lam = "-" if h["lambda_"] is None else f"{h['lambda_']:.4g}"
        log.info("iteration %d: sigma=%.4f J=%.6g lambda=%s empty=%d", h["iteration"],
                 h["sigma"], h["J"], lam, h["n_empty"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(sigma=f"{h['sigma']:.3f}", J=f"{h['J']:.4g}")

    def close(self) -> None:
        self._end_pass()
        if self.bar is not None:
            self.bar.close()
