"""MRC stacks and volumes: round trips, memory-mapped random access, permissive reading of the
RELION 3.1 stack, every bad-input case with its message, and atomic writes."""

from __future__ import annotations

import pickle
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io import mrc as mrc_module
from ackmeans_torch.io.mrc import (
    MrcHeaderWarning,
    load_volume,
    open_stack,
    read_volume,
    write_stack,
    write_volume,
)


def write_raw_mrc(path, data: np.ndarray, *, stack: bool = True) -> None:
    """Tiny test asset writer that bypasses the project's checks (to make bad files)."""
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # header stats of deliberate NaN files
        m.set_data(data)
        if stack:
            m.set_image_stack()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 12, 12)).astype(np.float32)


def test_write_stack_open_stack_round_trip(tmp_path, images):
    """Round trip: pixels identical, pixel size, N, L, float32 mode 2 and image-stack header."""
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 1.75)
    with open_stack(path) as stack:
        assert (len(stack), stack.box_size) == (6, 12)
        assert stack.pixel_size == pytest.approx(1.75)
        np.testing.assert_array_equal(stack[0:6], images)
    with mrcfile.open(path, header_only=True) as m:
        assert int(m.header.mode) == 2 and int(m.header.ispg) == 0  # float32 image stack


def test_write_stack_accepts_torch(tmp_path, images):
    """Round trip from a torch tensor gives the same pixels."""
    path = tmp_path / "t.mrcs"
    write_stack(path, torch.from_numpy(images), 2.0)
    np.testing.assert_array_equal(open_stack(path)[:], images)


def test_random_access_int_slice_array(tmp_path, images):
    """Known answer: int, negative int, strided slice and unordered index arrays return exactly
    those images as (B, L, L) float32."""
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 1.0)
    stack = open_stack(path)
    np.testing.assert_array_equal(stack[3], images[3:4])
    np.testing.assert_array_equal(stack[-1], images[5:6])
    np.testing.assert_array_equal(stack[1:6:2], images[1:6:2])
    np.testing.assert_array_equal(stack[np.array([4, 0, 4])], images[[4, 0, 4]])
    assert stack[[2]].dtype == np.float32 and stack[[2]].shape == (1, 12, 12)
    with pytest.raises(IndexError, match="image 6 requested; the stack has 6"):
        stack[6]


def test_stack_is_memory_mapped_and_picklable(tmp_path, images):
    """Reads go through a memory map (not a loaded copy); a pickled stack re-opens its map."""
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 1.0)
    stack = open_stack(path)
    assert isinstance(stack._data(), np.memmap)
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone[[1, 2]], images[[1, 2]])


def test_volume_round_trip_keeps_voxel_size(tmp_path):
    """Round trip: (L, L, L) values and voxel size preserved; a header without one reads 0.0."""
    volume = np.random.default_rng(1).normal(size=(9, 9, 9)).astype(np.float32)
    write_volume(tmp_path / "v.mrc", volume, 3.25)
    back, voxel = read_volume(tmp_path / "v.mrc")
    np.testing.assert_array_equal(back, volume)
    assert voxel == pytest.approx(3.25)
    write_raw_mrc(tmp_path / "bare.mrc", volume, stack=False)
    assert read_volume(tmp_path / "bare.mrc")[1] == 0.0


def test_volume_axes_are_zyx(tmp_path):
    """Known answer: a volume written with a bright voxel at (z, y, x) = (1, 2, 3) reads back there
    and mrcfile's header says nx is the last axis."""
    volume = np.zeros((4, 5, 6), np.float32)
    write_raw_mrc(tmp_path / "r.mrc", volume, stack=False)
    with mrcfile.open(tmp_path / "r.mrc", header_only=True) as m:
        assert (int(m.header.nx), int(m.header.ny), int(m.header.nz)) == (6, 5, 4)
    cube = np.zeros((5, 5, 5), np.float32)
    cube[1, 2, 3] = 1.0
    write_volume(tmp_path / "c.mrc", cube, 1.0)
    assert np.argwhere(read_volume(tmp_path / "c.mrc")[0] == 1.0).tolist() == [[1, 2, 3]]


def test_relion31_old_header_read_permissively_with_warning(shared_data):
    """The RELION 3.1 stack lacks the MAP id: it opens in permissive mode with a warning that
    names the file, and its 5 images of 256 px are finite."""
    path = shared_data / "particles" / "relion31_five" / "relion31.mrcs"
    with pytest.warns(MrcHeaderWarning, match=r"relion31\.mrcs.*permissive"):
        stack = open_stack(path)
    assert (len(stack), stack.box_size) == (5, 256)
    assert np.isfinite(stack[:]).all() and stack[:].std() > 0


# ---- bad input: one line naming the file and the problem -------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.mrcs: no such MRC file"):
        open_stack(tmp_path / "nothere.mrcs")
    with pytest.raises(InputError, match=r"nothere\.mrc: no such MRC file"):
        read_volume(tmp_path / "nothere.mrc")


def test_truncated_stack(tmp_path, images):
    path = tmp_path / "cut.mrcs"
    write_stack(path, images, 1.0)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(InputError, match=r"cut\.mrcs: truncated MRC file: .*6 sections of 12x12"):
        open_stack(path)


