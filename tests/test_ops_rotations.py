"""Rotations: RELION ZYZ conventions and angular distances (ops/rotations.py)."""

from __future__ import annotations

import pytest
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.ops.rotations import (
    angle_between_directions,
    direction_to_rot_tilt,
    euler_to_matrix,
    matrix_to_euler,
    viewing_angle,
    viewing_direction,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_euler_to_matrix_known_answers_match_relion_formula():
    """Known answers of RELION's Euler_angles2matrix: rot = 90 alone maps x to -y in the passive
    convention (A[0, 1] = sin rot); tilt = 90 alone sends the viewing direction to +x."""
    a = euler_to_matrix(torch.tensor([90.0, 0.0, 0.0], dtype=torch.float64))
    expected = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(a, expected, atol=1e-12, rtol=0)
    b = euler_to_matrix(torch.tensor([0.0, 90.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(b[2], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    # psi is an in-plane rotation applied last: A(rot, tilt, psi) = Rz(psi) A(rot, tilt, 0).
    angles = torch.tensor([30.0, 40.0, 50.0], dtype=torch.float64)
    psi_only = euler_to_matrix(torch.tensor([50.0, 0.0, 0.0], dtype=torch.float64))
    no_psi = euler_to_matrix(torch.tensor([30.0, 40.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(euler_to_matrix(angles), psi_only @ no_psi)


def test_matrices_orthonormal_with_det_one():
    """Every matrix from euler_to_matrix is a proper rotation (AᵀA = I, det = 1)."""
    angles = torch.rand(500, 3, generator=_gen(), dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0]) - torch.tensor([180.0, 0.0, 180.0])
    a = euler_to_matrix(angles)
    torch.testing.assert_close(a.transpose(-1, -2) @ a, torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
    torch.testing.assert_close(torch.linalg.det(a), torch.ones(500, dtype=torch.float64))


def test_zyz_round_trip_angles_and_matrices():
    """matrix_to_euler(euler_to_matrix(a)) = a for tilt in (0, 180) and angles in (-180, 180];
    matrices round-trip everywhere, poles included."""
    g = _gen(1)
    angles = torch.stack([
        torch.rand(1000, generator=g, dtype=torch.float64) * 359.0 - 179.5,
        torch.rand(1000, generator=g, dtype=torch.float64) * 179.0 + 0.5,
        torch.rand(1000, generator=g, dtype=torch.float64) * 359.0 - 179.5,
    ], -1)
    torch.testing.assert_close(matrix_to_euler(euler_to_matrix(angles)), angles, atol=1e-9, rtol=0)
    poles = torch.tensor([[10.0, 0.0, 20.0], [10.0, 180.0, 20.0]], dtype=torch.float64)
    mats = euler_to_matrix(poles)
    back = matrix_to_euler(mats)
    torch.testing.assert_close(euler_to_matrix(back), mats, atol=1e-12, rtol=0)
    assert back[:, 0].abs().max() == 0  # RELION puts the whole in-plane angle in psi at a pole


def test_angle_between_directions_known_answers():
    """x vs y → 90°, x vs -x → 180°, x vs x → 0°, 45° in the xy plane; viewing_angle ignores psi
    and equals the tilt difference for equal rot."""
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert float(angle_between_directions(x, y)) == pytest.approx(90.0)
    assert float(angle_between_directions(x, -x)) == pytest.approx(180.0)
    assert float(angle_between_directions(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(angle_between_directions(x, x + y)) == pytest.approx(45.0)
    a = torch.tensor([20.0, 30.0, 0.0], dtype=torch.float64)
    b = torch.tensor([20.0, 75.0, 123.0], dtype=torch.float64)
    assert float(viewing_angle(a, b)) == pytest.approx(45.0)


def test_viewing_direction_is_third_matrix_row_and_inverts():
    """viewing_direction(rot, tilt) is row 2 of the RELION matrix, and direction_to_rot_tilt
    inverts it."""
    angles = torch.tensor([[35.0, 60.0, 10.0], [-120.0, 150.0, 200.0]], dtype=torch.float64)
    d = viewing_direction(angles)
    torch.testing.assert_close(d, euler_to_matrix(angles)[:, 2, :])
    torch.testing.assert_close(direction_to_rot_tilt(d), angles[:, :2])


def test_bad_euler_shape_message():
    """Angles without a trailing axis of 3 are rejected with the shape in the message."""
    with pytest.raises(InputError, match=r"\(\.\.\., 3\)"):
        euler_to_matrix(torch.zeros(4, 2))
