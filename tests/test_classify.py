"""2D classification: the RELION pose convention of the outputs, preprocessing, recovery of the
views of a simulated set by MRA and RFA, and the files a run writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from conftest import classify_tensor

from ackmeans_torch.classify.common import recentre
from ackmeans_torch.classify.mra import MRA
from ackmeans_torch.classify.outputs import pose_to_relion, write_outputs
from ackmeans_torch.classify.rfa import RFA
from ackmeans_torch.cluster.penalties import NoPenalty, QuadraticPenalty
from ackmeans_torch.data.prepared import (
    PreparedSource,
    PreprocessOptions,
    needs_phase_flip,
    normalise_background,
)
from ackmeans_torch.eval.metrics import adjusted_rand_index
from ackmeans_torch.io.mrc import open_stack
from ackmeans_torch.ops.align import AlignOptions, align
from ackmeans_torch.ops.fourier import shift_images
from ackmeans_torch.ops.polar import circular_mask
from ackmeans_torch.ops.projection import project
from ackmeans_torch.ops.rotations import euler_to_matrix
from ackmeans_torch.sim.volume import phantom

ALIGN = AlignOptions(n_angles=72, max_shift=2.0, shift_step=1.0)


@pytest.fixture(scope="module")
def views():
    """3 well-separated views of the phantom, 12 noisy images each at random in-plane angles."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.0, 0.0], [90.0, 90.0], [0.0, 90.0]])
    rot_tilt = base.repeat_interleave(12, 0)
    psi = torch.rand(36, generator=g) * 360
    euler = torch.cat([rot_tilt, psi[:, None]], 1).double()
    clean = project(phantom(32), euler_to_matrix(euler).float())
    noisy = clean + 0.5 * clean.std() * torch.randn(clean.shape, generator=g)
    truth = np.repeat(np.arange(3), 12)
    return noisy, truth, euler


def test_relion_psi_and_origin_convention_matches_the_projector():
    """A projection at psi=40° is the psi=0 projection turned by the aligner's a; pose_to_relion
    must give back psi=40 (and the origin of a known content shift with RELION's sign)."""
    vol = phantom(48)
    euler = torch.tensor([[30.0, 50.0, 0.0], [30.0, 50.0, 40.0]], dtype=torch.float64)
    p = project(vol, euler_to_matrix(euler).float())
    shifted = shift_images(p[1:2], torch.tensor([[2.0, -1.0]]))
    res = align(shifted, p[0:1], n_angles=360, max_shift=3, shift_step=1)
    rel = pose_to_relion(res.angle[:, 0], res.shift[:, 0], pixel_size=2.0)
    assert rel["rlnAnglePsi"][0] == pytest.approx(40.0, abs=0.5)
    # content moved by (+2, -1) px -> RELION origin is minus that, in Å
    assert rel["rlnOriginXAngst"][0] == pytest.approx(-4.0, abs=1.0)
    assert rel["rlnOriginYAngst"][0] == pytest.approx(2.0, abs=1.0)


def test_background_normalisation_gives_zero_mean_unit_std_outside_the_mask():
    images = 3.0 + 2.0 * torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1))
    out = normalise_background(images, 12.0)
    outside = circular_mask(32, 12.0, soft_edge=0) == 0
    assert out[:, outside].mean(1).abs().max() < 1e-5
    assert (out[:, outside].std(1) - 1).abs().max() < 1e-5


def test_phase_flip_needed_only_with_ctf_and_not_yet_flipped():
    ctf = {"rlnDefocusU": [1e4], "rlnDefocusV": [1e4], "rlnDefocusAngle": [0.0],
           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}
    assert needs_phase_flip(pd.DataFrame(ctf))
    assert not needs_phase_flip(pd.DataFrame({**ctf, "rlnCtfDataArePhaseFlipped": [1]}))
    assert not needs_phase_flip(pd.DataFrame({"rlnDefocusU": [1e4]}))


def test_recentre_moves_the_centre_of_mass_to_the_box_centre():
    img = torch.zeros(1, 33, 33)
    img[0, 10:14, 20:24] = 1.0
    out = recentre(img, torch.ones(33, 33))
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    w = out[0].clamp_min(0)
    assert float((w * xs).sum() / w.sum()) == pytest.approx(16, abs=0.3)
    assert float((w * ys).sum() / w.sum()) == pytest.approx(16, abs=0.3)


@pytest.mark.parametrize("pipeline", [MRA(), RFA()])
def test_pipelines_recover_three_views_despite_random_in_plane_angles(views, pipeline):
    """Rotation-invariant classification: the 3 views come back as the 3 classes (ARI ≥ 0.9)."""
    images, truth, _ = views
    result = classify_tensor(pipeline, images, n_classes=3, rule=QuadraticPenalty(beta=0.5),
                             mask_radius=14, align=ALIGN, init="k-means++", max_iter=8,
                             sigma0=0.0, seed=0)
    assert adjusted_rand_index(truth, result.labels.numpy()) >= 0.9
    assert result.averages.shape == (3, 32, 32) and int(result.sizes.sum()) == 36


