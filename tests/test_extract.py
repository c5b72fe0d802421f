"""Particle extraction: which pixels a box takes, edges, contrast, Fourier crop, normalisation, and
the stack + particles.star it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import PickSet
from ackmeans_torch.io.mrc import open_stack
from ackmeans_torch.io.star import read_particles
from ackmeans_torch.micrographs.extract import (
    ExtractionWarning, ExtractOptions, extract_particles, normalise_background, write_extracted,
)
from ackmeans_torch.micrographs.io import CTF_KEYS, Micrograph

CTF = dict(zip(CTF_KEYS, (15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1)))


def _picks(xy, scores=None) -> PickSet:
    xy = np.asarray(xy, dtype=float)
    return PickSet(xy, np.full(len(xy), 8.0), np.ones(len(xy)) if scores is None else np.asarray(scores, float),
                   has_scores=scores is not None)


def _ramp(h=40, w=60) -> Micrograph:
    """A micrograph whose pixel (row y, column x) holds 1000·y + x, so every box says where it was cut."""
    y, x = np.mgrid[:h, :w]
    return Micrograph("m", None, 2.0, CTF, data=(1000.0 * y + x).astype(np.float32))


def test_box_centre_is_the_truncated_coordinate_at_index_half_box():
    """A coordinate (x, y) = (10.4, 20.6) lands on pixel (10, 20) at box index L//2 for even and
    odd L; x is the column and y the row; the fraction is cut off as relion_preprocess does."""
    for box in (8, 9):
        stack, table = extract_particles([_ramp()], {"m": _picks([(10.4, 20.6), (30.5, 12.5)])},
                                         ExtractOptions(box_size=box, normalise=False))
        c = box // 2
        assert stack.shape == (2, box, box)
        assert stack[0, c, c] == 1000 * 20 + 10 and stack[1, c, c] == 1000 * 12 + 30
        assert stack[0, 0, 0] == 1000 * (20 - c) + (10 - c)
        assert table["rlnCoordinateX"].tolist() == [10.4, 30.5]


def test_edge_boxes_are_skipped_with_a_count_or_padded_with_the_edge():
    """edge=skip drops the box crossing the edge and says how many in a warning; edge=pad keeps it,
    repeating the micrograph's edge column outside the image (as relion_preprocess)."""
    mic, picks = _ramp(), {"m": _picks([(2.0, 20.0), (30.0, 20.0)])}
    with pytest.warns(ExtractionWarning, match="1 boxes of 8 px crossing the micrograph edge were skipped.*m: 1"):
        stack, table = extract_particles([mic], picks, ExtractOptions(box_size=8, normalise=False))
    assert len(stack) == 1 and table["rlnCoordinateX"].tolist() == [30.0]
    stack, _ = extract_particles([mic], picks, ExtractOptions(box_size=8, normalise=False, edge="pad"))
    assert len(stack) == 2
    rows = 1000.0 * torch.arange(16, 24)
    assert torch.equal(stack[0, :, 0], rows) and torch.equal(stack[0, :, 2], rows)
    assert torch.equal(stack[0, :, 4], rows + 2)


def test_picks_of_unknown_micrographs_are_reported():
    """Coordinates naming a micrograph that is not given are counted in a warning."""
    with pytest.warns(ExtractionWarning, match="3 picks of 1 micrographs without an image.*other"):
        stack, _ = extract_particles([_ramp()], {"m": _picks([(30, 20)]), "other": _picks([(5, 5)] * 3)},
                                     ExtractOptions(box_size=8))
    assert len(stack) == 1


def test_invert_crop_and_normalise():
    """Contrast inversion negates; a Fourier crop to 8 halves the side and doubles the pixel size;
    normalisation removes a background plane and leaves the background (outside the radius) at
    mean 0, std 1."""
    rng = np.random.default_rng(0)
    mic = Micrograph("m", None, 1.5, None, data=rng.normal(3.0, 2.0, (64, 64)).astype(np.float32))
    picks = {"m": _picks([(20, 20), (40, 33)], scores=[0.2, 0.9])}
    plain, _ = extract_particles([mic], picks, ExtractOptions(box_size=16, normalise=False))
    inverted, _ = extract_particles([mic], picks, ExtractOptions(box_size=16, normalise=False, invert_contrast=True))
    assert torch.equal(inverted, -plain)
    crop, table = extract_particles([mic], picks, ExtractOptions(box_size=16, fourier_crop_to=8, normalise=False))
    assert crop.shape == (2, 8, 8) and table["rlnImagePixelSize"].tolist() == [3.0, 3.0]
    assert crop.mean((1, 2)) == pytest.approx(plain.mean((1, 2)), abs=1e-4)
    assert table["rlnAutopickFigureOfMerit"].tolist() == [0.2, 0.9] and "rlnDefocusU" not in table
    axis = torch.arange(16.0) - 8
    ramp = 0.5 * axis[None, :] - 0.3 * axis[:, None]  # a background tilt the normalisation removes
    norm = normalise_background(plain + ramp, 5.0)
    outside = axis[:, None] ** 2 + axis[None] ** 2 > 25
    assert norm[:, outside].mean(1) == pytest.approx([0, 0], abs=1e-5)
    assert norm[:, outside].std(1, correction=0) == pytest.approx([1, 1], abs=1e-5)
    assert torch.allclose(norm, normalise_background(plain, 5.0), atol=1e-5)


