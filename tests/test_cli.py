"""The console script, run in this process: sub-command listing, per-command help, bad input as
one line with exit code 2 and nothing written, Ctrl-C as one line, and run directories with their
record (config, version, command line). One test runs the real entry point in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ackmeans_torch.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["sim.n_centres=2", "sim.per_centre=6", "sim.phantom_box=24", "progress=false"]


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """``ackmeans-torch *args`` in this process → (exit code, stdout, stderr)."""
    monkeypatch.delenv("ACKMEANS_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["ackmeans-torch", *args])
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code: int, err: str, *needles: str, expected: int = 2) -> None:
    assert code == expected, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_console_script_lists_every_subcommand():
    """The installed entry point (a real process): ``--help`` names every command."""
    out = subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_command_help_shows_its_config(capsys, monkeypatch):
    code, out, _ = run_cli(capsys, monkeypatch, "simulate", "--help")
    assert code == 0 and "n_centres" in out and "snr" in out


def test_unknown_command_is_one_line_exit_2(capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "clasify")
    assert_one_line(code, err, "clasify")


def test_unknown_config_key_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "simulate", "sim.n_centre=3",
                           f"out_dir={tmp_path / 'run'}")
    assert_one_line(code, err, "n_centre")
    assert not (tmp_path / "run").exists()


def test_run_directory_records_config_version_and_command(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, monkeypatch, "simulate", "sim.n_centres=2", "sim.per_centre=3",
                           "sim.phantom_box=24", f"out_dir={run}")
    assert code == 0, err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["sim"]["n_centres"] == 2 and cfg["out_dir"] == str(run)
    info = yaml.safe_load((run / "run_info.yaml").read_text())
    assert info["version"] and "sim.n_centres=2" in info["overrides"]
    assert "sim.n_centres=2" in info["command"]
    assert (run / "particles.mrcs").is_file() and (run / "app.log").is_file()


def test_missing_input_file_is_one_line_exit_2_and_nothing_written(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, monkeypatch, "simulate", f"sim.volume={tmp_path / 'nope.mrc'}",
                           f"out_dir={run}")
    assert_one_line(code, err, "nope.mrc")
    assert not run.exists()


def test_classify_then_evaluate_on_the_builtin_simulated_set(capsys, monkeypatch, tmp_path):
    """The main job end to end on a tiny built-in set: every output is written, and evaluate
    reads the classified STAR back and scores it against the truth kept in it."""
    run = tmp_path / "cls"
    code, _, err = run_cli(capsys, monkeypatch, "classify", "sim.n_centres=3", "sim.per_centre=6",
                           "sim.phantom_box=32", "n_classes=3", "max_iter=3", "progress=false",
                           "align.n_angles=36", "align.max_shift=1", f"out_dir={run}")
    assert code == 0, err
    for name in ("particles.star", "images.mrcs", "class_averages.mrcs", "classes.star",
                 "history.csv", "class_gallery.png", "class_sizes.png", "angular_distances.png",
                 "summary.json", "app.log"):
        assert (run / name).is_file(), name
    ev = tmp_path / "ev"
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", f"evaluate.runs=[{run}]",
                           f"out_dir={ev}")
    assert code == 0, err
    table = (ev / "class_metrics.tsv").read_text().splitlines()
    assert table[0].startswith("run\tmedian_angle") and len(table) == 2


@pytest.mark.parametrize("overrides, message", [
    (["n_classes=0"], "n_classes=0 must be an integer >= 1"),
    (["n_classes=-1"], "n_classes=-1 must be an integer >= 1"),
    (["n_classes=abc"], "n_classes='abc' must be an integer >= 1"),
    (["n_classes=2.5"], "n_classes=2.5 must be an integer >= 1"),
    (["max_iter=-1"], "max_iter=-1 must be an integer >= 1"),
    (["batch_size=0"], "batch_size=0 must be an integer >= 1"),
    (["sigma0=2"], "sigma0=2 must be a number in [0, 1]"),
    (["objective.beta=-1"], "beta=-1 must be a finite number >= 0"),
    (["+objective.betta=1"], "betta"),
    (["init=farthest"], "init='farthest' must be one of"),
    (["trainer.strategy=fsdp"], "trainer.strategy='fsdp'"),
    (["align.n_angles=7"], "align.n_angles=7 must be even"),
    (["pipeline=rfa", "pipeline.n_reference_rounds=0"], "pipeline.n_reference_rounds=0"),
    (["preprocess.in_memory=maybe"], "preprocess.in_memory='maybe'"),
    (["data=file"], "data.path"),
    (["n_classes=50"], "n_classes=50 must be <= the 12 items"),
    (["n_classes=2", "preprocess.mask_diameter=500"], "mask_diameter=500"),
    (["pipeline=msa_mra", "resume=true", "n_classes=2"], "cannot resume"),
])
def test_classify_bad_values_are_one_line_exit_2_with_nothing_written(capsys, monkeypatch,
                                                                       tmp_path, overrides,
                                                                       message):
    """Each bad value: one line naming it, exit code 2, and the run directory not left behind."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, monkeypatch, "classify", *TINY, *overrides, f"out_dir={run}")
    assert_one_line(code, err, message)
    assert not run.exists()


def test_classify_missing_particle_file_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "classify", "data=file",
                           f"data.path={tmp_path / 'gone.star'}", f"out_dir={tmp_path / 'run'}")
    assert_one_line(code, err, "gone.star")


def test_classify_empty_star_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    star = tmp_path / "empty.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n")
    code, _, err = run_cli(capsys, monkeypatch, "classify", "data=file", f"data.path={star}",
                           f"out_dir={tmp_path / 'run'}")
    assert_one_line(code, err, "empty.star")