def test_mra_poses_bring_each_image_onto_its_class_average(views):
    """The reported pose of each image is the one its class average was built with: the average
    moved by that pose matches the image better than unmoved."""
    images, _, _ = views
    result = classify_tensor(MRA(), images, n_classes=3, rule=NoPenalty(), mask_radius=14,
                             align=ALIGN, init="k-means++", max_iter=5, seed=0)
    from ackmeans_torch.ops.transform import apply_transform

    avg = result.averages[result.labels]
    poses = result.poses
    moved = apply_transform(avg, poses.angle, poses.shift, poses.mirror)
    mask = circular_mask(32, 14)
    err_moved = ((images - moved) * mask).pow(2).sum((1, 2))
    err_still = ((images - avg) * mask).pow(2).sum((1, 2))
    assert (err_moved < err_still).float().mean() >= 0.9


def test_outputs_are_relion_readable_and_keep_input_columns(tmp_path, views):
    images, _, euler = views
    result = classify_tensor(MRA(), images, n_classes=3, rule=NoPenalty(), mask_radius=14,
                             align=ALIGN, init="k-means++", max_iter=3, seed=0)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@x.mrcs" for i in range(36)],
                              "rlnImagePixelSize": 3.0, "rlnAngleTilt": euler[:, 1].numpy(),
                              "rlnMicrographName": "mic.mrc"})
    paths = write_outputs(tmp_path, result, particles, pixel_size=3.0)
    star = starfile.read(paths["particles.star"])
    parts = star["particles"]
    assert {"rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
            "rlnMicrographName", "rlnAngleTilt"} <= set(parts.columns)
    assert parts["rlnClassNumber"].between(1, 3).all()
    assert (parts["rlnClassNumber"].to_numpy() == result.labels.numpy() + 1).all()
    classes = starfile.read(paths["classes.star"])
    assert classes["rlnClassSize"].sum() == 36
    with open_stack(paths["class_averages.mrcs"]) as stack:
        assert len(stack) == 3 and stack.pixel_size == pytest.approx(3.0)
    assert paths["class_gallery.png"].stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.fixture(scope="module")
def three_classes(views):
    images, _, _ = views
    return classify_tensor(MRA(), images, n_classes=3, rule=NoPenalty(), mask_radius=14,
                           align=ALIGN, init="k-means++", max_iter=3, seed=0)


def test_outputs_keep_the_input_rot_and_tilt_and_overwrite_psi_and_origins(tmp_path, views,
                                                                          three_classes):
    """As RELION 3.1.3's Class2D _data.star (measured): the input's rlnAngleRot/rlnAngleTilt stay
    as they were, rlnAnglePsi and the origins are the 2D alignment's, the input's columns keep
    their order with the new ones after them; no rot/tilt is made up when the input has none."""
    _, _, euler = views
    result = three_classes
    n = len(euler)
    particles = pd.DataFrame({
        "rlnAngleRot": euler[:, 0].numpy() + 0.125, "rlnAngleTilt": euler[:, 1].numpy() + 0.25,
        "rlnAnglePsi": np.full(n, 33.0), "rlnOriginXAngst": np.full(n, 7.5),
        "rlnOriginYAngst": np.full(n, -4.5),
        "rlnImageName": [f"{i + 1:06d}@x.mrcs" for i in range(n)], "rlnImagePixelSize": 3.0})
    paths = write_outputs(tmp_path, result, particles, pixel_size=3.0)
    pose = pose_to_relion(result.poses.angle, result.poses.shift, 3.0)
    for name in ("particles.star", "run_data.star"):
        parts = starfile.read(paths[name])["particles"]
        np.testing.assert_allclose(parts["rlnAngleRot"], particles["rlnAngleRot"], atol=1e-5)
        np.testing.assert_allclose(parts["rlnAngleTilt"], particles["rlnAngleTilt"], atol=1e-5)
        for column, values in pose.items():
            np.testing.assert_allclose(parts[column], values, atol=1e-4)
        columns = list(parts.columns)
        assert columns[:5] == list(particles.columns[:5])
        assert columns.index("rlnClassNumber") > columns.index("rlnImageName")
    bare = particles.drop(columns=["rlnAngleRot", "rlnAngleTilt"])
    paths = write_outputs(tmp_path / "bare", result, bare, pixel_size=3.0)
    for name in ("particles.star", "run_data.star"):
        parts = starfile.read(paths[name])["particles"]
        assert not {"rlnAngleRot", "rlnAngleTilt"} & set(parts.columns)


