"""RELION's own extraction reads the consensus command's RELION layout with no hand edits: a
synthetic RELION 3.1 project, ``ackmeans-torch consensus``, then ``relion_preprocess --extract``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from ackmeans_torch.io.coords import PickSet, write_box

pytestmark = [
    pytest.mark.relion,
    pytest.mark.skipif(shutil.which("relion_preprocess") is None,
                       reason="relion_preprocess is not on PATH (RELION is not installed)"),
]

SIDE, PIXEL, BOX = 512, 1.5, 64
#: micrograph name (one behind a pipeline job folder, one not) -> particle centres (x, y) in px.
PARTICLES = {
    "MotionCorr/job002/Movies/mic_a.mrc": [(100, 150), (300, 200), (400, 420), (60, 470)],
    "Micrographs/mic_b.mrc": [(256, 256), (128, 384)],
}
#: one picker's false pick on every micrograph, which a 3-of-3 consensus drops.
DECOY = (450, 80)
#: each picker's offset from the true centres; their coordinate-wise median is the true centre.
OFFSETS = {"p": (0, 0), "q": (2, -2), "r": (-2, 2)}


def _micrograph(path: Path, centres: list[tuple[int, int]]) -> None:
    """Gaussian blobs at ``centres`` (x = column, y = row of the MRC array, RELION's frame) over
    weak noise, so the brightest pixel of a correctly extracted particle is its box centre."""
    y, x = np.mgrid[:SIDE, :SIDE]
    image = np.random.default_rng(0).normal(0, 0.01, (SIDE, SIDE))
    for cx, cy in centres:
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 5.0 ** 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path) as mrc:
        mrc.set_data(image.astype(np.float32))
        mrc.voxel_size = PIXEL


def _project(root: Path) -> None:
    """Micrographs, a RELION 3.1 micrographs STAR (optics block) and three pickers' BOX files."""
    for name, centres in PARTICLES.items():
        _micrograph(root / name, centres)
        stem = Path(name).stem
        for picker, (dx, dy) in OFFSETS.items():
            xy = np.asarray(centres, dtype=float) + (dx, dy)
            if picker == "p":
                xy = np.vstack([xy, DECOY])
            write_box(root / picker / f"{stem}.box", PickSet(xy, np.full(len(xy), float(BOX)), np.full(len(xy), 0.8)))
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [PIXEL], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    mics = pd.DataFrame({"rlnMicrographName": list(PARTICLES), "rlnOpticsGroup": 1})
    starfile.write({"optics": optics, "micrographs": mics}, root / "micrographs.star")


def test_relion_preprocess_extracts_the_consensus_particles(tmp_path: Path) -> None:
    """The 3.1.3 command line of the README extracts exactly the 6 consensus particles (not the
    decoys) of both micrographs at their true centres, the blob in the middle of each extracted
    box; RELION finds every coordinate file (no 'does not exist' warning). The RELION 4 index names
    the same micrographs and existing coordinate files."""
    _project(tmp_path)
    r = subprocess.run([sys.executable, "-m", "ackmeans_torch.cli.main", "consensus", "pickers=[p,q,r]",
                        f"box_size={BOX}", "relion_micrographs=micrographs.star", "out_dir=Consensus"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    command = ["relion_preprocess", "--i", "micrographs.star", "--coord_dir", "Consensus/", "--coord_suffix",
               "_autopick.star", "--part_dir", "Extract/", "--part_star", "Extract/particles.star", "--extract",
               "--extract_size", str(BOX)]
    r = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "does not exist" not in r.stdout + r.stderr
    assert "Written out STAR file with 6 particles in Extract/particles.star" in r.stdout

    particles = starfile.read(tmp_path / "Extract" / "particles.star", always_dict=True)["particles"]
    assert len(particles) == sum(map(len, PARTICLES.values()))
    for name, centres in PARTICLES.items():
        got = particles[particles.rlnMicrographName == name]
        xy = got[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        np.testing.assert_allclose(xy[np.lexsort(xy.T[::-1])], sorted(centres), atol=1e-4)
    for image in particles.rlnImageName:
        index, stack = image.split("@")
        with mrcfile.open(tmp_path / stack, permissive=True) as mrc:
            particle = mrc.data[int(index) - 1]
        row, col = np.unravel_index(np.argmax(particle), particle.shape)
        assert abs(row - BOX // 2) <= 1 and abs(col - BOX // 2) <= 1, image

    index = starfile.read(tmp_path / "Consensus" / "autopick.star", always_dict=True)["coordinate_files"]
    assert sorted(index.rlnMicrographName) == sorted(PARTICLES)
    assert all((tmp_path / f).is_file() for f in index.rlnMicrographCoordinates)
    assert (tmp_path / "Consensus" / "coords_suffix_autopick.star").read_text() == "micrographs.star\n"
