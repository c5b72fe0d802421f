"""Heterogeneous 3D simulation (sim/hetero.py): the state maps, the draws of states, angles and
pose noise, the images against projections of the true maps, the written files, RELION's reading
of them, and bad input."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.mrc import load_volume, open_stack
from ackmeans_torch.io.star import read_particles, write_particles
from ackmeans_torch.ops.ctf import ctf as make_ctf
from ackmeans_torch.ops.fourier import ifft2c
from ackmeans_torch.ops.projection import FourierProjector
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.dataset import CENTRE_LABEL_COLUMN
from ackmeans_torch.sim.hetero import HeteroSimulation, rotate_domain, simulate_hetero

FAST = dict(phantom_box=24, snr=None, ctf=False)


def _geodesic_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def test_states_differ_inside_the_domain_and_nowhere_else():
    """The turned state differs from the base only within the domain sphere and its turned copy,
    the absent state only within the domain sphere, and both differ there by a clear amount."""
    spec = HeteroSimulation(phantom_box=32)
    volume, _ = spec.base_map()
    maps = [spec.state_map(volume, k) for k in range(3)]
    mask, hinge, axis = spec.domain(32)
    turned_mask = rotate_domain(mask, torch.ones_like(mask), spec.state_angles[1], axis, hinge)
    assert torch.equal(maps[0], volume)
    outside = (mask == 0) & (turned_mask == 0)
    assert torch.equal(maps[1][outside], volume[outside])
    assert torch.equal(maps[2][mask == 0], volume[mask == 0])
    domain_energy = float(((volume * mask) ** 2).sum())
    for state in (1, 2):
        assert float(((maps[state] - volume) ** 2).sum()) > 0.2 * domain_energy


def test_rotating_the_domain_moves_its_centre_of_mass_as_the_rotation_says():
    """A domain turned by 90° about z through the hinge has its centre of mass where the
    rotation takes the original one (within 0.3 px), so angle sign and axis are as documented."""
    size = 32
    spec = HeteroSimulation(phantom_box=size, domain_centre=(0.25, 0.0, 0.0), hinge=(0.0, 0.0, 0.0))
    mask, hinge, axis = spec.domain(size)
    turned = rotate_domain(mask, torch.ones_like(mask), 90.0, axis, hinge)
    grid = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    centre = [float((turned * c).sum() / turned.sum()) for c in (x, y, z)]
    # counter-clockwise about +z: +x goes to +y
    assert np.allclose(centre, [0.0, 0.25 * size, 0.0], atol=0.3)


def test_state_counts_follow_the_fractions_in_random_order():
    """Each state gets n × fraction particles (rounded, summing to n), and they are shuffled."""
    spec = HeteroSimulation(n_particles=1001, populations=(0.7, 0.2, 0.1), **FAST)
    states = simulate_hetero(spec, seed=3).states
    counts = np.bincount(states, minlength=4)[1:]
    assert counts.sum() == 1001
    assert np.all(np.abs(counts - np.array([0.7, 0.2, 0.1]) * 1001) < 1)
    assert len(set(states[:50])) > 1


def test_pose_noise_has_the_stated_size():
    """The RMS angle between true and written rotations is angle_noise_deg and the origin error
    has s.d. shift_noise_px per axis (within 5% over 3,000 particles)."""
    spec = HeteroSimulation(n_particles=3000, angle_noise_deg=3.0, shift_noise_px=1.5,
                            max_shift_px=2.0, **FAST)
    data = simulate_hetero(spec, seed=1)
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    written = euler_to_matrix(torch.tensor(data.particles[angles].to_numpy()))
    true = euler_to_matrix(torch.tensor(data.truth[angles].to_numpy()))
    rms = float(_geodesic_deg(true, written).pow(2).mean().sqrt())
    assert rms == pytest.approx(3.0, rel=0.05)
    origins = ["rlnOriginXAngst", "rlnOriginYAngst"]
    error = (data.particles[origins].to_numpy() - data.truth[origins].to_numpy()) / data.voxel_size
    assert error.std(axis=0) == pytest.approx([1.5, 1.5], rel=0.05)
    assert np.abs(data.truth[origins].to_numpy()).max() > 1.0  # true shifts were drawn too


def test_images_are_ctf_projections_of_their_state_at_the_true_pose():
    """A noiseless image equals the CTF × projection of its state's map (at its true angle, in
    the continuous variant too) in the pose written minus the pose noise (truth.tsv), and not
    in the written pose."""
    for spread in (0.0, 10.0):
        spec = HeteroSimulation(n_particles=12, phantom_box=24, snr=None, angle_spread_deg=spread,
                                angle_noise_deg=3.0)
        data = simulate_hetero(spec, seed=5)
        volume, pixel = spec.base_map()
        for i in range(len(data.images)):
            state = int(data.states[i]) - 1
            angle = data.truth["angle_deg"][i]
            projector = FourierProjector(spec.state_map(volume, state, None if math.isnan(angle)
                                                        else float(angle)))
            row = data.particles.iloc[i]
            ctf = make_ctf(size=24, pixel_size=pixel, defocus_u=torch.tensor([row.rlnDefocusU]),
                           defocus_v=torch.tensor([row.rlnDefocusV]),
                           defocus_angle=torch.tensor([row.rlnDefocusAngle]), voltage=300.0,
                           spherical_aberration=2.7, amplitude_contrast=0.1)

            def image(table):
                pose = torch.tensor(table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]]
                                    .iloc[i].to_numpy(dtype=float))
                shift = -torch.tensor(table[["rlnOriginXAngst", "rlnOriginYAngst"]]
                                      .iloc[i].to_numpy(dtype=float)) / pixel
                return ifft2c(projector.spectra(euler_to_matrix(pose)[None].float(),
                                                shift[None]) * ctf).real[0]

            scale = float(data.images[i].norm())
            assert float((image(data.truth) - data.images[i]).norm()) < 1e-4 * scale
            assert float((image(data.particles) - data.images[i]).norm()) > 1e-2 * scale


def test_continuous_angles_are_uniform_on_bins_no_wider_than_asked():
    """The continuous variant images each particle at one of ceil(spread / bin) bin centres
    spread evenly across [angle − spread/2, angle + spread/2], each bin about equally often;
    discrete states record no angles."""
    spec = HeteroSimulation(n_particles=4000, populations=(1.0,), state_angles=(20.0,),
                            state_absent=(False,), angle_spread_deg=12.0, angle_bin_deg=1.5,
                            **FAST)
    data = simulate_hetero(spec, seed=2)
    values, counts = np.unique(data.angles, return_counts=True)
    assert np.allclose(values, 14.0 + 1.5 * (np.arange(8) + 0.5))
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500
    assert simulate_hetero(HeteroSimulation(n_particles=5, **FAST)).angles is None


def test_same_seed_same_set_and_files_round_trip(tmp_path):
    """The same seed gives identical images and tables; ``write`` gives a RELION-4 STAR whose
    poses, CTF, true state and image names read back, the stack, the state maps and truth.tsv."""
    spec = HeteroSimulation(n_particles=20, phantom_box=16)
    a, b = simulate_hetero(spec, seed=4), simulate_hetero(spec, seed=4)
    assert torch.equal(a.images, b.images) and a.particles.equals(b.particles)
    assert not torch.equal(a.images, simulate_hetero(spec, seed=5).images)
    star = a.write(tmp_path)
    table = read_particles(star)
    read = table.particles
    for column in ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                   "rlnDefocusU", "rlnDefocusAngle"]:
        assert np.allclose(read[column], a.particles[column], rtol=1e-6, atol=1e-6)
    assert (read[CENTRE_LABEL_COLUMN].to_numpy() == a.states).all()
    assert "rlnImagePixelSize" in table.optics and "rlnVoltage" in table.optics
    with open_stack(tmp_path / "particles.mrcs") as stack:
        assert np.allclose(stack[np.arange(20)], a.images.numpy())
    for k in range(3):
        state_map, voxel = load_volume(tmp_path / f"state_{k + 1:03d}.mrc")
        assert torch.allclose(state_map, a.state_maps[k]) and voxel == pytest.approx(4.0)
    truth = pd.read_csv(tmp_path / "truth.tsv", sep="\t")
    assert (truth["state"].to_numpy() == a.states).all()
    assert (truth["rlnImageName"] == read["rlnImageName"]).all()


@pytest.mark.parametrize("change, message", [
    (dict(populations=(0.5, 0.4, 0.2)), "must sum to 1"),
    (dict(populations=(0.5, 0.5)), "one entry per state"),
    (dict(domain_centre=(0.1, 0.2)), "three numbers"),
    (dict(axis=(0.0, 0.0, 0.0)), "non-zero direction"),
    (dict(angle_noise_deg=-1.0), "angle_noise_deg=-1.0 must be a number"),
    (dict(n_particles=0), "n_particles=0 must be an integer >= 1"),
    (dict(ctf=False, phase_flip=True), "phase_flip=true needs"),
])
def test_bad_settings_are_named_when_the_spec_is_made(change, message):
    """Each bad setting raises an InputError naming the parameter before anything runs."""
    with pytest.raises(InputError, match=message):
        HeteroSimulation(**change)


def test_cli_writes_the_set_state_maps_and_truth(tmp_path, capsys, monkeypatch):
    """``simulate experiment=hetero3d`` writes the stack, STAR, one map per state and truth.tsv;
    a bad population is one line on stderr, exit code 2."""
    from test_cli import assert_one_line, run_cli  # the CLI test helpers, one owner

    out = tmp_path / "run"
    code, _, err = run_cli(capsys, monkeypatch, "simulate", "experiment=hetero3d",
                           "sim.n_particles=30", "sim.phantom_box=16", f"out_dir={out}")
    assert code == 0, err
    for name in ("particles.mrcs", "particles.star", "state_001.mrc", "state_003.mrc",
                 "truth.tsv"):
        assert (out / name).is_file(), name
    assert len(read_particles(out / "particles.star")) == 30
    code, _, err = run_cli(capsys, monkeypatch, "simulate", "experiment=hetero3d",
                           "sim.populations=[0.5,0.6,0.2]", f"out_dir={tmp_path / 'bad'}")
    assert_one_line(code, err, "populations")


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_reconstruct") is None,
                    reason="relion_reconstruct is not installed (apt-get install relion)")
def test_relion_reconstruct_of_one_state_matches_that_state(tmp_path):
    """relion_reconstruct --ctf of each state's particles (noiseless, no pose noise) correlates
    with that state's map better than with the other states' maps: states and poses mean to
    RELION what they mean here."""
    spec = HeteroSimulation(n_particles=2400, phantom_box=32, snr=None, angle_noise_deg=0.0,
                            shift_noise_px=0.0, max_shift_px=2.0)
    data = simulate_hetero(spec, seed=11)
    data.write(tmp_path)
    particles = read_particles(tmp_path / "particles.star").particles
    maps = data.state_maps.double()
    for state in (1, 2, 3):
        write_particles(tmp_path / f"s{state}.star",
                        particles[particles[CENTRE_LABEL_COLUMN] == state])
        done = subprocess.run(["relion_reconstruct", "--i", f"s{state}.star", "--o",
                               f"s{state}.mrc", "--ctf"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        ours, _ = load_volume(tmp_path / f"s{state}.mrc")
        ours = ours.double() - ours.double().mean()
        corr = [float(torch.nn.functional.cosine_similarity(
            ours.flatten(), (m - m.mean()).flatten(), dim=0)) for m in maps]
        assert corr[state - 1] > 0.998
        assert corr[state - 1] == max(corr), corr


def test_simulated_source_from_a_hetero_spec_labels_the_states():
    """``SimulatedSource.from_spec`` takes a heterogeneous spec (``classify sim=hetero``): the
    same images as ``simulate_hetero`` with the true states as its labels."""
    from ackmeans_torch.data.simulated import SimulatedSource

    spec = HeteroSimulation(n_particles=15, **FAST)
    source = SimulatedSource.from_spec(spec, seed=2)
    data = simulate_hetero(spec, seed=2)
    assert torch.equal(source.images(np.arange(15)), data.images)
    assert (source.centre_labels == data.states).all()
