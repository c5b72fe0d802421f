"""Coordinate readers/writers: known answers, round trips, robustness cases and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import (
    PickSet, collect_picker_files, pair_micrographs, read_box, read_csv, read_picks, relion_coordinate_path,
    relion_micrograph_names, split_topaz, write_box, write_cbox, write_csv, write_relion_autopick,
    write_relion_coordinate_index, write_relion_star, write_topaz,
)


def _picks() -> PickSet:
    return PickSet(np.array([[100.5, 200.25], [3000.0, 12.0], [7.0, 4000.0]]), np.full(3, 180.0),
                   np.array([0.9, -2.5, 0.125]))


def test_box_corner_is_converted_to_centre(tmp_path: Path) -> None:
    """Known answer: EMAN BOX 'x y w h score' is the lower-left corner; the centre is corner + w/2."""
    f = tmp_path / "m.box"
    f.write_text("10\t20\t180\t180\t0.5\n")
    p = read_box(f)
    np.testing.assert_allclose(p.centres, [[100.0, 110.0]])
    assert p.box_size.tolist() == [180.0] and p.scores.tolist() == [0.5] and p.has_scores


def test_box_six_columns_blank_lines_header_and_no_scores(tmp_path: Path) -> None:
    """Robustness: a 6-column BOX, a header line, blank and trailing blank lines all read; a BOX
    without scores gets score 1 (as REPIC)."""
    f = tmp_path / "a.box"
    f.write_text("x y w h score extra\n0 0 100 100 0.7 -3\n\n10 10 100 100 0.2 -3\n\n\n")
    p = read_box(f)
    assert len(p) == 2 and p.scores.tolist() == [0.7, 0.2]
    g = tmp_path / "b.box"
    g.write_text("0 0 100 100\n")
    q = read_box(g)
    assert q.scores.tolist() == [1.0] and not q.has_scores


def test_empty_file_reads_as_no_boxes(tmp_path: Path) -> None:
    """Robustness: empty files of every format give an empty PickSet, not an error."""
    for name in ("e.box", "e.csv", "e.tsv"):
        (tmp_path / name).write_text("")
        assert len(read_picks(tmp_path / name, box_size=100)) == 0
    (tmp_path / "h.tsv").write_text("image_name\tx_coord\ty_coord\tscore\n")
    assert len(read_picks(tmp_path / "h.tsv", box_size=100)) == 0


def test_malformed_number_names_file_and_line(tmp_path: Path) -> None:
    """Bad input: a malformed number raises InputError naming the file and the line number."""
    f = tmp_path / "bad.box"
    f.write_text("0 0 100 100 0.5\n1 2 100 1O0 0.5\n")
    with pytest.raises(InputError, match=r"bad\.box:2: height '1O0' is not a number"):
        read_box(f)
    g = tmp_path / "bad.csv"
    g.write_text("x,y,score\n1,2,0.5\n3,abc,0.1\n")
    with pytest.raises(InputError, match=r"bad\.csv: row 2 \(line 3\)"):
        read_csv(g, box_size=100)


@pytest.mark.parametrize("suffix,writer", [(".box", write_box), (".cbox", write_cbox), (".star", write_relion_star),
                                           ("_autopick.star", write_relion_autopick), (".tsv", write_topaz),
                                           (".csv", write_csv)])
def test_round_trip_every_format(tmp_path: Path, suffix: str, writer) -> None:
    """Round trip: write then read gives the same centres (BOX rounds corners to whole pixels, as
    REPIC writes them), sizes and scores."""
    picks = _picks()
    path = tmp_path / f"mic{suffix}"
    writer(path, picks, **({"image_name": "mic"} if suffix == ".tsv" else {}))
    back = read_picks(path, box_size=None if suffix in (".box", ".cbox", ".csv") else 180)
    tol = 0.5 if suffix == ".box" else 1e-6
    np.testing.assert_allclose(back.centres, picks.centres, atol=tol)
    np.testing.assert_allclose(back.box_size, picks.box_size)
    np.testing.assert_allclose(back.scores, picks.scores, rtol=1e-5)


def test_split_topaz_by_image_name(tmp_path: Path) -> None:
    """A multi-micrograph Topaz file splits into one PickSet per image_name."""
    f = tmp_path / "all.txt"
    f.write_text("image_name\tx_coord\ty_coord\tscore\nmic_1\t10\t20\t1.5\nmic_10\t30\t40\t-1\nmic_1\t50\t60\t2\n")
    parts = split_topaz(f, box_size=64)
    assert sorted(parts) == ["mic_1", "mic_10"]
    np.testing.assert_allclose(parts["mic_1"].centres, [[10, 20], [50, 60]])


def test_pairing_by_exact_stem_ignores_stray_folders(tmp_path: Path) -> None:
    """Robustness: mic_1 and mic_10 stay different micrographs; a picker missing a file gets None;
    a stray sub-folder and unrelated files inside a picker folder are ignored."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "stray").mkdir()
        (d / "notes.md").write_text("hi")
    for name in ("mic_1.box", "mic_10.box"):
        (a / name).write_text("0 0 10 10 1\n")
    (b / "mic_10.box").write_text("0 0 10 10 1\n")
    pairs = pair_micrographs({"a": collect_picker_files(a), "b": collect_picker_files(b)})
    assert [s for s, _ in pairs] == ["mic_1", "mic_10"]
    assert pairs[0][1]["b"] is None and pairs[1][1]["b"] == b / "mic_10.box"


