"""The consensus loses nothing silently: header-like lines, Topaz files of many micrographs,
pickers with disjoint or missing micrographs and boxes outside the micrograph are each paired
correctly or reported, with counts, per micrograph and per picker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import (
    PickSet, read_box, read_csv, read_picker, read_topaz, write_box, write_relion_autopick,
)
from ackmeans_torch.micrographs.io import write_micrograph
from ackmeans_torch.picking.consensus import ConsensusInputWarning, load_pickers, run_consensus

CENTRES = {"mic_1": [(200.0, 200.0), (500.0, 300.0)], "mic_2": [(300.0, 700.0)]}


def _boxes(stem, dx=0.0):
    xy = np.asarray(CENTRES[stem]) + dx
    return PickSet(xy, np.full(len(xy), 100.0), np.full(len(xy), 0.9))


def test_a_data_line_that_looks_like_a_header_is_an_error_and_a_real_header_is_noted(tmp_path):
    """A first BOX line mixing a word with numbers is a broken box (error naming the line), not a
    header to skip; a header of words only is skipped and noted."""
    bad = tmp_path / "bad.box"
    bad.write_text("l1 200 100 100 0.5\n10 10 100 100 0.5\n")
    with pytest.raises(InputError, match=r"bad\.box:1: x 'l1' is not a number"):
        read_box(bad)
    good = tmp_path / "good.box"
    good.write_text("x y w h score\n10 10 100 100 0.5\n")
    notes = []
    assert len(read_box(good, notes=notes)) == 1 and notes == ["good.box: 1 header line skipped"]


def test_tables_without_a_header_and_with_repeated_headers(tmp_path):
    """A Topaz or CSV file whose first line is data keeps that row (read in the format's column
    order, noted; ragged rows are an error); a header repeated inside a concatenated file is
    skipped and counted."""
    topaz = tmp_path / "t.txt"
    topaz.write_text("mic_1\t10\t20\t-1.5\nmic_1\t30\t40\t2.0\n")
    notes = []
    p = read_topaz(topaz, box_size=64, notes=notes)
    assert p.centres.tolist() == [[10, 20], [30, 40]] and p.scores.tolist() == [-1.5, 2.0]
    assert notes == ["t.txt: no header line; read as columns image_name x_coord y_coord score"]
    csv = tmp_path / "c.csv"
    csv.write_text("x,y,score\n1,2,0.5\nx,y,score\n3,4,0.7\n")
    notes = []
    assert read_csv(csv, box_size=64, notes=notes).centres.tolist() == [[1, 2], [3, 4]]
    assert notes == ["c.csv: 1 repeated header lines skipped"]
    ragged = tmp_path / "r.csv"
    ragged.write_text("1,2,0.5\n3,4\n")
    with pytest.raises(InputError, match=r"r\.csv: data row 2 has 2 columns, the first 3"):
        read_csv(ragged, box_size=64)


def test_topaz_file_of_many_micrographs_is_split_and_paired(tmp_path):
    """One Topaz file holding two micrographs (as Topaz writes a data set) is split by
    image_name and paired with another picker's per-micrograph BOX files: the consensus finds
    the particles of both micrographs, and no micrograph called after the file exists."""
    (tmp_path / "topaz").mkdir()
    rows = [f"{stem}\t{x}\t{y}\t{s}" for stem in CENTRES for (x, y), s in zip(CENTRES[stem], (1.0, -2.0))]
    (tmp_path / "topaz" / "predicted.txt").write_text("image_name\tx_coord\ty_coord\tscore\n" + "\n".join(rows))
    for stem in CENTRES:
        write_box(tmp_path / "box" / f"{stem}.box", _boxes(stem, dx=3.0))
    assert set(read_picker(tmp_path / "topaz", box_size=100).picks) == set(CENTRES)
    data = load_pickers({"topaz": tmp_path / "topaz", "box": tmp_path / "box"}, box_size=100)
    assert sorted(data.picks) == sorted(CENTRES)
    res = {r.stem: len(r.picks) for r in run_consensus(data, box_size=100)}
    assert res == {stem: len(c) for stem, c in CENTRES.items()}


def test_suffixed_file_names_are_paired_and_missing_files_reported(tmp_path):
    """A picker naming its files <micrograph>_autopick.star pairs with pickers naming them
    <micrograph>.box (noted in a warning); a micrograph one picker has no file for is noted on that
    micrograph and counted per picker in a warning."""
    for stem in CENTRES:
        write_box(tmp_path / "a" / f"{stem}.box", _boxes(stem))
        write_relion_autopick(tmp_path / "r" / f"{stem}_autopick.star", _boxes(stem, dx=2.0))
    write_box(tmp_path / "a" / "mic_3.box", PickSet(np.array([[100.0, 100.0]]), np.array([100.0]), np.array([0.5])))
    with pytest.warns(ConsensusInputWarning) as caught:
        data = load_pickers({"a": tmp_path / "a", "r": tmp_path / "r"}, box_size=100)
    messages = [str(w.message) for w in caught]
    assert any("files named <micrograph>_autopick paired" in m and "(2 files)" in m for m in messages)
    assert any("picker 'r': no file for 1 of 3 micrographs" in m for m in messages)
    assert data.notes["mic_3"] == ["r: no file"]
    assert {r.stem: len(r.picks) for r in run_consensus(data, box_size=100)} == {"mic_1": 2, "mic_2": 1, "mic_3": 0}


def test_pickers_without_a_common_micrograph_are_named(tmp_path):
    """Two pickers whose micrographs do not meet (no common stem, no common suffix) are each named
    in a warning with examples of both sides' stems; every micrograph is still listed."""
    write_box(tmp_path / "a" / "mic_1.box", _boxes("mic_1"))
    write_box(tmp_path / "b" / "image7.box", _boxes("mic_1"))
    with pytest.warns(ConsensusInputWarning) as caught:
        data = load_pickers({"a": tmp_path / "a", "b": tmp_path / "b"})
    messages = [str(w.message) for w in caught]
    assert any("picker 'a' shares no micrograph with the other pickers (its files e.g. mic_1; theirs e.g. image7)"
               in m for m in messages)
    assert sorted(data.picks) == ["image7", "mic_1"]


