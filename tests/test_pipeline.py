"""The `pick` and `pipeline` commands end to end in a subprocess, on micrographs simulated here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ackmeans_torch.micrographs.simulate import MicrographSimulation, simulate_micrographs, write_simulated


def _run(command: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", command, *overrides],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    write_simulated(simulate_micrographs(MicrographSimulation(n_micrographs=3, size=384, particles_per_micrograph=20,
                                                              snr=0.1), seed=0), out)
    return out


@pytest.mark.slow  # a subprocess: Hydra, torch and two pickers start in ~20 s on this loaded machine
def test_pick_command_round_zero_with_truth(simulated: Path, tmp_path: Path) -> None:
    """`pick rounds=0` with the blob and template pickers on a micrographs STAR (CTF known) writes
    the consensus per micrograph and a score table with every picker and the consensus; the
    consensus recovers most true particles (recall >= 0.7)."""
    out = tmp_path / "p"
    r = _run("pick", f"micrographs={simulated / 'micrographs_ctf.star'}", "particle_diameter=51.2", "box_size=64",
             "rounds=0", "n_val=1", "~picker@pickers.cnn", f"truth={simulated / 'truth' / 'box'}", f"out_dir={out}")
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out / "scores.tsv", sep="\t")
    assert set(table.picker) == {"blob", "template", "consensus"}
    assert table.set_index("picker").loc["consensus", "recall"] >= 0.7
    assert len(list((out / "round_00" / "consensus" / "star").glob("*.star"))) == 3


@pytest.mark.slow  # a subprocess start costs ~20 s on this loaded machine
def test_pick_command_bad_input_exits_2(simulated: Path, tmp_path: Path) -> None:
    """A negative particle diameter ends with one line naming it, exit code 2, no run folder."""
    out = tmp_path / "bad"
    r = _run("pick", f"micrographs={simulated / 'Micrographs'}", "particle_diameter=-5", f"out_dir={out}")
    assert r.returncode == 2 and "particle_diameter" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # simulation, a CNN round, extraction and ACK-means: ~2 min here
def test_pipeline_command_end_to_end(tmp_path: Path) -> None:
    """`pipeline` on 4 small simulated micrographs with one retraining round: micrographs,
    loop, particles, classes and the selection are written; the summary counts agree."""
    out = tmp_path / "pipe"
    r = _run("pipeline", "simulation.n_micrographs=4", "simulation.size=512", "simulation.particles_per_micrograph=40",
             "n_val=1", "train_fraction=0.5", "classes.n_classes=4", "classes.max_iter=3", "pickers.cnn.epochs=2",
             f"out_dir={out}")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["rounds"] == 2 and summary["extracted"] > 0 and summary["selected_particles"] > 0
    for name in ("micrographs/micrographs_ctf.star", "pick/scores.png", "extract/particles.star",
                 "classify/class_averages.mrcs", "selected.star"):
        assert (out / name).is_file(), name
