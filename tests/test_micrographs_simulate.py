"""The micrograph simulator: truth where the particles are, the stated SNR, determinism, and the
files every downstream reader takes."""

from __future__ import annotations

import numpy as np
import pytest

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.coords import read_picks
from ackmeans_torch.micrographs.extract import box_windows
from ackmeans_torch.micrographs.io import read_micrographs
from ackmeans_torch.micrographs.simulate import TRUTH_FORMATS, MicrographSimulation, simulate_micrographs, write_simulated

SMALL = dict(n_micrographs=3, size=256, box_size=32, particles_per_micrograph=20, empty_regions=1)


def test_truth_boxes_are_inside_apart_and_away_from_carbon_and_junk():
    """Every true box lies inside its micrograph, centres (particles and junk together) are at least
    min_distance apart, the counts are as asked, and no particle sits on the carbon film (its
    pixels are darker by the carbon step there)."""
    spec = MicrographSimulation(**SMALL, junk_fraction=0.2, carbon_edge=3.0, ice=0.0)
    sim = simulate_micrographs(spec, seed=1)
    assert [m.name for m in sim.micrographs] == ["mic_0000", "mic_0001", "mic_0002"]
    for m, image in zip(sim.micrographs, sim.images):
        truth, junk = sim.truth[m.name], sim.junk[m.name]
        assert len(truth) == 20 and len(junk) == 4
        assert image.shape == (256, 256) and image.dtype == np.float32
        every = np.vstack([truth.centres, junk.centres])
        assert (every >= 16).all() and (every <= 256 - 16).all()
        d = np.sqrt(((every[:, None] - every[None]) ** 2).sum(-1)) + np.eye(len(every)) * 1e9
        assert d.min() >= 0.8 * 32
        assert m.pixel_size == 4.0 and 10000 <= m.ctf["rlnDefocusU"] <= 30000


def test_particles_are_dark_at_the_true_centres():
    """With little noise and no background, the mean inverted-contrast box over the true centres
    is brighter in its central disc than boxes at points far from every particle and junk: the
    coordinates are where the particles were drawn (x = column, y = row)."""
    spec = MicrographSimulation(**SMALL, snr=100.0, ice=0.0, junk_fraction=0.0, defocus_min=5000.0,
                                defocus_max=5000.0, astigmatism=0.0, amplitude_contrast=0.5)
    sim = simulate_micrographs(spec, seed=2)
    image, truth = -sim.images[0], sim.truth["mic_0000"]
    y, x = np.mgrid[:32, :32] - 16
    disc = x**2 + y**2 < 10**2
    at_truth = box_windows(image, truth.centres, 32)[:, disc].mean()
    grid = np.stack(np.meshgrid(np.arange(20, 237, 8), np.arange(20, 237, 8)), -1).reshape(-1, 2).astype(float)
    far = grid[np.sqrt(((grid[:, None] - truth.centres[None]) ** 2).sum(-1)).min(1) > 40]
    assert len(far) > 10
    elsewhere = box_windows(image, far, 32)[:, disc].mean()
    assert at_truth > elsewhere + 5 * sim.sigma / np.sqrt(disc.sum() * len(truth))


def test_snr_is_the_stated_whole_box_ratio():
    """Two runs with the same seed and SNRs 1/20 and 1/5 share their draws, so the clean signal
    follows from the two images; its variance in the true boxes over σ² is the stated SNR."""
    common = dict(SMALL, ice=0.0, junk_fraction=0.0)
    a = simulate_micrographs(MicrographSimulation(**common, snr=0.05), seed=3)
    b = simulate_micrographs(MicrographSimulation(**common, snr=0.2), seed=3)
    boxes = []
    for m, ia, ib in zip(a.micrographs, a.images, b.images):
        clean = (b.sigma * ia.astype(np.float64) - a.sigma * ib) / (b.sigma - a.sigma)
        boxes.append(box_windows(clean, a.truth[m.name].centres, 32).astype(np.float64))
    signal = np.concatenate(boxes).var(axis=(1, 2)).mean()
    assert signal / a.sigma**2 == pytest.approx(0.05, rel=1e-3)


def test_same_seed_same_micrographs_other_seed_others():
    """The seed fixes everything; another seed moves the particles."""
    spec = MicrographSimulation(**SMALL)
    a, b, c = (simulate_micrographs(spec, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert np.array_equal(a.truth["mic_0001"].centres, b.truth["mic_0001"].centres)
    assert not np.array_equal(a.truth["mic_0001"].centres, c.truth["mic_0001"].centres)


def test_written_files_read_back_in_every_format(tmp_path):
    """write_simulated: the micrographs STAR lists the MRC micrographs with the simulated pixel
    size and CTF (read_micrographs, from another working directory), and the truth reads back the
    same from every coordinate format the consensus reads."""
    sim = simulate_micrographs(MicrographSimulation(**SMALL), seed=4)
    star = write_simulated(sim, tmp_path / "project")
    mics = read_micrographs(star)
    assert [m.name for m in mics] == [m.name for m in sim.micrographs]
    for m, s, image in zip(mics, sim.micrographs, sim.images):
        assert m.pixel_size == s.pixel_size
        assert m.ctf == pytest.approx(s.ctf)
        assert np.array_equal(m.load(), image)
        for fmt, (suffix, _) in TRUTH_FORMATS.items():
            picks = read_picks(tmp_path / "project" / "truth" / fmt / f"{m.name}{suffix}", box_size=32)
            assert np.allclose(picks.centres, sim.truth[m.name].centres), fmt


def test_overcrowded_request_is_refused():
    """Asking for more particles than fit at the minimum distance is a one-line error, not a
    silently smaller truth."""
    with pytest.raises(InputError, match="only .* of 440 particles and junk fit"):
        simulate_micrographs(MicrographSimulation(**dict(SMALL, particles_per_micrograph=400)))


def test_config_mirrors_the_simulation():
    """configs/simulate-micrographs.yaml's sim block instantiates MicrographSimulation with every
    one of its keywords, at the dataclass defaults."""
    from dataclasses import fields

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ackmeans_torch.cli.app import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("simulate-micrographs")
    assert set(cfg.sim) - {"_target_"} == {f.name for f in fields(MicrographSimulation)}
    assert instantiate(cfg.sim) == MicrographSimulation()


def test_a_map_file_sets_the_box_and_pixel_size(tmp_path):
    """A map path is projected at its own side and voxel size (the header's, or pixel_size when
    the header has none, which is otherwise a named error)."""
    from ackmeans_torch.io.mrc import write_volume
    from ackmeans_torch.sim.volume import phantom

    write_volume(tmp_path / "map.mrc", phantom(24), 3.0)
    write_volume(tmp_path / "bare.mrc", phantom(24), 0.0)
    spec = dict(n_micrographs=1, size=160, particles_per_micrograph=5, empty_regions=0)
    sim = simulate_micrographs(MicrographSimulation(**spec, volume=str(tmp_path / "map.mrc")))
    assert sim.micrographs[0].pixel_size == 3.0 and sim.truth["mic_0000"].box_size.tolist() == [24.0] * 5
    sim = simulate_micrographs(MicrographSimulation(**spec, volume=str(tmp_path / "bare.mrc"), pixel_size=2.5))
    assert sim.micrographs[0].pixel_size == 2.5
    with pytest.raises(InputError, match="bare.mrc: the map header has no voxel size; give pixel_size"):
        simulate_micrographs(MicrographSimulation(**spec, volume=str(tmp_path / "bare.mrc")))
