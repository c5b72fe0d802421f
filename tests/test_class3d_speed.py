"""The fast paths of a 3D classification round give the results of the plain ones: the
incremental M-step (only the particles that change class are taken out and put in again)
against the full insertion, on one process and on two, the look-ahead assignment against item
by item, and the own-class correction (made for the particle's own class only) against its
definition."""

from __future__ import annotations

import warnings

import pytest
import torch

from ackmeans_torch.class3d.model import OVERLAP, SliceMatch
from ackmeans_torch.class3d.run import Class3DOptions, initial_maps
from ackmeans_torch.cluster import engine
from ackmeans_torch.cluster.engine import ConvergenceWarning, SquaredEuclidean, fit_clusters
from ackmeans_torch.cluster.penalties import EntropyPenalty, QuadraticPenalty, SpiderFactor
from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero


@pytest.fixture(scope="module")
def three_states():
    """300 particles of 3 states of the 24 px phantom (SNR 1/3, CTF, 2° / 1 px pose noise):
    noisy enough that particles keep changing class for several rounds."""
    spec = HeteroSimulation(phantom_box=24, n_particles=300, populations=(0.5, 0.3, 0.2),
                            state_angles=(0.0, 0.0, 20.0), state_absent=(False, True, False),
                            domain_radius=0.16, snr=1 / 3, angle_noise_deg=2.0,
                            shift_noise_px=1.0)
    data = simulate_hetero(spec, seed=3)
    return ArraySource(data.images, data.particles, pixel_size=data.voxel_size)


