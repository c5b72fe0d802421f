"""select: keep/drop classes by number, size or list file, from our run directory or a RELION
Class2D job (data/model pair, job folder); names written as given; one-line errors."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import starfile

from ackmeans_torch.classify.select import (
    find_classification,
    read_class_list,
    select_classes,
    write_selection,
)
from ackmeans_torch.cli.main import main
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.star import write_particles, write_star

LABELS = [1, 1, 1, 2, 3, 3, 1, 3]  # sizes 4, 1, 3; class 4 empty


def _particles() -> pd.DataFrame:
    return pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@Extract/job005/x.mrcs" for i in range(8)],
                         "rlnImagePixelSize": 2.0, "rlnClassNumber": LABELS})


@pytest.fixture
def our_run(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    write_particles(run / "particles.star", _particles())
    write_star(run / "classes.star", {"model_classes": pd.DataFrame({"rlnClassNumber": [1, 2, 3, 4]})})
    return run


@pytest.fixture
def relion_job(tmp_path):
    job = tmp_path / "Class2D" / "job007"
    job.mkdir(parents=True)
    for iteration in (1, 25):
        write_particles(job / f"run_it{iteration:03d}_data.star", _particles())
        classes = pd.DataFrame({"rlnReferenceImage": [f"{j:06d}@run_classes.mrcs" for j in (1, 2, 3, 4)]})
        write_star(job / f"run_it{iteration:03d}_model.star", {"model_classes": classes})
    return job


def _labels(selection) -> list[int]:
    return selection.table.particles["rlnClassNumber"].tolist()


def test_keep_drop_min_size_from_our_run(our_run):
    assert _labels(select_classes(our_run, keep=[3, 1])) == [1, 1, 1, 3, 3, 1, 3]
    assert select_classes(our_run, drop=[1]).kept == [2, 3, 4]  # class 4 is empty
    sized = select_classes(our_run / "particles.star", min_size=3)
    assert sized.kept == [1, 3] and sized.sizes.tolist() == [4, 1, 3, 0]
    assert select_classes(our_run, keep=[1, 2], drop=[1]).kept == [2]


def test_names_are_written_as_given(our_run, tmp_path):
    out = write_selection(select_classes(our_run, keep=[2]), tmp_path / "sel.star")
    written = starfile.read(out)["particles"]
    assert written["rlnImageName"].tolist() == ["000004@Extract/job005/x.mrcs"]
    assert written["rlnClassNumber"].tolist() == [2]


def test_relion_job_model_data_and_folder(relion_job):
    model = relion_job / "run_it025_model.star"
    assert find_classification(model) == (relion_job / "run_it025_data.star", 4)
    assert find_classification(relion_job) == (relion_job / "run_it025_data.star", 4)
    assert select_classes(model, keep=[4, 2]).kept == [2, 4]
    with pytest.raises(InputError, match=r"class 5 is not in .*run_it025_data\.star, whose "
                                         r"classes are 1\.\.4"):
        select_classes(relion_job, keep=[5])


def test_class_list_files(our_run, tmp_path):
    text = tmp_path / "good.txt"
    text.write_text("# good classes\n1, 3\n")
    assert read_class_list(text) == [1, 3]
    assert select_classes(our_run, classes_file=text).kept == [1, 3]
    chosen = tmp_path / "class_averages.star"
    write_star(chosen, {"": pd.DataFrame({"rlnReferenceImage": ["000002@Class2D/run_classes.mrcs"]})})
    assert select_classes(our_run, classes_file=chosen).kept == [2]
    text.write_text("1 two\n")
    with pytest.raises(InputError, match=r"good\.txt: line 1 holds 'two'"):
        read_class_list(text)


def test_bad_selections(our_run, tmp_path):
    with pytest.raises(InputError, match="class 0 is not in"):
        select_classes(our_run, drop=[0])
    with pytest.raises(InputError, match="keeps no particles"):
        select_classes(our_run, keep=[4])
    with pytest.raises(InputError, match="min_size=-1 must be an integer >= 0"):
        select_classes(our_run, min_size=-1)
    write_particles(tmp_path / "plain.star", _particles().drop(columns="rlnClassNumber"))
    with pytest.raises(InputError, match="no rlnClassNumber column"):
        select_classes(tmp_path / "plain.star")
    with pytest.raises(InputError, match="holds neither particles.star nor a RELION"):
        select_classes(tmp_path / "runs")


def test_cli_writes_the_selection_and_fails_in_one_line(our_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ACKMEANS_DEBUG", raising=False)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["ackmeans-torch", "select", *args])
        try:
            main(["select", *args])
        except SystemExit as exc:
            return exc.code
        return 0

    out = tmp_path / "sel"
    assert run(f"input={our_run}", "keep=[1,3]", f"out_dir={out}") == 0
    assert starfile.read(out / "particles.star")["particles"]["rlnClassNumber"].tolist() == [
        1, 1, 1, 3, 3, 1, 3]
    capsys.readouterr()
    assert run(f"input={our_run}", "keep=[9]", f"out_dir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "class 9 is not in" in err
    assert not (tmp_path / "bad").exists()
