"""The consensus and evaluate-picks commands end to end: in this process (as tests/test_cli.py
runs them; a subprocess per test paid ~7 s of imports), and the real-data one in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from ackmeans_torch.io.coords import PickSet, read_box, read_cbox, read_relion_star, write_box
from test_cli import run_cli  # the CLI test helpers, one owner

PICKERS = ("crYOLO", "deepPicker", "topaz")
STEM = "Falcon_2012_06_12-14_33_35_0"


def _run(command: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", command, *overrides],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two subprocesses on 12 real micrographs and a 4096² overlay: ~45 s here
def test_consensus_on_empiar10017_then_evaluate(shared_data: Path, tmp_path: Path) -> None:
    """Real data: 12 micrographs → BOX + STAR per micrograph (same particles in both), a summary
    with 12 optimal rows, the confidence plot and one overlay; then `evaluate evaluate=picks`
    scores the consensus against the expert set (match precision > 0.8 as in the README)."""
    d = shared_data / "picking" / "empiar10017"
    out = tmp_path / "cons"
    r = _run("consensus", f"pickers=[{','.join(str(d / p) for p in PICKERS)}]", "box_size=180",
             f"micrographs={d / 'micrographs'}", f"out_dir={out}")
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert len(summary) == 12 and set(summary.status) == {"optimal"}
    row = summary.set_index("micrograph").loc[STEM]
    assert row.boxes_crYOLO == 719 and row.selected == 242
    box, star = read_box(out / "box" / f"{STEM}.box"), read_relion_star(out / "star" / f"{STEM}.star", box_size=180)
    assert len(box) == len(star) == 242
    np.testing.assert_allclose(box.centres, star.centres, atol=0.5)
    assert (out / "confidences.png").stat().st_size > 0 and (out / "overlays" / f"{STEM}.png").exists()
    ev = tmp_path / "ev"
    r = _run("evaluate", "evaluate=picks", f"evaluate.picks=[{out / 'box'},{d / 'crYOLO'}]",
             f"evaluate.reference={d / 'ground_truth'}", "evaluate.flip_y=4096", "evaluate.radius=54",
             "evaluate.reference_box_size=180", "evaluate.micrograph_shape=[4096,4096]", f"out_dir={ev}")
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(ev / "pick_metrics.tsv", sep="\t")
    total = table[(table.micrograph == "TOTAL") & (table.method == "match")].set_index("picks")
    assert total.loc["cons/box", "precision"] > 0.8 and total.loc["crYOLO", "precision"] > 0.85


def test_consensus_synthetic_top_and_min_pickers(capsys, monkeypatch, tmp_path: Path) -> None:
    """Tiny synthetic files: 2 of 3 pickers agree on 3 particles; min_pickers=2 keeps them and
    top=2 keeps the 2 most confident, sorted by confidence."""
    xy = np.array([[200.0, 200.0], [600.0, 200.0], [200.0, 600.0]])
    for i, name in enumerate(("p", "q", "r")):
        pts = xy + 3 * i if name != "r" else np.array([[1500.0, 1500.0]])
        write_box(tmp_path / name / "mic.box", PickSet(pts, np.full(len(pts), 100.0), np.array([0.9, 0.5, 0.7])[:len(pts)]))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, monkeypatch, "consensus", f"pickers=[{tmp_path / 'p'},{tmp_path / 'q'},{tmp_path / 'r'}]", "min_pickers=2", "top=2",
             f"out_dir={out}")
    assert code == 0, err
    got = read_box(out / "box" / "mic.box")
    assert len(got) == 2 and got.scores[0] >= got.scores[1]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, monkeypatch, tmp_path: Path) -> None:
    """Bad input: a picker folder that does not exist → exit 2, one line on stderr naming it, and
    no BOX/STAR/summary written."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.box").write_text("0 0 10 10 1\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, monkeypatch, "consensus", f"pickers=[{tmp_path / 'a'},{tmp_path / 'missing'}]", f"out_dir={out}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "does not exist" in lines[0]
    assert not (out / "summary.tsv").exists() and not (out / "box").exists()


def _agreeing_pickers(root: Path) -> list[Path]:
    """Three pickers finding the same 2 particles on micrograph ``mic``."""
    xy = np.array([[200.0, 200.0], [600.0, 300.0]])
    folders = [root / name for name in ("p", "q", "r")]
    for folder in folders:
        write_box(folder / "mic.box", PickSet(xy, np.full(2, 100.0), np.array([0.9, 0.5])))
    return folders


def test_consensus_writes_cbox_and_relion_layout_by_default(capsys, monkeypatch, tmp_path: Path) -> None:
    """Default relion_micrographs=Micrographs: CBOX beside BOX, Micrographs/mic_autopick.star (the
    mirror of Micrographs/mic.mrc) with the BOX file's particles, and the autopick.star index
    naming it (absolute, since the run directory lies outside the working directory)."""
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, monkeypatch, "consensus", f"pickers=[{','.join(map(str, _agreeing_pickers(tmp_path)))}]", f"out_dir={out}")
    assert code == 0, err
    box = read_box(out / "box" / "mic.box")
    np.testing.assert_allclose(read_cbox(out / "cbox" / "mic.cbox").centres, box.centres, atol=0.5)
    coords = out / "Micrographs" / "mic_autopick.star"
    np.testing.assert_allclose(read_relion_star(coords, box_size=100).centres, box.centres, atol=0.5)
    index = starfile.read(out / "autopick.star", always_dict=True)["coordinate_files"]
    assert index.to_dict("records") == [{"rlnMicrographName": "Micrographs/mic.mrc",
                                         "rlnMicrographCoordinates": str(coords.resolve())}]
    assert not (out / "coords_suffix_autopick.star").exists()


def test_missing_micrographs_star_exits_2_before_writing(capsys, monkeypatch, tmp_path: Path) -> None:
    """Bad input: relion_micrographs naming a STAR that does not exist → exit 2, one line naming
    it, no outputs (it is read before the consensus runs)."""
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, monkeypatch, "consensus", f"pickers=[{','.join(map(str, _agreeing_pickers(tmp_path)))}]",
             f"relion_micrographs={tmp_path / 'CtfFind' / 'micrographs_ctf.star'}", f"out_dir={out}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "micrographs_ctf.star does not exist" in lines[0]
    assert not (out / "summary.tsv").exists() and not (out / "autopick.star").exists()
