"""The console script: sub-command listing, per-command help, config errors as one line with
exit code 2, and run directories with their record (config, version, command line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ACKMEANS_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, "-m", "ackmeans_torch.cli.main", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )


def test_help_lists_every_subcommand():
    from ackmeans_torch.cli.main import COMMANDS

    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_command_help_shows_its_config():
    out = run_cli("simulate", "--help")
    assert out.returncode == 0
    assert "n_centres" in out.stdout and "snr" in out.stdout


def test_unknown_command_is_one_line_exit_2():
    out = run_cli("clasify")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "clasify" in out.stderr


def test_unknown_config_key_is_one_line_exit_2(tmp_path):
    out = run_cli("simulate", "sim.views.n_centre=3", f"out_dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "n_centre" in out.stderr
    assert not (tmp_path / "run").exists()


def test_run_directory_records_config_version_and_command(tmp_path):
    run = tmp_path / "run"
    out = run_cli("simulate", "sim.views.n_centres=2", "sim.views.per_centre=3", "sim.volume.phantom_box=24",
                  f"out_dir={run}")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["sim"]["views"]["n_centres"] == 2 and cfg["out_dir"] == str(run)
    info = yaml.safe_load((run / "run_info.yaml").read_text())
    assert info["version"]
    assert "sim.views.n_centres=2" in info["command"] and info["command"].startswith("ackmeans-torch simulate")


def test_missing_input_file_is_one_line_exit_2_and_nothing_written(tmp_path):
    run = tmp_path / "run"
    out = run_cli("simulate", f"sim.volume.path={tmp_path / 'nope.mrc'}", f"out_dir={run}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "nope.mrc" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(run.glob("*.mrcs")) and not list(run.glob("*.star"))


def test_classify_then_evaluate_on_the_builtin_simulated_set(tmp_path):
    """The main job end to end on a tiny built-in set: every output is written, and evaluate
    reads the classified STAR back and scores it against the truth kept in it."""
    run = tmp_path / "cls"
    out = run_cli("classify", "sim.views.n_centres=3", "sim.views.per_centre=6",
                  "sim.volume.phantom_box=32", "n_classes=3", "max_iter=3",
                  "align.n_angles=36", "align.max_shift=1", f"out_dir={run}")
    assert out.returncode == 0, out.stderr
    for name in ("particles.star", "class_averages.mrcs", "classes.star", "history.csv",
                 "class_gallery.png", "class_sizes.png", "angular_distances.png", "summary.json"):
        assert (run / name).is_file(), name
    ev = tmp_path / "ev"
    out = run_cli("evaluate", f"evaluate.runs=[{run}]", f"out_dir={ev}")
    assert out.returncode == 0, out.stderr
    table = (ev / "class_metrics.tsv").read_text().splitlines()
    assert table[0].startswith("run\tmedian_angle") and len(table) == 2


def test_classify_missing_particle_file_is_one_line_exit_2(tmp_path):
    out = run_cli("classify", "data=file", f"data.path={tmp_path / 'gone.star'}",
                  f"out_dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "gone.star" in out.stderr


def test_classify_unknown_trainer_strategy_is_one_line_exit_2(tmp_path):
    out = run_cli("classify", "trainer.strategy=fsdp", f"out_dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "trainer.strategy='fsdp'" in out.stderr


@pytest.mark.parametrize("overrides, message", [
    (["n_classes=50"], "n_classes=50 must be <= the 12 images"),
    (["n_classes=2", "preprocess.mask_diameter=500"], "mask_diameter=500"),
])
def test_classify_bad_parameters_are_one_line_exit_2(tmp_path, overrides, message):
    """K above the number of images and a mask larger than the box: one line, exit 2, and no
    classification output."""
    run = tmp_path / "run"
    out = run_cli("classify", "sim.views.n_centres=2", "sim.views.per_centre=6",
                  "sim.volume.phantom_box=24", *overrides, f"out_dir={run}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr
    assert not (run / "particles.star").exists()


def test_classify_empty_star_is_one_line_exit_2(tmp_path):
    star = tmp_path / "empty.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n")
    out = run_cli("classify", "data=file", f"data.path={star}", f"out_dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "empty.star" in out.stderr
