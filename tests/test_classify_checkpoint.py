"""Checkpoint and resume (classify/checkpoint.py, the engine's on_iteration/start hooks): a
round trip, a config mismatch refused, the engine continued from a saved state equal to the
uninterrupted loop, and a CLI run killed with SIGKILL and resumed equal to an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from ackmeans_torch.classify.checkpoint import (
    CHECKPOINT_NAME,
    config_hash,
    load_checkpoint,
    save_checkpoint,
)
from ackmeans_torch.cluster.engine import ConvergenceWarning, SquaredEuclidean, fit_clusters
from ackmeans_torch.cluster.init import init_random_items
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.ops.transform import Poses
from test_classify_distributed import REPO, TINY, assert_same_run, classify_in_process, clean_env


def mixture(seed=0, n=90, dim=6):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(3, dim, generator=g, dtype=torch.float64)
    return centres[torch.arange(n) % 3] + torch.randn(n, dim, generator=g, dtype=torch.float64)


def test_engine_continued_from_a_saved_state_equals_the_uninterrupted_loop():
    """Stop after iteration 2 (state taken by on_iteration), continue with start=state and a
    fresh generator: labels, centres, sizes and the whole history equal the uninterrupted run
    (the d_c probes come from the restored generator state)."""
    x = mixture()
    provider = SquaredEuclidean(x)
    kw = dict(rule=QuadraticPenalty(beta=0.5), max_iter=6, sigma0=-1.0, batch_size=5)  # never stops
    g = torch.Generator().manual_seed(3)
    init = init_random_items(provider, 3, generator=g)
    states = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = fit_clusters(provider, init, generator=g, on_iteration=states.append, **kw)
        saved = states[2]
        assert saved.iteration == 2 and len(saved.history) == 3
        resumed = fit_clusters(provider, init, generator=torch.Generator(), start=saved, **kw)
    assert [s.iteration for s in states] == list(range(7))
    assert torch.equal(resumed.labels, full.labels) and torch.equal(resumed.sizes, full.sizes)
    torch.testing.assert_close(resumed.centers, full.centers, rtol=0, atol=0)
    assert resumed.history == full.history and resumed.n_iter == full.n_iter == 6


def test_checkpoint_round_trip_and_config_mismatch_is_refused(tmp_path):
    """save → load gives back every tensor and the history; a different config hash is an
    InputError naming the file and what to do."""
    from ackmeans_torch.cluster.engine import LoopState

    state = LoopState(iteration=4, labels=torch.tensor([0, 2, 1]), centers=torch.randn(3, 2, 2),
                      sizes=torch.tensor([1, 1, 1]), history=[{"iteration": 0, "J": 1.0}],
                      generator_state=torch.Generator().manual_seed(1).get_state())
    poses = Poses(angle=torch.rand(3), shift=torch.rand(3, 2),
                  mirror=torch.tensor([True, False, True]), distance=torch.rand(3))
    digest = config_hash({"n_classes": 3, "seed": 0})
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state=state, poses=poses, config_hash=digest)
    back = load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash=digest)
    assert back.state.iteration == 4 and back.state.history == state.history
    for name in ("labels", "centers", "sizes", "generator_state"):
        assert torch.equal(getattr(back.state, name), getattr(state, name))
    for key, value in poses.as_dict().items():
        assert torch.equal(getattr(back.poses, key), value)
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="checkpoint made with a different config"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash=config_hash({"n_classes": 4}))
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        load_checkpoint(tmp_path / "none" / CHECKPOINT_NAME, config_hash=digest)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ackmeans_torch.cluster.engine.ConvergenceWarning")
def test_cli_run_killed_with_sigkill_then_resumed_equals_uninterrupted_run(tmp_path):
    """Kill the CLI (SIGKILL) as soon as its first checkpoint appears, check it stopped before
    the end with no outputs written, continue it with resume=true: the final labels, poses and
    averages equal an uninterrupted run with the same seed (tolerances of assert_same_run)."""
    args = [*TINY, "max_iter=6"]
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ackmeans_torch.cli.main", "classify", *args, f"out_dir={run}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / CHECKPOINT_NAME).exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert saved["iteration"] < 6 and not (run / "particles.star").exists()
    out = subprocess.run([*cmd, "resume=true"], cwd=REPO, env=clean_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reference = tmp_path / "reference"
    summary = classify_in_process(reference, *args)
    assert summary["iterations"] == json.loads((run / "summary.json").read_text())["iterations"]
    assert_same_run(reference, run)
