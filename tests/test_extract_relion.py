"""Our extraction against RELION's own: ``relion_preprocess --extract`` on simulated micrographs
with the same coordinates (fractional ones and boxes crossing the edge among them) gives the same
particles. This settles the coordinate convention of ``micrographs/extract.py``."""

from __future__ import annotations

import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

from ackmeans_torch.io.coords import PickSet, write_relion_autopick
from ackmeans_torch.io.star import read_particles
from ackmeans_torch.micrographs.extract import ExtractOptions, extract_particles
from ackmeans_torch.micrographs.io import read_micrographs
from ackmeans_torch.micrographs.simulate import MicrographSimulation, simulate_micrographs, write_simulated

pytestmark = [
    pytest.mark.relion,
    pytest.mark.skipif(shutil.which("relion_preprocess") is None,
                       reason="relion_preprocess is not on PATH (RELION is not installed)"),
]

BOX = 48


def _project(root, seed=0):
    """Two simulated micrographs, each with its true centres moved by random fractions of a pixel
    plus three centres whose boxes cross the edge, as RELION autopick files."""
    sim = simulate_micrographs(MicrographSimulation(n_micrographs=2, size=320, box_size=BOX,
                                                    particles_per_micrograph=15), seed=seed)
    write_simulated(sim, root)
    rng = np.random.default_rng(seed)
    picks = {}
    for name, truth in sim.truth.items():
        xy = np.vstack([truth.centres + rng.uniform(-0.99, 0.99, truth.centres.shape),
                        [[5.0, 100.0], [300.5, 310.7], [160.0, 2.2]]])
        picks[name] = PickSet(xy, np.full(len(xy), float(BOX)), rng.uniform(0, 1, len(xy)))
        write_relion_autopick(root / "Coords" / "Micrographs" / f"{name}_autopick.star", picks[name])
    return picks


def test_relion_preprocess_extracts_the_same_particles(tmp_path, monkeypatch):
    """Same coordinates → the same number of particles (RELION keeps edge boxes: ours with
    edge=pad), in the same order at the same coordinates, and each particle equal to RELION's
    (correlation ≥ 0.99; in fact to float precision) without normalisation."""
    monkeypatch.chdir(tmp_path)
    picks = _project(tmp_path)
    command = ["relion_preprocess", "--i", "micrographs_ctf.star", "--coord_dir", "Coords/", "--coord_suffix",
               "_autopick.star", "--part_dir", "Extract/", "--part_star", "Extract/particles.star", "--extract",
               "--extract_size", str(BOX)]
    r = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    theirs = read_particles(tmp_path / "Extract" / "particles.star").particles
    stack, ours = extract_particles(read_micrographs("micrographs_ctf.star"), picks,
                                    ExtractOptions(box_size=BOX, normalise=False, edge="pad"))
    assert len(stack) == len(theirs) == sum(len(p) for p in picks.values())
    assert np.allclose(ours[["rlnCoordinateX", "rlnCoordinateY"]], theirs[["rlnCoordinateX", "rlnCoordinateY"]])
    assert ours["rlnMicrographName"].tolist() == theirs["rlnMicrographName"].tolist()
    relion = np.concatenate([mrcfile.read(f"Extract/Micrographs/{n}.mrcs") for n in sorted(picks)])
    ref = relion.reshape(len(relion), -1) - relion.mean((1, 2))[:, None]
    mine = stack.numpy().reshape(len(stack), -1) - stack.numpy().mean((1, 2))[:, None]
    corr = (ref * mine).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(mine, axis=1)
    assert corr.min() >= 0.99
    assert np.abs(relion - stack.numpy()).max() <= 1e-5 * np.abs(relion).max()


def test_relion_normalisation_and_inversion_are_ours(tmp_path, monkeypatch):
    """RELION's --invert_contrast --norm --bg_radius (with its default ramp removal) equals our
    invert_contrast + normalise with the same background radius, particle by particle."""
    monkeypatch.chdir(tmp_path)
    picks = _project(tmp_path, seed=1)
    command = ["relion_preprocess", "--i", "micrographs_ctf.star", "--coord_dir", "Coords/", "--coord_suffix",
               "_autopick.star", "--part_dir", "Extract/", "--part_star", "Extract/particles.star", "--extract",
               "--extract_size", str(BOX), "--invert_contrast", "--norm", "--bg_radius", "18"]
    r = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    stack, _ = extract_particles(read_micrographs("micrographs_ctf.star"), picks,
                                 ExtractOptions(box_size=BOX, invert_contrast=True, background_radius=18, edge="pad"))
    relion = np.concatenate([mrcfile.read(f"Extract/Micrographs/{n}.mrcs") for n in sorted(picks)])
    assert len(relion) == len(stack)
    assert np.abs(relion - stack.numpy()).max() <= 1e-4
