"""StackSource / open_source: images from STAR, .cs and bare stacks match the stacks' pixels,
reads are lazy and ordered, references are checked (missing stack, out-of-range index, mixed
boxes), NaN pixels are reported, and reading never modifies an input file."""

from __future__ import annotations

import hashlib
import pickle
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.data.stack import StackSource, open_source
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.cryosparc import read_cs
from ackmeans_torch.io.mrc import MrcHeaderWarning, write_stack
from ackmeans_torch.io.star import read_particles, write_particles


def _table(names: list[str], pixel_size: float = 1.5) -> pd.DataFrame:
    return pd.DataFrame({"rlnImageName": names, "rlnImagePixelSize": pixel_size})


@pytest.fixture
def two_stacks(tmp_path):
    """Two stacks of 8 px images (4 and 3 images) whose pixel (0, 0) holds a unique id."""
    a = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(3, 8, 8)).astype(np.float32)
    a[:, 0, 0], b[:, 0, 0] = [10, 11, 12, 13], [20, 21, 22]
    (tmp_path / "sub").mkdir()
    write_stack(tmp_path / "a.mrcs", a, 1.5)
    write_stack(tmp_path / "sub" / "b.mrcs", b, 1.5)
    return tmp_path, a, b


def test_star_source_reads_the_right_images_in_any_order(two_stacks):
    """Known answer: a STAR interleaving two stacks (one in a sub-folder) returns, for any
    requested order, exactly the referenced images; chunks cover all in order."""
    folder, a, b = two_stacks
    names = ["2@a.mrcs", "3@sub/b.mrcs", "1@a.mrcs", "1@sub/b.mrcs", "000004@a.mrcs"]
    write_particles(folder / "p.star", _table(names))
    source = open_source(folder / "p.star")
    assert isinstance(source, ImageSource) and len(source) == 5
    assert (source.box_size, source.pixel_size) == (8, 1.5)
    expected = np.stack([a[1], b[2], a[0], b[0], a[3]])
    got = source.images([4, 0, 3, 1])
    assert got.dtype == torch.float32 and got.shape == (4, 8, 8)
    np.testing.assert_array_equal(got.numpy(), expected[[4, 0, 3, 1]])
    np.testing.assert_array_equal(source.images(slice(1, 4)).numpy(), expected[1:4])
    chunks = list(source.chunks(2))
    assert [c[0].tolist() for c in chunks] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(torch.cat([c[1] for c in chunks]).numpy(), expected)
    with pytest.raises(IndexError, match="out of range"):
        source.images([5])


def test_few_open_maps_and_pickling(two_stacks):
    """With max_open_stacks=1, alternating reads across stacks stay correct with one map open;
    a pickled source (DataLoader workers) reads the same images."""
    folder, a, b = two_stacks
    write_particles(folder / "p.star", _table(["000001@a.mrcs", "000001@sub/b.mrcs"]))
    source = StackSource(read_particles(folder / "p.star"), max_open_stacks=1)
    for _ in range(2):
        np.testing.assert_array_equal(source.images([0, 1]).numpy(), np.stack([a[0], b[0]]))
        assert sum(s._mrc is not None for s in source._stacks) == 1
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.images([1]).numpy(), b[:1])


def test_bare_stack_source(two_stacks):
    """A bare .mrcs gives every image with a minimal table (names, header pixel size, zero
    origins, one optics group, box size)."""
    folder, a, _ = two_stacks
    source = open_source(folder / "a.mrcs")
    np.testing.assert_array_equal(source.images(np.arange(4)).numpy(), a)
    p = source.particles
    assert p["rlnImageName"].tolist() == [f"{i:06d}@a.mrcs" for i in range(1, 5)]
    assert (p["rlnOriginXAngst"] == 0).all() and (p["rlnOpticsGroup"] == 1).all()
    assert source.pixel_size == pytest.approx(1.5) and (p["rlnImageSize"] == 8).all()
    assert StackSource.from_stack(folder / "a.mrcs", pixel_size=3.0).pixel_size == 3.0
    # the dispatcher passes a bare stack's pixel size on (a header may say 0)
    assert open_source(folder / "a.mrcs", pixel_size=3.0).pixel_size == 3.0


def test_relion30_and_relion31_sources_match_the_stacks(shared_data):
    """Real data: the RELION 3.0 STAR reads the 17 images of sample.mrcs in order; the RELION
    3.1 STAR reads its 5 images (old header: permissive, with a warning naming the stack)."""
    folder = shared_data / "particles"
    source = open_source(folder / "relion30_sample17" / "sample_relion_data.star")
    with mrcfile.open(folder / "relion30_sample17" / "sample.mrcs") as m:
        np.testing.assert_array_equal(source.images(np.arange(17)).numpy(), m.data)
    assert source.box_size == 200 and source.pixel_size == pytest.approx(5e4 / 37369.207031)
    with pytest.warns(MrcHeaderWarning, match=r"relion31\.mrcs"):
        source = open_source(folder / "relion31_five" / "relion31.star")
    assert source.images([4, 0]).shape == (2, 256, 256) and source.pixel_size == 2.806


def test_empiar10076_star_and_cs_give_identical_pixels(shared_data):
    """The same 7 particles opened from .star and .cs give bit-identical images."""
    folder = shared_data / "particles" / "empiar10076_seven"
    from_star = open_source(folder / "empiar_10076_7.star").images(np.arange(7))
    from_cs = open_source(folder / "empiar_10076_7.cs").images(np.arange(7))
    assert from_star.shape == (7, 320, 320)
    assert torch.equal(from_star, from_cs)


