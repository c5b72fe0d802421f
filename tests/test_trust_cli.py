"""The ``reproduce`` and ``split`` commands: bad input ends in one line with exit code 2 and
nothing written; on a tiny simulated set (slow) they write their tables, STAR files RELION's
reader takes back, and PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_cli import assert_one_line, run_cli

from ackmeans_torch.io.star import read_particles, read_star

TINY = ["sim.n_centres=2", "sim.per_centre=20", "sim.box_size=32", "sim.snr=0.5", "sim.ctf=false",
        "max_iter=3", "progress=false"]


@pytest.mark.parametrize("command, overrides, needle", [
    ("split", ["dimension=4d"], "dimension='4d' is not available"),
    ("reproduce", ["dimension=4d"], "dimension='4d' is not available"),
    ("split", ["split.alpha=0.001", "split.null_draws=99"], "raise null_draws or alpha"),
    ("reproduce", ["replicates=1"], "replicates=1 must be an integer >= 2"),
    ("split", ["workers=0"], "workers=0 must be an integer >= 1"),
])
def test_bad_input_is_one_line_exit_2_with_nothing_written(capsys, monkeypatch, tmp_path,
                                                           command, overrides, needle):
    """A dimension without a classifier, a test that cannot reach its alpha, one replicate or no
    worker: one line naming the key, exit code 2, and the fresh run directory removed."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, monkeypatch, command, *TINY, *overrides, f"out_dir={run}")
    assert_one_line(code, err, needle)
    assert not run.exists()


@pytest.mark.slow
def test_reproduce_writes_its_report(capsys, monkeypatch, tmp_path):
    """Two replicates of a 2-class run of two views: classes.tsv and model.star carry one row
    per class with the stability figures, every particle is in the stable or the unstable STAR
    (read back by our RELION reader, image names resolving to the written stack), and the size
    plot is written."""
    run = tmp_path / "rep"
    code, _, err = run_cli(capsys, monkeypatch, "reproduce", *TINY, "n_classes=2", "replicates=2",
                           f"out_dir={run}")
    assert code == 0, err
    classes = pd.read_csv(run / "classes.tsv", sep="\t")
    assert list(classes["class"]) == [1, 2]
    model = read_star(run / "model.star")["model_classes"]
    assert np.allclose(model["ackStability"], classes["stability"], atol=1e-6)
    counted = 0
    for name in ("particles_stable.star", "particles_unstable.star"):
        if (run / name).exists():
            table = read_particles(run / name)
            assert set(table.particles["rlnClassNumber"]) <= {1, 2}
            assert table.resolve_stack(table.particles["rlnImageName"][0].split("@")[1])
            counted += len(table)
    assert counted == 40
    assert (run / "class_sizes_runs.png").stat().st_size > 0


def test_reproduce_in_3d_from_the_command_line(capsys, monkeypatch, tmp_path):
    """``reproduce dimension=3d`` classifies a small heterogeneous 3D set twice with the
    classify3d settings (poses kept) and writes one row per class."""
    run = tmp_path / "rep3d"
    code, _, err = run_cli(capsys, monkeypatch, "reproduce", "dimension=3d", "sim=hetero",
                           "sim.n_particles=300", "sim.phantom_box=32", "n_classes=2",
                           "replicates=2", "max_iter=2", "class3d.resolution=16",
                           f"out_dir={run}")
    assert code == 0, err
    classes = pd.read_csv(run / "classes.tsv", sep="\t")
    assert list(classes["class"]) == [1, 2]


@pytest.mark.slow
def test_split_writes_its_tree(capsys, monkeypatch, tmp_path):
    """One level of splitting of two views: tree.tsv has the root's decision with its figures,
    particles.star gives every particle its leaf (as leaves.tsv counts them), tree.png exists."""
    run = tmp_path / "split"
    code, _, err = run_cli(capsys, monkeypatch, "split", *TINY, "split.replicates=2",
                           "split.max_children=2", "split.max_depth=1", "split.null_draws=99",
                           "split.min_size=5", f"out_dir={run}")
    assert code == 0, err
    tree = pd.read_csv(run / "tree.tsv", sep="\t")
    assert tree.loc[0, "node"] == 1 and np.isfinite(tree.loc[0, "ari_median"])
    leaves = pd.read_csv(run / "leaves.tsv", sep="\t")
    particles = read_particles(run / "particles.star").particles
    assert len(particles) == 40
    counts = particles["rlnClassNumber"].value_counts().sort_index()
    assert list(counts.index) == list(leaves["leaf"]) and list(counts) == list(leaves["size"])
    assert (run / "tree.png").stat().st_size > 0