def test_duplicate_stem_and_missing_folder_are_errors(tmp_path: Path) -> None:
    """Bad input: two files for one micrograph, or a picker folder that does not exist."""
    (tmp_path / "m.box").write_text("")
    (tmp_path / "m.star").write_text("")
    with pytest.raises(InputError, match="both micrograph 'm'"):
        collect_picker_files(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        collect_picker_files(tmp_path / "nope")


def test_real_empiar10017_files(shared_data: Path) -> None:
    """Real data: the three pickers' BOX files and the expert CSV (diameter 108 px) read with the
    counts of the files (719 / 381 / 789 boxes, 629 reference particles)."""
    d = shared_data / "picking" / "empiar10017"
    stem = "Falcon_2012_06_12-14_33_35_0"
    counts = {p: len(read_picks(d / p / f"{stem}.box")) for p in ("crYOLO", "deepPicker", "topaz")}
    assert counts == {"crYOLO": 719, "deepPicker": 381, "topaz": 789}
    ref = read_picks(d / "ground_truth" / f"{stem}.csv")
    assert len(ref) == 629 and set(ref.box_size.tolist()) == {108.0}


@pytest.mark.parametrize("name,expected", [
    ("MotionCorr/job002/Movies/x.mrc", "Movies/x_autopick.star"),
    ("Micrographs/x.mrc", "Micrographs/x_autopick.star"),
    ("x.mrc", "x_autopick.star"),
    ("/data/mics/x.tiff", "data/mics/x_autopick.star"),
    ("a/b/job012/sub/x.y.mrc", "sub/x.y_autopick.star"),
    ("Movies/jobs/x.mrc", "Movies/jobs/x_autopick.star"),
])
def test_relion_coordinate_path_is_where_relion_looks(name: str, expected: str) -> None:
    """Known answers for RELION 3.1's lookup below --coord_dir (the pipeline job folder is cut,
    as measured with relion_preprocess 3.1.3 in tests/test_relion_extract.py)."""
    assert relion_coordinate_path(name) == expected


def test_relion_coordinate_path_rejects_names_relion_cannot_mirror() -> None:
    """Bad input: '..' would put RELION's lookup outside --coord_dir; white space cannot be a STAR value."""
    with pytest.raises(InputError, match=r"climbs out"):
        relion_coordinate_path("../raw/x.mrc")
    with pytest.raises(InputError, match="white space"):
        relion_coordinate_path("Micrographs/a b.mrc")


def _micrographs_star(path: Path, names: list[str]) -> None:
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                                            "rlnMicrographPixelSize": [1.5]}),
                    "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})}, path)


def test_relion_micrograph_names_from_star_and_from_folder(tmp_path: Path) -> None:
    """A RELION 3.1 micrographs STAR maps stems to its names (stems it lacks are left out); a folder
    gives <folder>/<stem> with the suffix of an existing micrograph, else .mrc."""
    star = tmp_path / "micrographs_ctf.star"
    _micrographs_star(star, ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Movies/b.mrc"])
    assert relion_micrograph_names(star, ["a", "c"]) == {"a": "MotionCorr/job002/Movies/a.mrc"}
    (tmp_path / "Mics").mkdir()
    (tmp_path / "Mics" / "a.tif").write_text("")
    folder = f"{tmp_path}/Mics/"
    assert relion_micrograph_names(folder, ["a", "b"]) == {"a": f"{tmp_path}/Mics/a.tif", "b": f"{tmp_path}/Mics/b.mrc"}


def test_relion_micrograph_names_bad_star(tmp_path: Path) -> None:
    """Bad input: a missing STAR, one without _rlnMicrographName, two micrographs of one stem."""
    with pytest.raises(InputError, match="does not exist"):
        relion_micrograph_names(tmp_path / "none.star", ["a"])
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0]})}, tmp_path / "p.star")
    with pytest.raises(InputError, match="_rlnMicrographName"):
        relion_micrograph_names(tmp_path / "p.star", ["a"])
    _micrographs_star(tmp_path / "m.star", ["A/a.mrc", "B/a.mrc"])
    with pytest.raises(InputError, match="share the stem 'a'"):
        relion_micrograph_names(tmp_path / "m.star", ["a"])


def test_relion_autopick_file_is_spelled_as_relion_writes_it(tmp_path: Path) -> None:
    """Known answer: block data_, RELION's column order and %12.6f numbers, class 0 and psi 0;
    no boxes writes the header alone, which reads back as no boxes."""
    f = tmp_path / "m_autopick.star"
    write_relion_autopick(f, PickSet(np.array([[100.5, 7.0]]), np.array([64.0]), np.array([0.25])))
    assert f.read_text().splitlines() == [
        "", "# version 30001", "", "data_", "", "loop_ ", "_rlnCoordinateX #1 ", "_rlnCoordinateY #2 ",
        "_rlnAutopickFigureOfMerit #3 ", "_rlnClassNumber #4 ", "_rlnAnglePsi #5 ",
        "  100.500000     7.000000     0.250000            0     0.000000 ", " "]
    write_relion_autopick(f, PickSet.empty())
    assert len(read_picks(f, box_size=64)) == 0 and "_rlnAnglePsi #5" in f.read_text()


def test_relion_coordinate_index_reads_as_relion_4_table(tmp_path: Path) -> None:
    """The autopick.star index: block data_coordinate_files, micrograph name -> coordinate file."""
    f = tmp_path / "autopick.star"
    write_relion_coordinate_index(f, [("Movies/a.mrc", "Cons/Movies/a_autopick.star")])
    table = starfile.read(f, always_dict=True)["coordinate_files"]
    assert table.to_dict("records") == [{"rlnMicrographName": "Movies/a.mrc",
                                         "rlnMicrographCoordinates": "Cons/Movies/a_autopick.star"}]
