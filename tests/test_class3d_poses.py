"""Pose errors and components of variability (class3d/poses.py, class3d/variability.py): the
pose derivatives predict a small turn and shift of a projection, the local refinement recovers
most of a simulated pose error and writes poses SliceMatch reads back, the components of
variability point along the true state difference and their coordinates separate the states,
the pose terms keep pose errors out of the coordinates, the start's grouping keeps unequal
states whole, and a classification with refined poses writes them without touching the input
table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import starfile
import torch

from ackmeans_torch.class3d import Class3DOptions, run_class3d
from ackmeans_torch.class3d.model import SliceMatch, low_pass_gains
from ackmeans_torch.class3d.poses import (
    POSE_STEP, gradient_projector, pose_derivatives, refine_poses, rotation_angle, rotation_steps, with_poses,
)
from ackmeans_torch.class3d.run import _groups, _mixture_groups
from ackmeans_torch.class3d.variability import high_pass_gains, variability
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import NoPenalty
from ackmeans_torch.data.prepared import PreprocessOptions, preprocess
from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.eval.metrics import matched_accuracy
from ackmeans_torch.ops.fourier import (
    fft2c, filter_shells, phase_shift, shift_values,
)
from ackmeans_torch.ops.projection import BackProjector, FourierProjector, relion_origin_to_shift
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom

BOX = 32


def _same(index: torch.Tensor) -> torch.Tensor:
    return index


def _provider(data, **kwargs) -> SliceMatch:
    source = ArraySource(data.images, data.particles, pixel_size=data.voxel_size)
    prepared = preprocess(source, PreprocessOptions(phase_flip=False))
    return SliceMatch(prepared, mask_radius=prepared.mask_radius, **kwargs)


def _true_poses(data) -> tuple[torch.Tensor, torch.Tensor]:
    truth = data.truth
    rotations = euler_to_matrix(torch.tensor(
        truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())).float()
    origins = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / data.voxel_size
    return rotations, relion_origin_to_shift(torch.tensor(origins, dtype=torch.float32))


@pytest.fixture(scope="module")
def misaligned():
    """400 particles of one state, SNR 1, CTF, written poses 3° / 1 px off the true ones."""
    spec = HeteroSimulation(phantom_box=BOX, n_particles=400, populations=(1.0,),
                            state_angles=(0.0,), state_absent=(False,), snr=1.0,
                            angle_noise_deg=3.0, shift_noise_px=1.0)
    return simulate_hetero(spec, seed=3)


@pytest.fixture(scope="module")
def two_states():
    """600 particles, domain present (60 %) or absent, SNR 1, 0.5° / 0.25 px pose noise."""
    spec = HeteroSimulation(phantom_box=BOX, n_particles=600, populations=(0.6, 0.4),
                            state_angles=(0.0, 0.0), state_absent=(False, True),
                            domain_radius=0.16, snr=1.0, angle_noise_deg=0.5,
                            shift_noise_px=0.25)
    return simulate_hetero(spec, seed=1)


def test_shift_values_is_phase_shift_at_the_kept_pixels():
    """The band-pixel phase shift equals the full-spectrum one at those pixels."""
    back = BackProjector(BOX, max_radius=12)
    spectra = fft2c(torch.randn(3, BOX, BOX))
    shifts = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.0]])
    expected = phase_shift(spectra, shifts).flatten(1)[:, back.pixels]
    got = shift_values(spectra.flatten(1)[:, back.pixels], back.k2d, shifts, BOX)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pose_derivatives_predict_a_small_turn_and_shift():
    """The derivatives predict the change of the projection for a 1° turn about each image axis
    (central, as a finer 4×-padded projector interpolates it: ≤ 10 %; measured 5–7 %, and
    15–20 % against the 2×-padded one, whose trilinear interpolation is what differs) and for a
    0.2 px shift (≤ 10 %); the gradient projector's first channel is the map's projection."""
    volume = phantom(BOX)
    fine = FourierProjector(volume, padding=4)
    back = BackProjector(BOX, max_radius=10)
    rotations = random_rotations(5, generator=torch.Generator().manual_seed(0)).float()
    ctf = torch.ones(5, len(back.pixels))
    basis = pose_derivatives(gradient_projector(volume, padding=4), rotations, back.k2d, ctf)
    slices, derivatives = basis[0], basis[1:]
    torch.testing.assert_close(slices, fine.sample(rotations, back.k2d)[0])
    angle = math.radians(1.0)
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = angle
        change = (fine.sample(rotation_steps(step) @ rotations, back.k2d)[0]
                  - fine.sample(rotation_steps(-step) @ rotations, back.k2d)[0]) / 2
        predicted = derivatives[axis] * (angle / POSE_STEP)
        assert float((change - predicted).norm() / change.norm()) < 0.1
    for axis in range(2):
        shift = torch.zeros(5, 2)
        shift[:, axis] = 0.2
        change = shift_values(slices, back.k2d, shift, BOX) - slices
        predicted = derivatives[3 + axis] * (-2 * math.pi * 0.2 / BOX)
        assert float((change - predicted).norm() / change.norm()) < 0.1


def _error_modulo_frame(rotations: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-particle rotation error after the best common rotation of the map's frame: a map
    reconstructed from the particles is itself placed only up to a small global rotation."""
    offsets = truth.transpose(1, 2) @ rotations
    u, _, vh = torch.linalg.svd(offsets.double().mean(0))
    return rotation_angle(offsets, (u @ vh).float().expand_as(offsets))