def test_outputs_keep_labels_relion_does_not_know(tmp_path, three_classes):
    """A label of another package in the input STAR (read through io/star.py) reaches
    particles.star and run_data.star with its values, as RELION's own programs keep it."""
    from ackmeans_torch.io.star import read_particles

    n = len(three_classes.labels)
    rows = "\n".join(f"{i + 1:06d}@x.mrcs 1 {1.5 + i / 8:.3f} tag{i % 2}" for i in range(n))
    (tmp_path / "in.star").write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n"
        "_rlnImageSize\n_rlnImageDimensionality\n1 opticsGroup1 3.0 32 2\n\n"
        "data_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_aspireAmplitude\n"
        f"_aspireTag\n{rows}\n")
    particles = read_particles(tmp_path / "in.star").particles
    paths = write_outputs(tmp_path / "run", three_classes, particles, pixel_size=3.0)
    for name in ("particles.star", "run_data.star"):
        text = paths[name].read_text()
        assert "_aspireAmplitude" in text and "_aspireTag" in text
        parts = starfile.read(paths[name])["particles"]
        np.testing.assert_allclose(parts["aspireAmplitude"], 1.5 + np.arange(n) / 8)
        assert parts["aspireTag"].tolist() == [f"tag{i % 2}" for i in range(n)]


def _stack_source(tmp_path, images):
    from ackmeans_torch.data.stack import StackSource
    from ackmeans_torch.io.mrc import write_stack

    write_stack(tmp_path / "views.mrcs", images, 3.0)
    return StackSource.from_stack(tmp_path / "views.mrcs")


def test_mra_reading_a_stack_per_chunk_equals_the_in_memory_run(tmp_path, views):
    """Larger-than-memory path: MRA over a PreparedSource (memory-mapped stack read and
    preprocessed per engine chunk of 8) gives the labels, poses and averages of the run on the
    materialised source (to 1e-5: only the preprocessing batch differs)."""
    prepared = PreparedSource(_stack_source(tmp_path, views[0]), PreprocessOptions())
    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), mask_radius=prepared.mask_radius,
                   align=ALIGN, init="k-means++", max_iter=4, sigma0=0.0, chunk_size=8,
                   batch_size=4, seed=0)
    lazy = classify_tensor(MRA(), prepared, **options)
    whole = classify_tensor(MRA(), prepared.materialise(), **options)
    assert torch.equal(lazy.labels, whole.labels)
    assert torch.equal(lazy.poses.mirror, whole.poses.mirror)
    for name in ("angle", "shift", "distance"):
        torch.testing.assert_close(getattr(lazy.poses, name), getattr(whole.poses, name),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lazy.averages, whole.averages, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_chunked_mra_on_cuda_equals_cpu(tmp_path, views):
    """The same code path on CUDA: the chunked MRA on the GPU gives the CPU labels (TF32 off,
    poses to 1e-3 rad / 1e-2 px)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    source = _stack_source(tmp_path, views[0])
    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), align=ALIGN,
                   init="k-means++", max_iter=4, sigma0=0.0, chunk_size=8, seed=0)
    cpu = PreparedSource(source, PreprocessOptions())
    gpu = PreparedSource(source, PreprocessOptions(), device="cuda")
    on_cpu = classify_tensor(MRA(), cpu, mask_radius=cpu.mask_radius, **options)
    on_gpu = classify_tensor(MRA(), gpu, mask_radius=gpu.mask_radius, **options)
    assert torch.equal(on_cpu.labels, on_gpu.labels.cpu())
    a, b = on_cpu.poses, on_gpu.poses.to("cpu")
    turn = torch.remainder(a.angle - b.angle + torch.pi, 2 * torch.pi) - torch.pi
    assert float(turn.abs().max()) < 1e-3
    torch.testing.assert_close(a.shift, b.shift, rtol=0, atol=1e-2)


def test_rfa_features_made_per_chunk_equal_the_features_held_in_memory(views, monkeypatch):
    """RFA over a budget too small to hold its features (each chunk's features made again on
    every request) gives the labels, poses and distances of the run that keeps them."""
    import ackmeans_torch.classify.rfa as rfa

    options = dict(n_classes=3, rule=QuadraticPenalty(beta=0.5), mask_radius=14, align=ALIGN,
                   init="k-means++", max_iter=5, sigma0=0.0, chunk_size=8, seed=0)
    kept = classify_tensor(RFA(), views[0], **options)
    monkeypatch.setattr(rfa, "IN_MEMORY_BYTES", 0)
    made = classify_tensor(RFA(), views[0], **options)
    assert torch.equal(kept.labels, made.labels)
    for name in ("angle", "shift", "distance"):
        torch.testing.assert_close(getattr(kept.poses, name), getattr(made.poses, name),
                                   rtol=0, atol=0)