def test_corrupt_header_dimensions(tmp_path, images):
    path = tmp_path / "bad.mrcs"
    write_stack(path, images, 1.0)
    raw = bytearray(path.read_bytes())
    raw[0:12] = bytes(12)  # nx = ny = nz = 0
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"bad\.mrcs: corrupt MRC header \(dimensions nx=0"):
        open_stack(path)


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "text.mrcs"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"text\.mrcs: not a readable MRC file"):
        open_stack(path)


def test_non_square_images(tmp_path):
    path = tmp_path / "rect.mrcs"
    write_raw_mrc(path, np.zeros((2, 8, 6), np.float32))
    with pytest.raises(InputError, match=r"rect\.mrcs: images are 6x8 px.*only square"):
        open_stack(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_pixels_named_with_image_index(tmp_path, images, bad):
    path = tmp_path / "nan.mrcs"
    images[4, 3, 3] = bad
    write_raw_mrc(path, images)
    stack = open_stack(path)
    np.testing.assert_array_equal(stack[0:3], images[0:3])  # clean chunks still read
    with pytest.raises(InputError, match=r"nan\.mrcs: image 4 \(0-based\) contains NaN or Inf"):
        stack[2:6]
    with pytest.raises(InputError, match=r"nan\.mrcs: image 4 \(0-based\)"):
        stack[np.array([1, 4])]


def test_non_cube_volume(tmp_path):
    path = tmp_path / "slab.mrc"
    write_raw_mrc(path, np.zeros((4, 6, 6), np.float32), stack=False)
    with pytest.raises(InputError, match=r"slab\.mrc: volume has shape \(4, 6, 6\).*cube"):
        read_volume(path)


def test_writers_refuse_bad_shapes_and_values(tmp_path, images):
    with pytest.raises(InputError, match=r"v\.mrc: volume must have shape \(L, L, L\)"):
        write_volume(tmp_path / "v.mrc", np.zeros((3, 4, 4)), 1.0)
    with pytest.raises(InputError, match=r"s\.mrcs: images must have shape \(N, L, L\)"):
        write_stack(tmp_path / "s.mrcs", np.zeros((3, 4, 5)), 1.0)
    images[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"s\.mrcs: refusing to write NaN"):
        write_stack(tmp_path / "s.mrcs", images, 1.0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_and_keeps_old_one(tmp_path, images, monkeypatch):
    """A write that fails half-way leaves nothing under the final name (and no temp file), and
    an existing file keeps its old content."""
    real_new = mrcfile.new

    def new_then_fail(path, *args, **kwargs):
        handle = real_new(path, *args, **kwargs)
        handle.set_data(np.zeros((1, 4, 4), np.float32))
        handle.close()
        raise OSError("disk full")

    monkeypatch.setattr(mrc_module.mrcfile, "new", new_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_stack(tmp_path / "s.mrcs", images, 1.0)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(mrc_module.mrcfile, "new", real_new)
    write_volume(tmp_path / "v.mrc", np.ones((4, 4, 4)), 1.0)
    before = (tmp_path / "v.mrc").read_bytes()
    monkeypatch.setattr(mrc_module.mrcfile, "new", new_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_volume(tmp_path / "v.mrc", np.zeros((4, 4, 4)), 2.0)
    assert (tmp_path / "v.mrc").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]


def test_load_volume_round_trip_and_voxel_size(tmp_path):
    """A map written with voxel size 2.5 Å loads back identical with 2.5; an override wins; a
    header voxel size of 0 without an override asks for voxel_size."""
    v = torch.from_numpy(np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32))
    write_volume(tmp_path / "p.mrc", v, 2.5)
    loaded, voxel = load_volume(tmp_path / "p.mrc")
    torch.testing.assert_close(loaded, v)
    assert voxel == pytest.approx(2.5)
    assert load_volume(tmp_path / "p.mrc", voxel_size=5.0)[1] == 5.0
    write_volume(tmp_path / "z.mrc", v, 0.0)
    with pytest.raises(InputError, match="voxel_size"):
        load_volume(tmp_path / "z.mrc")


def test_load_shared_ribosome(shared_data):
    """The paper's ribosome map loads as 65³ float32; its header has no voxel size, so 5 Å is given."""
    volume, voxel = load_volume(shared_data / "volumes" / "ribosome70S_65px.mrc", voxel_size=5.0)
    assert volume.shape == (65, 65, 65) and volume.dtype == torch.float32 and voxel == 5.0


def test_complex_mrc_refused(tmp_path):
    """A mode-4 (complex64) file is Fourier data: refused when opened, as stack and as volume."""
    path = tmp_path / "ft.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 8, 8), np.complex64))
    with pytest.raises(InputError, match=r"ft\.mrcs: MRC mode 4 holds complex"):
        open_stack(path)
    with pytest.raises(InputError, match="holds complex"):
        read_volume(path)


def test_written_stacks_are_byte_identical_without_a_time_label(tmp_path, images):
    write_stack(tmp_path / "a.mrcs", images, 1.5)
    write_stack(tmp_path / "b.mrcs", images, 1.5)
    assert (tmp_path / "a.mrcs").read_bytes() == (tmp_path / "b.mrcs").read_bytes()
    with mrcfile.open(tmp_path / "a.mrcs") as mrc:
        assert mrc.header.label[0] == b"ackmeans_torch" and int(mrc.header.nlabl) == 1