def test_written_stack_and_star_read_back(tmp_path, monkeypatch):
    """write_extracted writes a stack and a RELION 4 particles.star whose image names, optics
    (pixel size, image size, voltage...) and per-particle CTF read back with the project's reader."""
    monkeypatch.chdir(tmp_path)
    stack, table = extract_particles([_ramp()], {"m": _picks([(20, 20), (30, 15), (45, 25)])},
                                     ExtractOptions(box_size=8, normalise=False))
    star = write_extracted("Extract", stack, table)
    read = read_particles(star)
    assert read.particles["rlnImageName"].tolist() == [f"{i:06d}@Extract/particles.mrcs" for i in (1, 2, 3)]
    assert read.optics["rlnImagePixelSize"].tolist() == [2.0] and read.optics["rlnImageSize"].tolist() == [8]
    assert read.particles["rlnDefocusU"].tolist() == [15000.0] * 3
    with open_stack(tmp_path / "Extract" / "particles.mrcs") as s:
        assert np.array_equal(s[:], stack.numpy())


def test_bad_input_is_one_line():
    """Unknown pixel size, an unknown edge mode and a crop larger than the box are named errors."""
    mic = Micrograph("m", None, None, None, data=np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match="pixel size unknown; give pixel_size"):
        extract_particles([mic], {"m": _picks([(16, 16)])}, ExtractOptions(box_size=8))
    with pytest.raises(InputError, match="edge='wrap' is unknown"):
        ExtractOptions(box_size=8, edge="wrap")
    with pytest.raises(InputError, match="fourier_crop_to=16 must be <= box_size=8"):
        ExtractOptions(box_size=8, fourier_crop_to=16)
    with pytest.raises(InputError, match="no particles to write"):
        write_extracted("x", torch.zeros((0, 8, 8)), extract_particles([mic], {}, ExtractOptions(box_size=8))[1])


def test_commands_simulate_then_extract(tmp_path, monkeypatch, capsys):
    """``simulate-micrographs`` then ``extract`` on its STAR and truth: every true particle is
    extracted with its micrograph's CTF, and the stack holds them; a missing micrographs STAR is
    one line on stderr with exit code 2 (the commands run in-process)."""
    from ackmeans_torch.cli.main import main

    monkeypatch.chdir(tmp_path)
    main(["simulate-micrographs", "out_dir=sim", "sim.n_micrographs=2", "sim.size=256",
          "sim.particles_per_micrograph=10", "sim.box_size=32"])
    monkeypatch.chdir(tmp_path / "sim")
    main(["extract", "micrographs=micrographs_ctf.star", "coordinates=truth/box", "box_size=32",
          "invert_contrast=true", "out_dir=Extract"])
    assert "extract: 20 particles from 2 micrographs" in capsys.readouterr().out
    table = read_particles(tmp_path / "sim" / "Extract" / "particles.star").particles
    assert len(table) == 20 and table["rlnDefocusU"].nunique() == 2
    assert table["rlnImageName"].iloc[0] == "000001@Extract/particles.mrcs"
    with open_stack(tmp_path / "sim" / "Extract" / "particles.mrcs") as s:
        assert len(s) == 20
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "micrographs=nope.star", "coordinates=truth/box", "box_size=32", "out_dir=bad"])
    assert exit_info.value.code == 2
    assert "micrographs STAR nope.star does not exist" in capsys.readouterr().err
    assert not (tmp_path / "sim" / "bad").exists()


def test_coordinate_files_pair_with_micrographs_as_the_consensus_pairs_pickers(tmp_path):
    """RELION autopick files (<micrograph>_autopick.star) pair with micrographs of the bare stem
    (said in a warning), and one Topaz file of two micrographs is split by image name."""
    from ackmeans_torch.io.coords import write_relion_autopick
    from ackmeans_torch.micrographs.extract import read_coordinates

    mics = [Micrograph(n, None, 1.0, None, data=np.zeros((64, 64), np.float32)) for n in ("a", "b")]
    for n in ("a", "b"):
        write_relion_autopick(tmp_path / "relion" / f"{n}_autopick.star", _picks([(20, 20), (40, 40)]))
    with pytest.warns(ExtractionWarning, match="<micrograph>_autopick paired"):
        picks = read_coordinates(tmp_path / "relion", mics, box_size=8)
    assert {n: len(p) for n, p in picks.items()} == {"a": 2, "b": 2}
    (tmp_path / "topaz").mkdir()
    (tmp_path / "topaz" / "all.txt").write_text("image_name\tx_coord\ty_coord\tscore\na\t10\t10\t1\nb\t20\t20\t2\n"
                                                "b\t30\t30\t3\n")
    picks = read_coordinates(tmp_path / "topaz", mics, box_size=8)
    assert {n: len(p) for n, p in picks.items()} == {"a": 1, "b": 2}