def test_refinement_recovers_most_of_the_pose_error():
    """At SNR 100, two rounds against the consensus map at least halve the median rotation
    (up to the map's frame) and shift errors of 3° / 1 px, and the refined poses, written as
    RELION columns, are what SliceMatch reads back from the table. (At SNR 1 on this 32 px
    phantom only the shifts improve this much: 1.17 → 0.11 px, 2.66° → 2.07°.)"""
    spec = HeteroSimulation(phantom_box=BOX, n_particles=400, populations=(1.0,),
                            state_angles=(0.0,), state_absent=(False,), snr=100.0,
                            angle_noise_deg=3.0, shift_noise_px=1.0)
    data = simulate_hetero(spec, seed=3)
    provider = _provider(data, resolution=8.0)
    true_rotations, true_shifts = _true_poses(data)
    before_r = _error_modulo_frame(provider.rotations, true_rotations).median()
    before_t = (provider.shifts - true_shifts).norm(dim=1).median()
    rotations, shifts = refine_poses(provider, rounds=2, chunk_size=256, shard=_same,
                                     reduce=_same)
    after_r = _error_modulo_frame(rotations, true_rotations).median()
    after_t = (shifts - true_shifts).norm(dim=1).median()
    assert after_r < 0.5 * before_r, (float(before_r), float(after_r))
    assert after_t < 0.5 * before_t, (float(before_t), float(after_t))
    table = with_poses(data.particles, rotations, shifts)
    again = SliceMatch(ArraySource(data.images, table, pixel_size=data.voxel_size))
    torch.testing.assert_close(again.rotations, rotations, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.shifts, shifts, atol=1e-4, rtol=0)


def _band_difference(data, provider: SliceMatch) -> torch.Tensor:
    """The true state difference in the components' band (30 Å down to the second shell),
    under the reference mask."""
    maps = data.state_maps
    gains = low_pass_gains(BOX, BOX * data.voxel_size / 30.0) * high_pass_gains(BOX)
    return filter_shells(maps[0] - maps[1], gains) * provider.reference_mask


def test_components_point_along_the_state_difference_and_separate_the_states(two_states):
    """At the start's default band (30 Å) one component of variability is the domain's
    difference (|cosine| ≥ 0.9 with the true difference in the components' band, under the
    mask) and the
    sign of its coordinate gives the state for ≥ 85 % of the particles (measured 0.95 and 0.92;
    the classification loop then takes it to ≥ 0.95). At 16 Å the pose terms take a part of
    this large domain's difference (cosine 0.30; 0.76 without them): why the band is 30 Å."""
    provider = _provider(two_states, resolution=16.0)
    found = variability(provider, 1, iterations=8, resolution=30.0,
                        generator=torch.Generator().manual_seed(0), chunk_size=256,
                        shard=_same, reduce=_same)
    difference = _band_difference(two_states, provider)
    component = found.components[0]
    cosine = float((difference * component).sum() / (difference.norm() * component.norm()))
    assert abs(cosine) >= 0.9, cosine
    labels = (found.coordinates[:, 0] > 0).long().numpy()
    assert matched_accuracy(labels, two_states.truth["state"].to_numpy()) >= 0.85
    assert found.change[-1] < found.change[0]


