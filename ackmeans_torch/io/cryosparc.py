"""cryoSPARC particle files (``.cs``: a NumPy structured array) into a RELION-style table.

A ``.cs`` file is read with ``np.load`` (no pickles) and mapped field by field onto RELION-4 column
names, so the rest of the project sees the same :class:`~ackmeans_torch.io.star.ParticleTable` as
for a STAR file:

==========================  ====================================================================
cryoSPARC field             table column
==========================  ====================================================================
blob/path, blob/idx         rlnImageName = ``{idx + 1:06d}@{path}`` (idx is 0-based; a leading
                            ``>``, cryoSPARC's "relative to the project" mark, is dropped)
blob/psize_A, blob/shape    rlnImagePixelSize (Å), rlnImageSize (px; images must be square)
ctf/df1_A, df2_A            rlnDefocusU, rlnDefocusV (Å)
ctf/df_angle_rad            rlnDefocusAngle (degrees)
ctf/accel_kv, cs_mm,        rlnVoltage (kV), rlnSphericalAberration (mm), rlnAmplitudeContrast
amp_contrast
ctf/phase_shift_rad         rlnPhaseShift (degrees)
ctf/bfactor                 rlnCtfBfactor (Å²), when present
ctf/exp_group_id            rlnOpticsGroup = id + 1
alignments3D/pose           rlnAngleRot/Tilt/Psi, see :func:`cs_pose_to_euler`
alignments3D/shift          rlnOriginXAngst/YAngst = shift (px) × alignments3D/psize_A (else
                            blob/psize_A)
alignments3D/class, split   rlnClassNumber = class + 1, rlnRandomSubset = split + 1
alignments2D/pose           rlnAnglePsi = degrees(pose) (only when there is no alignments3D)
alignments2D/shift, class   origins and rlnClassNumber as for 3D (only without alignments3D)
==========================  ====================================================================

Every other scalar field is kept under its cryoSPARC name (e.g. ``uid``, ``blob/sign``); such
columns do not start with ``rln`` and are therefore never written to STAR. Vector fields beyond
those above (beam tilt, anisotropic magnification, ...) are not carried over.

Pose convention (the choice this module owns): ``alignments3D/pose`` is an axis-angle rotation
vector ``v`` (radians). Following cryoDRGN (``parse_pose_csparc`` takes ``expmap(v)ᵀ`` as the same
matrix its ``parse_pose_star`` builds from RELION angles) and pyem's ``csparc2star`` (which
decomposes the transposed exponential map into RELION angles), RELION's pose matrix is
``A = R(v)ᵀ``, with ``R(v)`` the ordinary (right-handed, active) rotation about ``v`` by ``|v|``.
As RELION's ``Euler_angles2matrix`` is ``A = R_zyz(rot, tilt, psi)ᵀ`` for the intrinsic ZYZ
rotation ``R_zyz = Rz(rot)·Ry(tilt)·Rz(psi)``, the RELION angles are simply the intrinsic ZYZ
angles of ``R(v)``: ``Rotation.from_rotvec(v).as_euler("ZYZ")`` (tilt in [0°, 180°]).
Shifts are copied with the same sign as RELION origins (as cryoDRGN and pyem do). The 2D mapping
(``psi = degrees(pose)``) follows pyem and has not been checked against a 2D-classification
export here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.star import ParticleTable

_REQUIRED = ("blob/path", "blob/idx", "blob/psize_A")

_CTF_COLUMNS = {
    "ctf/df1_A": "rlnDefocusU",
    "ctf/df2_A": "rlnDefocusV",
    "ctf/accel_kv": "rlnVoltage",
    "ctf/cs_mm": "rlnSphericalAberration",
    "ctf/amp_contrast": "rlnAmplitudeContrast",
    "ctf/bfactor": "rlnCtfBfactor",
}
_CTF_ANGLES = {"ctf/df_angle_rad": "rlnDefocusAngle", "ctf/phase_shift_rad": "rlnPhaseShift"}


def cs_pose_to_euler(poses: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` rotation vectors ``(N, 3)`` (radians) → RELION ZYZ Euler
    angles ``(N, 3)`` = (rot, tilt, psi) in degrees; see the module docstring for why."""
    with warnings.catch_warnings():
        # At tilt 0/180 (gimbal lock) scipy warns and puts the whole in-plane angle into one
        # angle; that is still the same rotation, which is all RELION needs.
        warnings.filterwarnings("ignore", message="Gimbal lock detected")
        rotations = Rotation.from_rotvec(np.asarray(poses, dtype=np.float64))
        return rotations.as_euler("ZYZ", degrees=True)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values


