"""Our files read by RELION 3.1.3's own programs, run from the project directory as RELION is:
relion_star_handler and relion_stack_create read particles.star (project-relative names),
relion_refine --continue reads run_model.star and run_data.star through MlModel::read and
Experiment::read, and select's output (from our run and from RELION's Class2D) is read by
relion_stack_create. Skipped when RELION is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from ackmeans_torch.cli.main import main

pytestmark = [
    pytest.mark.relion,
    pytest.mark.skipif(shutil.which("relion_refine") is None,
                       reason="RELION is not installed (apt-get install relion)"),
]

RUN = "runs/classify/x"
CLASS2D = ["--tau2_fudge", "2", "--particle_diameter", "100", "--psi_step", "10",
           "--offset_range", "2", "--offset_step", "1", "--dont_combine_weights_via_disc",
           "--pool", "10", "--j", "1", "--zero_mask", "--oversampling", "1", "--random_seed", "1"]


def relion(project: Path, *args: str) -> str:
    done = subprocess.run(list(args), cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project directory holding one tiny classify run made from inside it."""
    root = tmp_path_factory.mktemp("project")
    here = os.getcwd()
    os.chdir(root)
    try:
        main(["classify", "sim.n_centres=3", "sim.per_centre=6", "sim.phantom_box=32",
              "n_classes=3", "max_iter=3", "align.n_angles=36", "progress=false",
              f"out_dir={RUN}"])
    finally:
        os.chdir(here)
    return root


def test_particles_star_names_hold_from_the_project_dir(project):
    names = starfile.read(project / RUN / "particles.star")["particles"]["rlnImageName"]
    assert names.iloc[0] == f"000001@{RUN}/images.mrcs"


def test_star_handler_selects_our_classes(project):
    ours = starfile.read(project / RUN / "particles.star")["particles"]
    out = relion(project, "relion_star_handler", "--i", f"{RUN}/particles.star", "--o", "one.star",
                 "--select", "rlnClassNumber", "--minval", "1", "--maxval", "1")
    expected = int((ours["rlnClassNumber"] == 1).sum())
    assert f"Written: one.star with {expected} item(s)" in out


def test_stack_create_reads_our_images(project):
    relion(project, "relion_stack_create", "--i", f"{RUN}/particles.star", "--o", "stack")
    with mrcfile.open(project / "stack.mrcs") as made, \
            mrcfile.open(project / RUN / "images.mrcs") as ours:
        np.testing.assert_allclose(made.data, ours.data, rtol=1e-6, atol=1e-6)


def test_relion_refine_continues_from_our_model_and_data(project):
    """RELION's own Class2D iteration gives an optimiser and sampling file; pointed at our
    run_model.star and run_data.star, relion_refine --continue reads them (MlModel::read) and
    runs an iteration; without a required label it refuses our model."""
    job = project / "Class2D" / "job001"
    job.mkdir(parents=True, exist_ok=True)
    relion(project, "relion_refine", "--i", f"{RUN}/run_data.star", "--ref",
           f"{RUN}/run_classes.mrcs", "--o", "Class2D/job001/run", "--iter", "1", *CLASS2D)
    text = (job / "run_it001_optimiser.star").read_text()
    ours = text.replace("Class2D/job001/run_it001_model.star", f"{RUN}/run_model.star")
    ours = ours.replace("Class2D/job001/run_it001_data.star", f"{RUN}/run_data.star")
    (job / "ours_optimiser.star").write_text(ours)
    relion(project, "relion_refine", "--continue", "Class2D/job001/ours_optimiser.star", "--o",
           "Class2D/job001/ours", "--iter", "2", "--j", "1")
    model = starfile.read(job / "ours_it002_model.star")
    assert len(model["model_classes"]) == 3
    broken = (project / RUN / "run_model.star").read_text().replace("_rlnAveragePmax", "_rlnX")
    (job / "broken_model.star").write_text(broken.replace("\n_rlnX", "\n#"))
    (job / "broken_optimiser.star").write_text(
        ours.replace(f"{RUN}/run_model.star", "Class2D/job001/broken_model.star"))
    done = subprocess.run(["relion_refine", "--continue", "Class2D/job001/broken_optimiser.star",
                           "--o", "Class2D/job001/broken", "--iter", "2", "--j", "1"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "incorrect model_general table" in done.stdout + done.stderr


def test_select_output_is_read_by_stack_create(project):
    job = project / "Class2D" / "job002"
    job.mkdir(parents=True, exist_ok=True)
    relion(project, "relion_refine", "--i", f"{RUN}/particles.star", "--o", "Class2D/job002/run",
           "--K", "3", "--iter", "1", *CLASS2D)
    for source, out in ((RUN, "runs/select/ours"), ("Class2D/job002", "runs/select/theirs")):
        here = os.getcwd()
        os.chdir(project)
        try:
            main(["select", f"input={source}", "drop=[1]", f"out_dir={out}"])
        finally:
            os.chdir(here)
        selected = starfile.read(project / out / "particles.star")["particles"]
        assert set(selected["rlnClassNumber"]) <= {2, 3}
        relion(project, "relion_stack_create", "--i", f"{out}/particles.star", "--o", f"{out}/stack")
        with mrcfile.open(project / out / "stack.mrcs") as made:
            assert made.data.shape[0] == len(selected)
