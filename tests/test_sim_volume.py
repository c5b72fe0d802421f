"""The built-in phantom (sim/volume.py)."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.sim.volume import phantom


@pytest.mark.parametrize("size", [8, 33, 64])
def test_phantom_any_size_non_negative_and_asymmetric(size):
    """The phantom exists for any size, is non-negative with max 1, and is neither mirror
    symmetric about any axis nor invariant under 90° rotations (relative difference > 10%)."""
    v = phantom(size)
    assert v.shape == (size,) * 3 and float(v.min()) >= 0 and float(v.max()) == pytest.approx(1.0)
    c = size // 2
    centred = v[: 2 * c, : 2 * c, : 2 * c] if size % 2 == 0 else v  # flips about index c
    inner = centred[1:, 1:, 1:] if size % 2 == 0 else centred
    others = [inner.flip(0), inner.flip(1), inner.flip(2), inner.transpose(1, 2), inner.transpose(0, 2),
              inner.transpose(0, 1), torch.rot90(inner, 1, (1, 2)), torch.rot90(inner, 1, (0, 1))]
    for other in others:
        assert float((other - inner).norm() / inner.norm()) > 0.1


def test_phantom_too_small_message():
    """A phantom below 8 px is a one-line InputError."""
    with pytest.raises(InputError, match="size=4"):
        phantom(4)
