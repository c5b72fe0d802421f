"""Our particles.star and run_data.star treat the input's columns as RELION 3.1.3's own Class2D
_data.star does, checked by running both on one simulated STAR that also holds a label RELION does
not know: every input column is kept, the ones RELION leaves as they were (rlnAngleRot,
rlnAngleTilt, CTF, the unknown label, ...) we leave as they were too, and rlnAnglePsi is
overwritten by the 2D alignment in both. Skipped when RELION is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from ackmeans_torch.cli.main import main
from ackmeans_torch.io.star import read_particles, write_particles

pytestmark = [
    pytest.mark.relion,
    pytest.mark.skipif(shutil.which("relion_refine") is None,
                       reason="RELION is not installed (apt-get install relion)"),
]

RELION_CHANGES = {"rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"}


def _same(a: pd.Series, b: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        return bool(np.allclose(a.to_numpy(float), b.to_numpy(float), atol=1e-4))
    return a.astype(str).tolist() == b.astype(str).tolist()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with a simulated STAR (plus ``_aspireAmplitude``), RELION's Class2D
    iteration on it and our classification of it, both run from the folder as RELION is."""
    root = tmp_path_factory.mktemp("project")
    here = os.getcwd()
    os.chdir(root)
    try:
        main(["simulate", "sim.n_centres=3", "sim.per_centre=6", "sim.phantom_box=32",
              "out_dir=sim"])
        table = read_particles("sim/particles.star").particles
        n = len(table)
        table = table.assign(rlnImageName=[f"{i + 1:06d}@sim/particles.mrcs" for i in range(n)],
                             aspireAmplitude=1.5 + np.arange(n) / 8)
        write_particles("in.star", table)
        Path("Class2D").mkdir()
        done = subprocess.run(
            ["relion_refine", "--i", "in.star", "--o", "Class2D/run", "--K", "3", "--iter", "1",
             "--tau2_fudge", "2", "--ctf", "--ctf_phase_flipped", "--psi_step", "10",
             "--offset_range", "2", "--offset_step", "1", "--particle_diameter", "100",
             "--zero_mask", "--j", "1", "--random_seed", "1"],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        said = done.stdout + done.stderr
        assert "maintain) values for the unknown label: aspireAmplitude" in said
        main(["classify", "data=file", "data.path=in.star", "n_classes=3", "max_iter=2",
              "align.n_angles=36", "progress=false", "out_dir=runs/x"])
    finally:
        os.chdir(here)
    return root


def test_we_keep_and_overwrite_the_input_columns_relion_keeps_and_overwrites(project):
    given = starfile.read(project / "in.star")["particles"]
    relion = starfile.read(project / "Class2D" / "run_it001_data.star")["particles"]
    changed = {c for c in given.columns if not _same(relion[c], given[c])}
    assert changed == RELION_CHANGES  # what RELION 3.1.3 does, measured
    for name in ("particles.star", "run_data.star"):
        ours = starfile.read(project / "runs" / "x" / name)["particles"]
        assert set(given.columns) <= set(ours.columns), name
        kept = [c for c in given.columns if c not in RELION_CHANGES]
        assert [c for c in kept if not _same(ours[c], given[c])] == [], name
        assert not _same(ours["rlnAnglePsi"], given["rlnAnglePsi"]), name
