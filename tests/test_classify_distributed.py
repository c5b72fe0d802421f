"""Classification on P processes (classify/distributed.py): the packed all-reduce, the pose
gathering, MRA with 2 thread "ranks" equal to 1 rank, and a real 2-process Lightning DDP run
(gloo, CPU) of the CLI equal to the 1-process run with the same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from conftest import classify_tensor

from ackmeans_torch.classify.distributed import RunHooks, gather_owned, pack_reduce
from ackmeans_torch.classify.mra import MRA
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.ops.align import AlignOptions
from ackmeans_torch.ops.projection import project
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.volume import phantom

REPO = Path(__file__).resolve().parents[1]
# variables a launcher (Lightning, torchrun, SLURM) leaves behind; a child must not inherit them
_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE",
                       "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "ACKMEANS_DEBUG")
TINY = ["sim.n_centres=3", "sim.per_centre=8", "sim.phantom_box=32",
        "n_classes=3", "max_iter=3", "sigma0=0", "align.n_angles=36", "align.max_shift=1",
        "batch_size=4", "progress=false"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES
           and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", "classify", *args],
                          capture_output=True, text=True, cwd=REPO, env=clean_env(),
                          timeout=timeout)


def classify_in_process(run_dir: Path, *overrides: str) -> dict:
    """The classify command in this process (trainer=cpu: one Fabric process); its summary."""
    from hydra import compose, initialize_config_dir

    from ackmeans_torch.cli.app import CONFIG_DIR
    from ackmeans_torch.cli.classify import classify_from_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("classify", overrides=[*overrides, f"out_dir={run_dir}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the subprocess runs use OMP_NUM_THREADS=1
    return classify_from_config(cfg, run_dir).summary


def read_run(run_dir: Path) -> tuple:
    parts = starfile.read(run_dir / "particles.star")["particles"]
    return parts, mrcfile.read(run_dir / "class_averages.mrcs")


def assert_same_run(a: Path, b: Path) -> None:
    """Labels and mirrors identical; poses, distances and averages equal up to float32
    summation order: psi 1e-3°, origins 1e-3 Å, distances and averages 1e-5 relative."""
    (pa, avg_a), (pb, avg_b) = read_run(a), read_run(b)
    assert (pa["rlnClassNumber"].to_numpy() == pb["rlnClassNumber"].to_numpy()).all()
    assert (pa["rlnIsFlip"].to_numpy() == pb["rlnIsFlip"].to_numpy()).all()
    psi = (pa["rlnAnglePsi"].to_numpy() - pb["rlnAnglePsi"].to_numpy() + 180) % 360 - 180
    assert np.abs(psi).max() < 1e-3
    for col in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(pa[col], pb[col], rtol=0, atol=1e-3)
    np.testing.assert_allclose(pa["rlnAckMeansDistance"], pb["rlnAckMeansDistance"], rtol=1e-5)
    np.testing.assert_allclose(avg_a, avg_b, rtol=0, atol=1e-5 * np.abs(avg_a).max())


def test_pack_reduce_sums_every_tensor_and_keeps_dtypes_and_shapes():
    """Two identical ranks (all_reduce = ×2): every tensor doubled, in its own dtype/shape,
    through one all_reduce call per dtype."""
    calls = []

    def double(flat):
        calls.append(flat.dtype)
        return flat * 2

    stats = {"sizes": torch.tensor([1, 2, 3]), "sums": torch.ones(2, 3, 3),
             "d": torch.tensor(1.5, dtype=torch.float64), "n": torch.tensor([4, 5])}
    out = pack_reduce(double)(stats)
    for key, value in stats.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
        torch.testing.assert_close(out[key], value * 2)
    assert sorted(map(str, calls)) == sorted(["torch.int64", "torch.float32", "torch.float64"])


def test_gather_owned_takes_each_item_from_its_owner_and_keeps_unowned():
    """Rank 0 owns items 0–1, rank 1 item 2 (simulated by adding rank 1's masked part), item 3
    is owned by nobody and keeps its value."""
    values = {"angle": torch.tensor([1.0, 2.0, 9.0, 7.0]),
              "mirror": torch.tensor([True, False, False, True])}
    owned = torch.tensor([True, True, False, False])
    other = {"angle": torch.tensor([0.0, 0.0, 3.0, 0.0]),
             "mirror": torch.tensor([False, False, True, False]),
             "_owners": torch.tensor([0, 0, 1, 0])}

    def reduce(stats):
        return {k: (v.to(torch.int64) + other[k].to(torch.int64)).to(v.dtype)
                if v.dtype == torch.bool else v + other[k] for k, v in stats.items()}

    out = gather_owned(values, owned, reduce)
    torch.testing.assert_close(out["angle"], torch.tensor([1.0, 2.0, 3.0, 7.0]))
    assert out["mirror"].tolist() == [True, False, True, True]


@pytest.fixture(scope="module")
def views():
    """3 views of the phantom, 10 noisy images each at random in-plane angles."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.0, 0.0], [90.0, 90.0], [0.0, 90.0]]).repeat_interleave(10, 0)
    euler = torch.cat([base, torch.rand(30, 1, generator=g) * 360], 1).double()
    clean = project(phantom(32), euler_to_matrix(euler).float())
    return clean + 0.5 * clean.std() * torch.randn(clean.shape, generator=g)


@pytest.mark.filterwarnings("ignore::ackmeans_torch.cluster.engine.ConvergenceWarning")
def test_mra_on_two_thread_ranks_equals_one_rank(views, thread_ranks):
    """MRA with shard = tensor_split of each global batch and reduce = sum over 2
    threads gives both ranks the 1-rank labels and sizes, and poses/averages to float32
    summation order (1e-5 relative)."""
    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), mask_radius=14,
                   align=AlignOptions(n_angles=36, max_shift=1.0), init="k-means++",
                   max_iter=4, sigma0=0.0, batch_size=4, chunk_size=12, seed=0)
    single = classify_tensor(MRA(), views, **options)

    def work(rank, reduce):
        hooks = RunHooks(shard=lambda idx: idx.tensor_split(2)[rank], reduce=reduce)
        return classify_tensor(MRA(), views, hooks=hooks, **options)

    for res in thread_ranks(2, work):
        assert torch.equal(res.labels, single.labels) and torch.equal(res.sizes, single.sizes)
        assert torch.equal(res.poses.mirror, single.poses.mirror)
        turn = torch.remainder(res.poses.angle - single.poses.angle + torch.pi,
                               2 * torch.pi) - torch.pi
        assert float(turn.abs().max()) < 1e-5  # radians, across the 0/2π seam
        torch.testing.assert_close(res.poses.shift, single.poses.shift, rtol=0, atol=1e-4)
        torch.testing.assert_close(res.averages, single.averages, rtol=1e-5,
                                   atol=1e-5 * float(single.averages.abs().max()))