def test_reading_never_modifies_inputs(shared_data):
    """Reading every shared particle file through every reader leaves content and mtime as they
    were."""
    files = sorted(p for p in (shared_data / "particles").rglob("*") if p.is_file())

    def fingerprint():
        return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}

    before = fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MrcHeaderWarning)
        for path in files:
            if path.suffix in (".mrc", ".mrcs"):
                open_source(path).images(slice(None))
        for name in ("relion30_sample17/sample_relion_data.star", "relion31_five/relion31.star",
                     "relion31_five/relion31.v2.star", "empiar10076_seven/empiar_10076_7.star",
                     "empiar10076_seven/empiar_10076_7.cs"):
            open_source(shared_data / "particles" / name).images(slice(None))
    read_particles(shared_data / "particles" / "relion31_five" / "relion31.6opticsgroups.star")
    read_cs(shared_data / "particles" / "cryosparc_poses" / "cryosparc_P12_J24_001_particles.cs")
    assert fingerprint() == before


# ---- bad input --------------------------------------------------------------------------------


def test_unknown_extension(tmp_path):
    with pytest.raises(InputError, match=r"x\.txt: unknown particle file type '\.txt'"):
        open_source(tmp_path / "x.txt")


def test_missing_particle_file(tmp_path):
    with pytest.raises(InputError, match=r"none\.star: no such STAR file"):
        open_source(tmp_path / "none.star")
    with pytest.raises(InputError, match=r"none\.mrcs: no such MRC file"):
        open_source(tmp_path / "none.mrcs")


def test_reference_to_missing_stack(two_stacks):
    folder, _, _ = two_stacks
    write_particles(folder / "p.star", _table(["000001@a.mrcs", "000001@gone.mrcs"]))
    with pytest.raises(InputError, match=r"p\.star: particle 1 refers to missing stack .*gone\.mrcs"):
        open_source(folder / "p.star")


def test_reference_to_out_of_range_index(two_stacks):
    folder, _, _ = two_stacks
    write_particles(folder / "p.star", _table(["000001@a.mrcs", "000005@a.mrcs"]))
    message = r"p\.star: refers to image 5 \(1-based\) of .*a\.mrcs, which holds 4"
    with pytest.raises(InputError, match=message):
        open_source(folder / "p.star")


def test_stacks_with_different_boxes(two_stacks):
    folder, _, _ = two_stacks
    write_stack(folder / "big.mrcs", np.zeros((1, 10, 10)), 1.5)
    write_particles(folder / "p.star", _table(["000001@a.mrcs", "000001@big.mrcs"]))
    with pytest.raises(InputError, match=r"p\.star: stacks have different box sizes \[8, 10\]"):
        open_source(folder / "p.star")


def test_nan_pixels_reported_on_read(two_stacks):
    """A NaN pixel is reported when its chunk is read, naming the stack and image index."""
    folder, a, _ = two_stacks
    a[2, 4, 4] = np.nan
    with warnings.catch_warnings(), mrcfile.new(folder / "n.mrcs") as m:
        warnings.simplefilter("ignore", RuntimeWarning)
        m.set_data(a)
    source = open_source(folder / "n.mrcs")
    source.images([0, 1])
    with pytest.raises(InputError, match=r"n\.mrcs: image 2 \(0-based\) contains NaN or Inf"):
        source.images([3, 2])


def test_non_square_stack_via_source(tmp_path):
    with mrcfile.new(tmp_path / "r.mrcs") as m:
        m.set_data(np.zeros((2, 6, 8), np.float32))
    with pytest.raises(InputError, match=r"r\.mrcs: images are 8x6 px"):
        open_source(tmp_path / "r.mrcs")


def test_missing_stack_names_both_places_tried(tmp_path, monkeypatch):
    """A relative stack found neither in the project directory nor next to the STAR: the one
    line names the stack as written and both folders."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "job").mkdir()
    write_particles(tmp_path / "job" / "p.star", _table(["000001@Extract/gone.mrcs"]))
    monkeypatch.chdir(tmp_path / "proj")
    with pytest.raises(InputError) as error:
        open_source(tmp_path / "job" / "p.star")
    message = str(error.value)
    assert "\n" not in message
    assert f"missing stack Extract/gone.mrcs (in neither {tmp_path / 'proj'} nor " \
           f"{tmp_path / 'job'})" in message


def test_image_names_kept_from_the_project_dir_else_rewritten(two_stacks, monkeypatch):
    """Names valid from the project directory come back exactly as given (even unpadded);
    names valid only next to the STAR come back relative to the project directory."""
    folder, _, _ = two_stacks
    (folder / "job").mkdir()
    write_stack(folder / "job" / "c.mrcs", np.zeros((2, 8, 8), np.float32), 1.5)
    write_particles(folder / "job" / "p.star", _table(["2@a.mrcs", "000002@c.mrcs"]))
    monkeypatch.chdir(folder)
    source = open_source("job/p.star")
    assert source.image_names(folder) == ["2@a.mrcs", "000002@job/c.mrcs"]
    assert source.image_names(folder / "job") == ["000002@../a.mrcs", "000002@c.mrcs"]


def test_duplicate_image_references_warned_with_the_count(two_stacks):
    folder, _, _ = two_stacks
    write_particles(folder / "p.star", _table(["1@a.mrcs", "000001@a.mrcs", "1@a.mrcs",
                                               "2@a.mrcs", "2@sub/b.mrcs"]))
    with pytest.warns(UserWarning, match=r"p\.star: 2 particle\(s\) repeat an image another "
                                         r"particle names \(e\.g\. 1@a\.mrcs, 3 times\)"):
        open_source(folder / "p.star")