def test_boxes_outside_the_micrograph_are_dropped_and_counted(tmp_path):
    """With the micrograph size known, boxes centred outside it are dropped and counted per
    micrograph and picker; without it they are kept."""
    outside = PickSet(np.array([[200.0, 200.0], [1200.0, 50.0], [-5.0, 10.0]]), np.full(3, 100.0), np.full(3, 0.8))
    write_box(tmp_path / "a" / "mic_1.box", outside)
    write_box(tmp_path / "b" / "mic_1.box", _boxes("mic_1"))
    with pytest.warns(ConsensusInputWarning, match="picker 'a': 2 boxes outside their micrograph dropped"):
        data = load_pickers({"a": tmp_path / "a", "b": tmp_path / "b"}, shapes={"mic_1": (800, 1000)})
    assert len(data.picks["mic_1"]["a"]) == 1
    assert data.notes["mic_1"] == ["a: 2 boxes centred outside the 1000x800 px micrograph dropped"]
    assert len(load_pickers({"a": tmp_path / "a", "b": tmp_path / "b"}).picks["mic_1"]["a"]) == 3


def test_cli_reports_in_the_summary_and_on_stderr(tmp_path, monkeypatch, capsys):
    """The consensus command (run in-process) writes every note into summary.tsv's notes column
    and says the per-picker counts on stderr; the micrographs folder gives the sizes for the edge
    check."""
    from ackmeans_torch.cli.main import main

    for stem in CENTRES:
        write_micrograph(tmp_path / "mics" / f"{stem}.mrc", np.zeros((800, 1000), np.float32), 1.0)
        write_box(tmp_path / "a" / f"{stem}.box", _boxes(stem))
        extra = PickSet(np.vstack([_boxes(stem, 2.0).centres, [[1500.0, 10.0]]]), np.full(len(CENTRES[stem]) + 1, 100.0),
                        np.full(len(CENTRES[stem]) + 1, 0.7))
        write_box(tmp_path / "b" / f"{stem}.box", extra)
    monkeypatch.chdir(tmp_path)
    main(["consensus", "pickers=[a,b]", "box_size=100", "micrographs=mics", "relion_micrographs=null", "out_dir=out"])
    assert "picker 'b': 2 boxes outside their micrograph dropped" in capsys.readouterr().err
    summary = pd.read_csv(Path(tmp_path, "out", "summary.tsv"), sep="\t")
    assert summary["notes"].tolist() == ["b: 1 boxes centred outside the 1000x800 px micrograph dropped"] * 2
    assert summary["selected"].tolist() == [2, 1]
