"""3D trust sets: the simulator's second domain that makes the benchmark's four discrete states
(sim/hetero.py), and exhaustive splitting on 3D classification (trust/split.py over
trust/classifier.py's Classify3D) of a homogeneous set made from a real map: no split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ackmeans_torch.class3d.run import Class3DOptions
from ackmeans_torch.cluster.options import ClusterOptions
from ackmeans_torch.cluster.penalties import QuadraticPenalty
from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.polar import spherical_mask
from ackmeans_torch.sim.hetero import HeteroSimulation, simulate_hetero
from ackmeans_torch.trust.classifier import Classify3D
from ackmeans_torch.trust.split import SplitOptions, exhaustive_split


def test_second_domain_is_removed_only_in_the_states_that_say_so():
    """Four states of two subunits (present/absent each): a state without the second domain is
    the map times (1 − its mask), the others keep it, the first domain's removal still applies
    on top, and a missing per-state flag is refused with the keys named."""
    spec = HeteroSimulation(phantom_box=24, n_particles=8, populations=(0.25,) * 4,
                            state_angles=(0.0,) * 4, state_absent=(False, False, True, True),
                            second_domain_centre=(0.25, 0.0, 0.0), second_domain_radius=0.12,
                            state_second_absent=(False, True, False, True), snr=None)
    volume, _ = spec.base_map()
    first, _, _ = spec.domain(24)
    second = spherical_mask(24, 0.12 * 24, centre=torch.tensor([0.25, 0.0, 0.0]) * 24,
                            soft_edge=spec.domain_edge_px)
    maps = [spec.state_map(volume, k) for k in range(4)]
    torch.testing.assert_close(maps[0], volume)
    torch.testing.assert_close(maps[1], volume * (1 - second))
    torch.testing.assert_close(maps[2], volume * (1 - first))
    torch.testing.assert_close(maps[3], volume * (1 - second) * (1 - first))
    assert float((maps[0] - maps[1]).abs().sum()) > 0
    with pytest.raises(InputError, match="state_second_absent"):
        HeteroSimulation(populations=(0.5, 0.5), state_angles=(0.0, 0.0),
                         state_absent=(False, True), second_domain_centre=(0.25, 0.0, 0.0))


def test_3d_split_of_a_homogeneous_real_map_set_accepts_no_split(shared_data):
    """400 images of the real 70S ribosome map (shared data, 5 Å/px, Fourier-cropped to 32 px:
    10.2 Å/px, classified to 24 Å), one state, CTF, SNR 1, pose noise 0.5° / 0.25 px: the 3D
    split of the set is refused, so the tree is one leaf holding every particle, with its
    decision's figures recorded."""
    spec = HeteroSimulation(volume=str(shared_data / "volumes" / "ribosome70S_65px.mrc"),
                            voxel_size=5.0, box_size=32, n_particles=400, populations=(1.0,),
                            state_angles=(0.0,), state_absent=(False,), snr=1.0,
                            angle_noise_deg=0.5, shift_noise_px=0.25)
    data = simulate_hetero(spec, seed=0)
    classify = Classify3D(ArraySource(data.images, data.particles, pixel_size=data.voxel_size),
                          rule=QuadraticPenalty(beta=0.5),
                          options=ClusterOptions(n_classes=2, max_iter=4, sigma0=0.01,
                                                 plateau=0),
                          class3d=Class3DOptions(init="pca", resolution=24.0))
    options = SplitOptions(replicates=2, max_children=2, min_size=100, null_draws=99)
    tree = exhaustive_split(classify, len(data.images), options=options)
    assert tree.accepted == 0 and tree.leaves == ["1"], tree.nodes.to_string()
    assert (tree.labels == 0).all()
    assert np.isfinite(tree.nodes.loc[0, "ari_median"])