def _classify(source, *, rounds: int, shard=engine.identity, reduce=engine.identity,
              chunk_size: int = 64, batch_size: int = 1, **provider_options):
    """Start maps and ``rounds`` ACK-means rounds with the own-class correction; the result
    and the number of particles taken out of a class by an incremental M-step."""
    provider = SliceMatch(source, resolution=12.0, mask_radius=10, **provider_options)
    removed = []
    move = provider.move_statistics

    def counting(total, index, old, new, centers):
        removed.append(len(index))
        return move(total, index, old, new, centers)

    provider.move_statistics = counting
    generator = torch.Generator().manual_seed(0)
    maps = initial_maps(provider, Class3DOptions(init="simple", resolution=12.0), 3,
                        generator=generator, shard=shard, reduce=reduce, chunk_size=chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = fit_clusters(provider, maps, rule=QuadraticPenalty(beta=0.5), max_iter=rounds,
                           generator=generator, chunk_size=chunk_size, batch_size=batch_size,
                           shard=shard, reduce=reduce, leave_one_out=True)
    return fit, sum(removed)


@pytest.mark.parametrize("kept_parts", [0, 76], ids=["none", "spectra and cells"])
def test_what_is_kept_between_rounds_changes_no_result(three_states, kept_parts):
    """With nothing kept between rounds (spectra, cells and the M-step's sorted points made
    afresh every pass), or the spectra (12 B a pixel) and cells (64 B) but not the sorted
    points, 3 rounds give the labels and maps of the default, which keeps all three."""
    kept, _ = _classify(three_states, rounds=3)
    provider = SliceMatch(three_states, resolution=12.0, mask_radius=10)
    assert provider._points_cache is not None and provider._cell_cache is not None
    budget = len(three_states) * len(provider._pixels) * kept_parts
    smaller = SliceMatch(three_states, resolution=12.0, mask_radius=10, cache_bytes=budget)
    assert smaller._points_cache is None
    assert (smaller._cell_cache is None) == (kept_parts == 0)
    fresh, _ = _classify(three_states, rounds=3, cache_bytes=budget)
    assert torch.equal(fresh.labels, kept.labels)
    torch.testing.assert_close(fresh.centers, kept.centers, rtol=0, atol=0)


def test_incremental_m_step_gives_the_maps_of_the_full_insertion(three_states, monkeypatch):
    """After 3 rounds in which particles change class, updating the last round's sums by the
    changed particles gives the labels of inserting every particle afresh and maps equal to
    float32 rounding (10⁻⁶ of the largest voxel; another chunk size, i.e. summation order,
    differs by 1.5·10⁻⁷ here), and it did take particles out."""
    monkeypatch.setattr(engine, "INCREMENTAL_MOVES", -1.0)
    full, none = _classify(three_states, rounds=3)
    monkeypatch.setattr(engine, "INCREMENTAL_MOVES", 1.0)
    incremental, removed = _classify(three_states, rounds=3)
    assert none == 0 and removed > 0
    assert all(h["sigma"] > 0 for h in full.history[1:])
    assert torch.equal(incremental.labels, full.labels)
    scale = float(full.centers.abs().max())
    torch.testing.assert_close(incremental.centers, full.centers, rtol=0, atol=1e-6 * scale)


@pytest.mark.filterwarnings("ignore::ackmeans_torch.cluster.engine.ConvergenceWarning")
def test_incremental_m_step_on_two_processes_equals_one(three_states, monkeypatch, thread_ranks):
    """Each of 2 ranks (every other particle of each batch of 4) keeps the sums of its own
    particles and updates them by its own changed particles; the summed result has the labels
    of one process inserting everything afresh, and maps equal to float32 rounding."""
    monkeypatch.setattr(engine, "INCREMENTAL_MOVES", -1.0)
    single, _ = _classify(three_states, rounds=3, batch_size=4)
    monkeypatch.setattr(engine, "INCREMENTAL_MOVES", 1.0)

    def work(rank, reduce):
        return _classify(three_states, rounds=3, shard=lambda idx: idx[rank::2], reduce=reduce,
                         batch_size=4)

    scale = float(single.centers.abs().max())
    for fit, removed in thread_ranks(2, work):
        assert removed > 0
        assert torch.equal(fit.labels, single.labels)
        torch.testing.assert_close(fit.centers, single.centers, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("rule", [QuadraticPenalty(beta=0.5), SpiderFactor(),
                                  EntropyPenalty(beta=0.5)], ids=["ack", "spider", "entropy"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_look_ahead_assigns_as_batch_by_batch(rule, batch_size, monkeypatch):
    """Scoring many batches ahead with the same sizes, and resuming after the first batch that
    changes them, gives exactly the labels, sizes and centres of refreshing the sizes after
    every batch (a look-ahead of one batch: the paper's order)."""
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(4, 6, generator=g, dtype=torch.float64) * 1.5
    truth = torch.randint(0, 4, (500,), generator=g)
    x = centres[truth] + torch.randn(500, 6, generator=g, dtype=torch.float64) * 2.0

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fit_clusters(SquaredEuclidean(x), x[:4].clone(), rule=rule, max_iter=6,
                                batch_size=batch_size, chunk_size=100,
                                generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(engine, "LOOKAHEAD", 1)
    one = run()
    monkeypatch.setattr(engine, "LOOKAHEAD", 64)
    ahead = run()
    assert sum(h["sigma"] for h in one.history[1:]) > 0.05  # items did move under the sizes
    assert torch.equal(ahead.labels, one.labels)
    assert ahead.sizes.tolist() == one.sizes.tolist()
    assert torch.equal(ahead.centers, one.centers)


def test_own_class_correction_is_the_residual_to_the_map_without_the_particle(three_states):
    """The corrected own-class distance equals its definition formed as complex residuals:
    Σ w |r − α(1 − g)·X|² / (1 − α)², r = X − c·P (module docstring of class3d/model.py), and
    the other classes' distances are left as they were."""
    provider = SliceMatch(three_states, resolution=12.0, mask_radius=10)
    generator = torch.Generator().manual_seed(0)
    maps = initial_maps(provider, Class3DOptions(init="simple", resolution=12.0), 3,
                        generator=generator, shard=engine.identity, reduce=engine.identity)
    index = torch.arange(40, 140)
    current = torch.arange(100) % 3
    d = provider.dissimilarity(index, maps)
    corrected = provider.leave_one_out(d, current, torch.tensor([100, 100, 100]))
    data = provider.read(index)
    x, ctf = data["x"], data["ctf"]
    projector = provider._projector[1]
    cells = projector.cells(provider.rotations[index], provider.k2d)
    p = projector.sample_cells(cells).view(100, -1, 2, 3)
    p = torch.complex(p[:, :, 0], p[:, :, 1])[torch.arange(100), :, current]  # (B, n)
    shell = provider.pixel_shell
    alpha = (ctf.square() * OVERLAP / provider.padding**3
             / provider._share[current][:, shell]).float().clamp(max=0.5)
    beta = alpha * (1 - provider._gain[current][:, shell])
    residual = (x - ctf * p - beta * x) / (1 - alpha)
    expected = (residual.abs().square() * provider.pixel_weight).sum(1)
    own = corrected[torch.arange(100), current]
    torch.testing.assert_close(own, expected, rtol=2e-5, atol=0)
    others = torch.ones_like(d, dtype=torch.bool)
    others[torch.arange(100), current] = False
    assert torch.equal(corrected[others], d[others])
    assert bool((own > d[torch.arange(100), current]).all())