@pytest.mark.slow
def test_two_process_gloo_ddp_run_equals_one_process_run(tmp_path):
    """The CLI under Lightning DDP with 2 CPU processes (gloo, launched by Lightning) writes the
    same labels, poses and class averages as the 1-process run with the same seed (tolerances
    in assert_same_run); only rank zero writes outputs and its summary says 2 processes."""
    two = tmp_path / "two"
    out = run_cli(*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                  f"out_dir={two}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    one = tmp_path / "one"
    assert classify_in_process(one, *TINY)["processes"] == 1
    assert_same_run(one, two)


@pytest.mark.slow
def test_classify3d_under_two_process_ddp_from_the_console_script(tmp_path):
    """``ackmeans-torch classify3d`` run as users run it (the installed console script, which
    Lightning's launcher re-executes for the second process: it once re-executed
    "ackmeans-torch classify3d" as a file name and failed) under DDP with 2 CPU processes
    writes the labels of the one-process run of the same seed (1,200 particles in 3 chunks of
    512), and rank zero's log says 2 processes."""
    script = Path(sys.executable).parent / "ackmeans-torch"
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable} (the package is not installed)")
    small = ["sim.n_particles=1200", "sim.phantom_box=32", "max_iter=2", "chunk_size=512",
             "progress=false"]
    runs = {}
    for name, extra in (("two", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]),
                        ("one", [])):
        runs[name] = tmp_path / name
        out = subprocess.run([str(script), "classify3d", *small, *extra,
                              f"out_dir={runs[name]}"], capture_output=True, text=True,
                             cwd=tmp_path, env=clean_env(), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 process(es)" in (runs["two"] / "app.log").read_text()
    labels = [starfile.read(runs[name] / "run_data.star")["particles"]["rlnClassNumber"]
              .to_numpy() for name in ("one", "two")]
    assert (labels[0] == labels[1]).all()