def test_ctrl_c_is_one_line_naming_resume(capsys, monkeypatch, tmp_path):
    """Ctrl-C during a run: exit code 130 and one line saying how to continue."""
    import ackmeans_torch.cli.classify as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_classification", interrupted)
    code, _, err = run_cli(capsys, monkeypatch, "classify", *TINY, f"out_dir={tmp_path / 'run'}")
    assert_one_line(code, err, "interrupted; resume with resume=true", expected=130)


def test_unwritable_output_directory_names_the_path_and_errno(capsys, monkeypatch, tmp_path):
    """out_dir below a regular file cannot be made: one line with the path and the errno."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, monkeypatch, "simulate", f"out_dir={blocker / 'run'}")
    assert_one_line(code, err, str(blocker), "Errno 20")


def test_convergence_warning_is_one_line_on_the_terminal_and_in_app_log(capsys, monkeypatch,
                                                                         tmp_path):
    """A run stopped by max_iter: its ConvergenceWarning appears once, as one line without the
    source line that raised it, in app.log and on the terminal; the summary table follows."""
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, monkeypatch, "classify", "sim.n_centres=3",
                             "sim.per_centre=6", "sim.phantom_box=32", "progress=false",
                             "n_classes=3", "max_iter=1", "sigma0=0", "align.n_angles=36",
                             "align.max_shift=1", f"out_dir={run}")
    assert code == 0, err
    for text in (out + err, (run / "app.log").read_text()):
        hits = [ln for ln in text.splitlines() if "ConvergenceWarning: stopped" in ln]
        assert len(hits) == 1 and "stopped after max_iter=1" in hits[0], text
        assert "warnings.warn" not in text and "engine.py" not in text
    table = out.split("summary\n", 1)[1]
    for row in ("class sizes", "singletons / empty", "NOT converged", "time",
                "median within-class angle", "% of pairs < 10°", f"{run}/ (particles.star"):
        assert row in table, table
    assert "summary" in (run / "app.log").read_text()


def test_progress_bar_follows_the_images_inside_an_iteration(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "classify", *TINY[:-1], "n_classes=2",
                           "max_iter=1", "chunk_size=4", f"out_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert "iteration 1" in err and "/12 [" in err and "img/s" in err


def test_unquoted_value_with_spaces_says_how_to_quote_it(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "classify", "data=file", "data.path=/a", "b/c.star",
                           f"out_dir={tmp_path / 'run'}")
    assert_one_line(code, err, "quote", "data.path='/a b/c.star'")


SIM = ["sim.n_centres=2", "sim.per_centre=3", "sim.phantom_box=24"]


def test_a_second_run_into_a_locked_out_dir_is_refused(capsys, monkeypatch, tmp_path):
    import fcntl
    import os

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first run, still going
    os.write(fd, b"4242\n")
    try:
        code, _, err = run_cli(capsys, monkeypatch, "simulate", *SIM, f"out_dir={run}")
    finally:
        os.close(fd)
    assert_one_line(code, err, f"out_dir={run} is in use by another run (pid 4242)")
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_reused_out_dir_is_refused_without_resume_or_overwrite(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, monkeypatch, "simulate", *SIM, f"out_dir={run}")[0] == 0
    def files():
        return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}

    before = files()
    code, _, err = run_cli(capsys, monkeypatch, "simulate", *SIM, "seed=1", f"out_dir={run}")
    assert_one_line(code, err, "already holds files", "resume=true", "overwrite=true")
    assert files() == before


def test_overwrite_replaces_the_earlier_run_and_keeps_it_on_bad_input(capsys, monkeypatch,
                                                                      tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, monkeypatch, "simulate", *SIM, f"out_dir={run}")[0] == 0
    (run / "earlier_output.txt").write_text("from the earlier run")
    # a typo in the new run: the earlier run is put back as it was
    code, _, err = run_cli(capsys, monkeypatch, "simulate", *SIM, "overwrite=true",
                           f"sim.volume={tmp_path / 'nope.mrc'}", f"out_dir={run}")
    assert_one_line(code, err, "nope.mrc")
    assert (run / "earlier_output.txt").is_file() and (run / "particles.star").is_file()
    assert "nope.mrc" not in (run / "run_info.yaml").read_text()
    code, _, err = run_cli(capsys, monkeypatch, "simulate", *SIM, "overwrite=true", "seed=1",
                           f"out_dir={run}")
    assert code == 0, err
    assert not (run / "earlier_output.txt").exists() and (run / "particles.star").is_file()
    assert "seed=1" in (run / "run_info.yaml").read_text()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


def test_overwrite_refuses_a_folder_that_holds_no_run(capsys, monkeypatch, tmp_path):
    (tmp_path / "particles.star").write_text("data_\n")
    code, _, err = run_cli(capsys, monkeypatch, "simulate", *SIM, "overwrite=true",
                           f"out_dir={tmp_path}")
    assert_one_line(code, err, "no ackmeans-torch run")
    assert (tmp_path / "particles.star").read_text() == "data_\n"


def test_resume_removes_the_temporary_files_of_a_killed_run(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    args = ["classify", *TINY, "n_classes=2", "max_iter=2", f"out_dir={run}"]
    assert run_cli(capsys, monkeypatch, *args)[0] == 0
    (run / ".checkpoint.tmp99999.pt").write_bytes(b"half")  # kill -9 during a write
    (run / ".class_gallery.tmp99999.png").write_bytes(b"half")
    code, _, err = run_cli(capsys, monkeypatch, *args, "resume=true")
    assert code == 0, err
    assert not list(run.glob(".*.tmp*")) and (run / "checkpoint.pt").is_file()
