"""Rotations: RELION ZYZ Euler angles ↔ matrices, viewing directions and the angles between them.

Conventions (this module owns them):

* Euler angles ``(rot, tilt, psi)`` are RELION's ZYZ angles in **degrees** (``rlnAngleRot``,
  ``rlnAngleTilt``, ``rlnAnglePsi``); tensors of them have shape ``(..., 3)``.
* :func:`euler_to_matrix` is RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), entry for entry:
  ``A = Rz(psi) · Ry(tilt) · Rz(rot)`` with the passive sign convention RELION uses. A projection
  of a volume ``V`` in pose ``A`` is ``P(x, y) = ∫ V(Aᵀ (x, y, z)) dz`` (RELION's projector samples
  the 3D transform at ``Aᵀ (kx, ky, 0)``).
* The viewing (projection) direction of pose ``A`` is its third row ``A[2, :] =
  (sin tilt cos rot, sin tilt sin rot, cos tilt)``, a unit vector that depends on rot and tilt
  only; psi is the in-plane angle.
* Angles between directions/poses are returned in degrees.
"""

from __future__ import annotations

import math

import torch

from ackmeans_torch.errors import InputError


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """RELION ZYZ Euler angles ``(..., 3)`` = (rot, tilt, psi) in degrees → rotation matrices
    ``(..., 3, 3)``, exactly RELION's ``Euler_angles2matrix``."""
    if angles.shape[-1] != 3:
        raise InputError(f"Euler angles must have shape (..., 3), got {tuple(angles.shape)}")
    a, b, g = torch.deg2rad(angles).unbind(-1)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` → RELION ZYZ angles ``(..., 3)`` in degrees, as RELION's
    ``Euler_matrix2angles``: tilt in [0, 180]; at the poles (sin tilt ≈ 0) rot is set to 0 and the
    whole in-plane rotation goes into psi. Angles are in (-180, 180]."""
    m = matrices
    abs_sb = torch.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    # RELION's threshold 16·FLT_EPSILON decides when the pose is a pole (gimbal lock).
    regular = abs_sb > 16 * torch.finfo(torch.float32).eps
    psi = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    rot = torch.atan2(m[..., 2, 1], m[..., 2, 0])
    tilt = torch.atan2(abs_sb, m[..., 2, 2])
    north = m[..., 2, 2] > 0
    pole_psi = torch.where(
        north, torch.atan2(-m[..., 1, 0], m[..., 0, 0]), torch.atan2(m[..., 1, 0], -m[..., 0, 0])
    )
    rot = torch.where(regular, rot, torch.zeros_like(rot))
    pole_tilt = torch.where(north, torch.zeros_like(tilt), torch.full_like(tilt, math.pi))
    tilt = torch.where(regular, tilt, pole_tilt)
    psi = torch.where(regular, psi, pole_psi)
    return torch.rad2deg(torch.stack([rot, tilt, psi], -1))


def viewing_direction(rot_tilt: torch.Tensor) -> torch.Tensor:
    """Unit viewing directions ``(..., 3)`` (x, y, z) of poses given by ``(..., ≥2)`` angles whose
    first two entries are (rot, tilt) in degrees (the third row of :func:`euler_to_matrix`)."""
    rot, tilt = torch.deg2rad(rot_tilt[..., 0]), torch.deg2rad(rot_tilt[..., 1])
    return torch.stack([tilt.sin() * rot.cos(), tilt.sin() * rot.sin(), tilt.cos()], -1)


def direction_to_rot_tilt(directions: torch.Tensor) -> torch.Tensor:
    """Unit directions ``(..., 3)`` → (rot, tilt) ``(..., 2)`` in degrees (inverse of
    :func:`viewing_direction`; rot is 0 at the poles)."""
    d = directions / directions.norm(dim=-1, keepdim=True)
    rot = torch.atan2(d[..., 1], d[..., 0])
    tilt = torch.acos(d[..., 2].clamp(-1.0, 1.0))
    return torch.rad2deg(torch.stack([rot, tilt], -1))


def angle_between_directions(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between direction vectors ``u (..., 3)`` and ``v (..., 3)`` (broadcast),
    in [0, 180]. Uses atan2(|u×v|, u·v), which stays accurate for nearly (anti)parallel vectors
    where acos of the dot product loses half the digits."""
    cross = torch.linalg.cross(*torch.broadcast_tensors(u, v), dim=-1).norm(dim=-1)
    return torch.rad2deg(torch.atan2(cross, (u * v).sum(-1)))


def viewing_angle(angles_a: torch.Tensor, angles_b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the viewing directions of RELION poses ``(..., ≥2)`` (rot, tilt,
    [psi]) — the paper's "angular distance" between two projections (psi does not enter)."""
    return angle_between_directions(viewing_direction(angles_a), viewing_direction(angles_b))
