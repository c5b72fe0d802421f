"""SimulatedSource (data/simulated.py): an ImageSource over simulated images with ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ackmeans_torch.data.simulated import SimulatedSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.sim.dataset import simulate_dataset
from ackmeans_torch.sim.volume import phantom


def test_simulate_wraps_simulate_dataset_with_ground_truth():
    """SimulatedSource.simulate equals simulate_dataset with the same arguments; images(indices),
    chunks and centre_labels return the right rows; pixel_size and box_size come from the table."""
    kwargs = dict(n_centres=3, per_centre=4, box_size=16, seed=2)
    source = SimulatedSource.simulate(phantom(20), 2.0, **kwargs)
    images, table = simulate_dataset(phantom(20), 2.0, **kwargs)
    assert len(source) == 12 and source.box_size == 16 and source.pixel_size == pytest.approx(2.5)
    torch.testing.assert_close(source.images([5, 0]), images[[5, 0]])
    torch.testing.assert_close(source.images(slice(2, 4)), images[2:4])
    chunks = list(source.chunks(5))
    assert [len(i) for i, _ in chunks] == [5, 5, 2]
    torch.testing.assert_close(torch.cat([c for _, c in chunks]), images)
    pd.testing.assert_frame_equal(source.particles, table)
    assert np.array_equal(source.centre_labels, table["rlnBeamTiltClass"].to_numpy())


def test_images_are_copies():
    """Changing a returned batch does not change the source."""
    source = SimulatedSource(torch.zeros(3, 8, 8), pd.DataFrame({"a": [1, 2, 3]}), pixel_size=1.0)
    source.images([0])[0] += 1
    source.images(slice(0, 1))[0] += 1
    assert float(source.images([0]).abs().max()) == 0.0


def test_bad_inputs_messages():
    """Row count mismatch, non-square images, a bad pixel size and an out-of-range index are
    one-line InputErrors."""
    table = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(InputError, match="3 images"):
        SimulatedSource(torch.zeros(3, 8, 8), table, pixel_size=1.0)
    with pytest.raises(InputError, match=r"\(N, L, L\)"):
        SimulatedSource(torch.zeros(2, 8, 9), table, pixel_size=1.0)
    with pytest.raises(InputError, match="pixel_size=0"):
        SimulatedSource(torch.zeros(2, 8, 8), table, pixel_size=0.0)
    with pytest.raises(InputError, match="out of range"):
        SimulatedSource(torch.zeros(2, 8, 8), table, pixel_size=1.0).images([2])
