"""Reading micrographs: MRC (memory-mapped), TIFF, PNG/JPEG, folders, globs and RELION micrographs
STAR files, with one-line errors for bad input."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
from PIL import Image

from ackmeans_torch.errors import InputError
from ackmeans_torch.micrographs.io import Micrograph, read_micrograph, read_micrographs, write_micrograph


def _image(h=30, w=50) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (h, w)).astype(np.float32)


def test_every_format_reads_back_as_written(tmp_path):
    """MRC float32 comes back memory-mapped and equal, int16 MRC converted; TIFF equal; an 8-bit
    PNG equal to its grey values and an RGB PNG to its luma; every shape is (H, W) as stored."""
    image = _image()
    write_micrograph(tmp_path / "a.mrc", image, 1.2)
    mrc = read_micrograph(tmp_path / "a.mrc")
    assert isinstance(mrc, np.memmap) and np.array_equal(mrc, image)
    with mrcfile.new(tmp_path / "b.mrc") as f:
        f.set_data((image * 100).astype(np.int16))
    assert np.array_equal(read_micrograph(tmp_path / "b.mrc"), (image * 100).astype(np.int16).astype(np.float32))
    tifffile.imwrite(tmp_path / "c.tif", image)
    assert np.array_equal(read_micrograph(tmp_path / "c.tif"), image)
    grey = (np.arange(30 * 50) % 256).reshape(30, 50).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "d.png")
    assert np.array_equal(read_micrograph(tmp_path / "d.png"), grey.astype(np.float32))
    rgb = np.stack([grey, np.zeros_like(grey), np.zeros_like(grey)], -1)
    Image.fromarray(rgb).save(tmp_path / "e.png")
    assert np.allclose(read_micrograph(tmp_path / "e.png"), grey * 0.299, atol=1e-3)
    assert Micrograph("a", tmp_path / "a.mrc").shape == (30, 50)


def test_folder_glob_and_star_sources(tmp_path, monkeypatch):
    """A folder lists its images by stem with the MRC pixel size; a glob picks some; a RELION 4
    micrographs STAR gives pixel size (optics) and CTF per micrograph, its names found from the
    project directory or beside the STAR file."""
    for stem in ("m2", "m1"):
        write_micrograph(tmp_path / "Micrographs" / f"{stem}.mrc", _image(), 1.5)
    (tmp_path / "Micrographs" / "notes.txt").write_text("not a micrograph")
    mics = read_micrographs(tmp_path / "Micrographs")
    assert [m.name for m in mics] == ["m1", "m2"] and mics[0].pixel_size == 1.5 and mics[0].ctf is None
    assert [m.name for m in read_micrographs(str(tmp_path / "Micrographs" / "m2*"))] == ["m2"]
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnMicrographPixelSize": [1.5],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    table = pd.DataFrame({"rlnMicrographName": ["Micrographs/m1.mrc", "Micrographs/m2.mrc"], "rlnOpticsGroup": [1, 1],
                          "rlnDefocusU": [10000.0, 20000.0], "rlnDefocusV": [9000.0, 19000.0],
                          "rlnDefocusAngle": [5.0, 6.0]})
    starfile.write({"optics": optics, "micrographs": table}, tmp_path / "micrographs_ctf.star")
    monkeypatch.chdir(tmp_path / "Micrographs")  # not the project directory: found beside the STAR
    mics = read_micrographs(tmp_path / "micrographs_ctf.star")
    assert [m.name for m in mics] == ["m1", "m2"] and mics[1].pixel_size == 1.5
    assert mics[1].ctf == {"rlnDefocusU": 20000.0, "rlnDefocusV": 19000.0, "rlnDefocusAngle": 6.0,
                           "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
    assert mics[1].path == tmp_path / "Micrographs" / "m2.mrc"


def test_bad_input_is_one_line(tmp_path):
    """Missing files, a truncated MRC, a 3-channel TIFF, two micrographs of one stem and a STAR
    without micrograph names are each a named one-line error."""
    with pytest.raises(InputError, match="micrograph .*nope.mrc does not exist"):
        read_micrograph(tmp_path / "nope.mrc")
    write_micrograph(tmp_path / "t.mrc", _image(), 1.0)
    data = (tmp_path / "t.mrc").read_bytes()
    (tmp_path / "t.mrc").write_bytes(data[:-100])
    with pytest.raises(InputError, match="t.mrc: file is .* bytes.*truncated"):
        read_micrograph(tmp_path / "t.mrc")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match=r"rgb.tif: image has shape \(10, 10, 3\)"):
        read_micrograph(tmp_path / "rgb.tif")
    (tmp_path / "d").mkdir()
    write_micrograph(tmp_path / "d" / "x.mrc", _image(), 1.0)
    tifffile.imwrite(tmp_path / "d" / "x.tif", _image())
    with pytest.raises(InputError, match="share the name 'x'"):
        read_micrographs(tmp_path / "d")
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@a.mrcs"]})}, tmp_path / "p.star")
    with pytest.raises(InputError, match="no table with a _rlnMicrographName column"):
        read_micrographs(tmp_path / "p.star")
    with pytest.raises(InputError, match="no such file or folder"):
        read_micrographs(str(tmp_path / "missing"))
