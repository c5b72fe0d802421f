"""Back-projection (ops/projection.py: BackProjector, reconstruct) and the FSC (ops/fourier.py):
noiseless projections of the 70S map reconstruct it, with and without CTF, phase-flipped or
not; split grids add up to one; and RELION's relion_reconstruct of the same STAR file agrees
with ours and with the map, which also settles the pose, origin and CTF conventions end to end
from our simulator's STAR file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ackmeans_torch.data.stack import open_source
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.mrc import load_volume, write_stack
from ackmeans_torch.io.star import write_particles
from ackmeans_torch.ops.ctf import ctf
from ackmeans_torch.ops.fourier import fourier_crop_volume, fsc, ifft2c
from ackmeans_torch.ops.projection import BackProjector, FourierProjector, reconstruct
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.views import random_rotations
from ackmeans_torch.sim.volume import phantom

BOX = 32  # the 65 px map Fourier-cropped: 1–2 s per reconstruction on one loaded core
# The cropped map taken at the map's own 5 Å/px (a half-size ribosome), not its 10.2 Å: there a
# 1–3 µm CTF barely reaches its first zero by Nyquist, at 5 Å it crosses zero 2 to 6 times, so the
# CTF weighting and the phase-flip sign are tested.
PIXEL = 5.0
# The bound of the checks: FSC ≥ 0.9 (with the truth) and ≥ 0.95 (with RELION) on every shell up
# to 0.8 × Nyquist.
LAST_SHELL = int(0.8 * (BOX // 2))


@pytest.fixture(scope="module")
def truth(shared_data: Path) -> torch.Tensor:
    volume, _ = load_volume(shared_data / "volumes" / "ribosome70S_65px.mrc", voxel_size=5.0)
    return fourier_crop_volume(volume, BOX)


def _poses(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n, generator=gen).to(torch.float32)
    shifts = (torch.rand(n, 2, generator=gen) * 2 - 1) * 3.0
    return rotations, shifts


def _ctf(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    defocus = 10000.0 + 20000.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    return ctf(size=BOX, pixel_size=PIXEL, defocus_u=defocus, defocus_v=defocus - 300.0,
               defocus_angle=torch.rand(n, generator=gen, dtype=torch.float64) * 180,
               voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1)


def test_fsc_of_a_volume_with_itself_its_negative_and_noise():
    volume = phantom(16)
    assert fsc(volume, volume).shape == (9,)
    assert torch.allclose(fsc(volume, 2 * volume), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(fsc(volume, -volume), -torch.ones(9, dtype=torch.float64))
    noise = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert fsc(volume, noise)[4:].abs().max() < 0.3
    with pytest.raises(InputError, match="fsc needs two volumes"):
        fsc(volume, volume[:8])


@pytest.mark.parametrize("with_ctf", [False, True], ids=["no_ctf", "ctf_1_3um"])
def test_noiseless_projections_reconstruct_the_map(truth, with_ctf):
    rotations, shifts = _poses(3000, seed=1)
    spectra = FourierProjector(truth).spectra(rotations, shifts)
    weights = _ctf(3000, seed=2) if with_ctf else None
    images = ifft2c(spectra if weights is None else spectra * weights).real
    back = BackProjector(BOX)
    back.insert(images, rotations, shifts, weights)
    curve = fsc(back.reconstruct(), truth)
    assert curve[1 : LAST_SHELL + 1].min() >= 0.9, curve


def test_phase_flipped_table_is_weighted_by_abs_ctf(truth):
    """``reconstruct`` from a simulated table: flipped images (rlnCtfDataArePhaseFlipped 1) with
    |CTF|, shifts from rlnOriginXAngst/YAngst; weighting them by the signed CTF instead fails."""
    images, particles = simulate_dataset(truth, PIXEL, n_centres=2000, per_centre=1, snr=None,
                                         phase_flip=True, max_shift_px=3.0, seed=3)
    assert (particles["rlnCtfDataArePhaseFlipped"] == 1).all()
    volume = reconstruct(images, particles=particles, pixel_size=PIXEL)
    assert fsc(volume, truth)[1 : LAST_SHELL + 1].min() >= 0.9
    unflipped = particles.assign(rlnCtfDataArePhaseFlipped=0)
    wrong = reconstruct(images, particles=unflipped, pixel_size=PIXEL)
    assert fsc(wrong, truth)[1 : LAST_SHELL + 1].min() < 0.5


def test_grids_of_parts_add_up_to_the_whole_and_chunking_changes_nothing():
    """What a clustering M-step does across classes' shards or processes: sum the numerator and
    weight grids, then reconstruct once."""
    volume = phantom(16)
    rotations, shifts = _poses(200, seed=4)
    images = FourierProjector(volume)(rotations, shifts)
    whole = BackProjector(16)
    whole.insert(images, rotations, shifts)
    first, second = BackProjector(16), BackProjector(16, max_chunk_bytes=1)  # one image a chunk
    first.insert(images[:120], rotations[:120], shifts[:120])
    second.insert(images[120:], rotations[120:], shifts[120:])
    first.numerator += second.numerator
    first.weight += second.weight
    assert torch.allclose(first.numerator, whole.numerator, atol=1e-3, rtol=1e-4)
    assert torch.allclose(first.weight, whole.weight, atol=1e-4, rtol=1e-5)
    assert torch.allclose(first.reconstruct(), whole.reconstruct(), atol=1e-5, rtol=1e-4)


def test_regulariser_shrinks_and_wrong_shapes_are_refused():
    volume = phantom(16)
    rotations, shifts = _poses(100, seed=5)
    back = BackProjector(16)
    back.insert(FourierProjector(volume)(rotations), rotations)
    plain, damped = back.reconstruct(), back.reconstruct(regulariser=1e3)
    assert damped.norm() < 0.5 * plain.norm()
    with pytest.raises(InputError, match="rotations must have shape"):
        back.insert(torch.zeros(2, 16, 16), rotations[:3])
    with pytest.raises(InputError, match="images must have shape"):
        back.insert(torch.zeros(2, 15, 15), rotations[:2])
    with pytest.raises(InputError, match="regulariser"):
        back.reconstruct(regulariser=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_grids_equal_cpu_grids():
    volume = phantom(32)
    rotations, shifts = _poses(500, seed=6)
    images = FourierProjector(volume)(rotations, shifts)
    cpu, gpu = BackProjector(32), BackProjector(32, device="cuda")
    cpu.insert(images, rotations, shifts)
    gpu.insert(images.cuda(), rotations.cuda(), shifts.cuda())
    assert torch.allclose(gpu.reconstruct().cpu(), cpu.reconstruct(), atol=1e-4, rtol=1e-3)


RELION_CASES = {"no_ctf": ([], None), "ctf": (["--ctf"], False),
                "ctf_flipped": (["--ctf", "--ctf_phase_flipped"], True)}


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_reconstruct") is None,
                    reason="relion_reconstruct is not installed (apt-get install relion)")
@pytest.mark.parametrize("case", RELION_CASES)
def test_relion_reconstruct_of_our_simulated_star_agrees(truth, tmp_path, case):
    flags, flipped = RELION_CASES[case]
    images, particles = simulate_dataset(
        truth, PIXEL, n_centres=2000, per_centre=1, snr=None, max_shift_px=3.0, seed=7,
        defocus_range=None if flipped is None else (10000.0, 30000.0), phase_flip=bool(flipped))
    particles = particles.assign(rlnImageName=[f"{i + 1:06d}@particles.mrcs"
                                               for i in range(len(images))])
    write_stack(tmp_path / "particles.mrcs", images, PIXEL)
    write_particles(tmp_path / "particles.star", particles)
    # relion_reconstruct runs on one thread (it takes no --j)
    done = subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "rln.mrc",
                           *flags], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    theirs, _ = load_volume(tmp_path / "rln.mrc")
    ours = reconstruct(open_source(tmp_path / "particles.star", project_dir=tmp_path))
    shells = slice(1, LAST_SHELL + 1)
    assert fsc(ours, theirs)[shells].min() >= 0.95
    assert fsc(theirs, truth)[shells].min() >= 0.9  # our STAR means to RELION what we meant
    assert fsc(ours, truth)[shells].min() >= 0.9