def test_start_groups_keep_unequal_states_whole():
    """The start's grouping of coordinates: three Gaussian groups of 7,000 / 2,000 / 1,000
    points, the large one broad. K-means' equal Voronoi cells cut the large group (measured
    0.75 correct); the mixture's weights and covariances keep it whole (0.95), with group sizes
    near the true ones."""
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([7000, 2000, 1000])
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    spread = torch.tensor([1.5, 0.7, 0.7])
    x = torch.cat([centres[k] + spread[k] * torch.randn(int(sizes[k]), 2, generator=generator)
                   for k in range(3)])
    truth = torch.repeat_interleave(torch.arange(3), sizes).numpy()
    plain = matched_accuracy(_groups(x, 3, seed=0).numpy(), truth)
    mixture = _mixture_groups(x, 3, seed=0).numpy()
    assert plain < 0.85
    assert matched_accuracy(mixture, truth) > 0.93
    assert np.abs(np.sort(np.bincount(mixture)) - np.sort(sizes.numpy())).max() < 300


def test_components_come_in_order_of_spread(two_states):
    """Two components fitted to two states: the latent space is turned to the components'
    principal axes, so the first is the one of larger spread and it is the domain's difference
    (|cosine| ≥ 0.9; the second is noise), the coordinates turned with them (the sign of the
    first still gives the state for ≥ 85 %)."""
    provider = _provider(two_states, resolution=16.0)
    found = variability(provider, 2, iterations=8, resolution=30.0,
                        generator=torch.Generator().manual_seed(0), chunk_size=256,
                        shard=_same, reduce=_same)
    flat = (found.components * provider.reference_mask).flatten(1).double()
    gram = flat @ flat.T
    assert float(gram[0, 0]) > float(gram[1, 1])
    assert abs(float(gram[0, 1])) < 1e-6 * float(gram[0, 0])
    difference = _band_difference(two_states, provider).flatten()
    cosine = float(flat[0] @ difference.double() / (flat[0].norm() * difference.norm()))
    assert abs(cosine) >= 0.9, cosine
    labels = (found.coordinates[:, 0] > 0).long().numpy()
    assert matched_accuracy(labels, two_states.truth["state"].to_numpy()) >= 0.85


def test_pose_terms_keep_pose_errors_out_of_the_coordinates(misaligned):
    """On one state with 3° / 1 px pose errors the coordinates spread less with the pose terms
    fitted than without them: the pose errors would otherwise be the largest variation."""
    provider = _provider(misaligned, resolution=16.0)
    spread = {}
    for terms in (True, False):
        found = variability(provider, 1, iterations=5, resolution=30.0,
                            generator=torch.Generator().manual_seed(0), chunk_size=256,
                            shard=_same, reduce=_same, pose_terms=terms)
        spread[terms] = float(found.coordinates.std())
    assert spread[True] < 0.8 * spread[False], spread


def test_classification_with_refined_poses_writes_them_and_keeps_the_input(two_states, tmp_path):
    """refine_poses=1: the states are still separated, run_data.star carries poses that differ
    from the input's, and the caller's table is unchanged."""
    source = ArraySource(two_states.images, two_states.particles,
                         pixel_size=two_states.voxel_size)
    before = source.particles.copy()
    run = run_class3d(source, rule=NoPenalty(),
                      options=ClusterOptions(n_classes=2, max_iter=4, sigma0=0.01, plateau=0),
                      class3d=Class3DOptions(resolution=16.0, refine_poses=1), out_dir=tmp_path)
    assert run.summary["accuracy"] >= 0.95
    assert source.particles.equals(before)
    written = starfile.read(tmp_path / "run_data.star", always_dict=True)["particles"]
    moved = np.abs(written["rlnAngleRot"].to_numpy() - before["rlnAngleRot"].to_numpy())
    assert float(np.median(np.minimum(moved, 360 - moved))) > 0.01


def test_variability_depends_on_neither_chunks_nor_processes(two_states, thread_ranks):
    """The components' first round takes its noise power from every particle (summed over the
    chunks and the processes), so the start is the same with chunks of 64 or 600 particles,
    and on two ranks (every other particle of each chunk) as on one: coordinates equal to
    float32 rounding (10⁻⁵ of the largest). With each chunk's own noise in that round, chunks
    of 64 and 600 differed here by 10⁻³ of the largest coordinate."""
    def coordinates(chunk_size, shard=_same, reduce=_same):
        return variability(_provider(two_states, resolution=16.0), 2, iterations=3,
                           resolution=30.0, generator=torch.Generator().manual_seed(0),
                           chunk_size=chunk_size, shard=shard, reduce=reduce).coordinates

    whole = coordinates(600)
    scale = float(whole.abs().max())
    torch.testing.assert_close(coordinates(64), whole, rtol=0, atol=1e-5 * scale)
    for ranked in thread_ranks(2, lambda rank, reduce: coordinates(
            64, lambda index: index[rank::2], reduce)):
        torch.testing.assert_close(ranked, whole, rtol=0, atol=1e-5 * scale)