def read_cs(
    path: str | os.PathLike, *, stack_root: str | os.PathLike | None = None
) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file into a :class:`ParticleTable` (see module docstring
    for the field mapping and the pose convention).

    Relative image paths resolve against ``stack_root`` when it is a folder (default: the ``.cs``
    file's folder); when ``stack_root`` is a stack file, every particle's image ``blob/idx`` is
    read from that file instead of ``blob/path``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such cryoSPARC .cs file; check the path")
    try:
        records = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: not a readable cryoSPARC .cs file ({error})") from error
    names = records.dtype.names if isinstance(records, np.ndarray) else None
    if names is None or records.ndim != 1:
        raise InputError(f"{path}: not a cryoSPARC .cs file (expected a 1-D structured array)")
    for field in _REQUIRED:
        if field not in names:
            raise InputError(f"{path}: no {field} field; cannot locate the particle images")

    if "blob/shape" in names:
        shape = np.asarray(records["blob/shape"]).reshape(len(records), -1)
        if (shape[:, 0] != shape[:, -1]).any():
            row = int(np.flatnonzero(shape[:, 0] != shape[:, -1])[0])
            raise InputError(
                f"{path}: particle {row} has blob/shape {tuple(shape[row].tolist())}; "
                "only square images are supported"
            )

    columns: dict[str, np.ndarray] = {}
    indices = records["blob/idx"].astype(np.int64)
    if stack_root is not None and Path(stack_root).is_file():
        stack_paths = np.full(len(records), os.path.abspath(stack_root), dtype=object)
        image_root = Path(stack_root).parent
    else:
        stack_paths = np.char.lstrip(_decode(records["blob/path"]).astype(str), ">")
        image_root = Path(stack_root) if stack_root is not None else path.parent
    columns["rlnImageName"] = np.array(
        [f"{i + 1:06d}@{p}" for i, p in zip(indices, stack_paths)], dtype=object
    )
    pixel_size = records["blob/psize_A"].astype(np.float64)
    columns["rlnImagePixelSize"] = pixel_size
    if "blob/shape" in names:
        columns["rlnImageSize"] = shape[:, -1].astype(np.int64)
    for field, column in _CTF_COLUMNS.items():
        if field in names:
            columns[column] = records[field].astype(np.float64)
    for field, column in _CTF_ANGLES.items():
        if field in names:
            columns[column] = np.rad2deg(records[field].astype(np.float64))
    if "ctf/exp_group_id" in names:
        columns["rlnOpticsGroup"] = records["ctf/exp_group_id"].astype(np.int64) + 1

    if "alignments3D/pose" in names:
        euler = cs_pose_to_euler(records["alignments3D/pose"])
        columns.update(rlnAngleRot=euler[:, 0], rlnAngleTilt=euler[:, 1], rlnAnglePsi=euler[:, 2])
        prefix = "alignments3D/"
    elif "alignments2D/pose" in names:
        columns["rlnAnglePsi"] = np.rad2deg(records["alignments2D/pose"].astype(np.float64))
        prefix = "alignments2D/"
    else:
        prefix = None
    if prefix is not None:
        if prefix + "shift" in names:
            shift_pixel = (
                records[prefix + "psize_A"].astype(np.float64)
                if prefix + "psize_A" in names
                else pixel_size
            )
            shift = records[prefix + "shift"].astype(np.float64)
            columns["rlnOriginXAngst"] = shift[:, 0] * shift_pixel
            columns["rlnOriginYAngst"] = shift[:, 1] * shift_pixel
        if prefix + "class" in names:
            columns["rlnClassNumber"] = records[prefix + "class"].astype(np.int64) + 1
        if prefix + "split" in names:
            columns["rlnRandomSubset"] = records[prefix + "split"].astype(np.int64) + 1

    for field in names:
        if records.dtype[field].shape == () and field not in columns:
            columns[field] = _decode(records[field])
    return ParticleTable.from_particles(pd.DataFrame(columns), source=path, image_root=image_root)
