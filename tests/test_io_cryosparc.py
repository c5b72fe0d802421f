"""cryoSPARC .cs reading: the EMPIAR-10076 particles agree with their STAR twin, the 2,019-pose
file loads with sane values, the pose convention (rotation vector → RELION ZYZ) is checked
against RELION's matrix, 2D alignments on a synthetic file, and bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.cryosparc import cs_pose_to_euler, read_cs
from ackmeans_torch.io.star import origins_px, read_particles
from ackmeans_torch.ops.rotations import euler_to_matrix


def write_cs(path, fields: dict[str, np.ndarray]) -> None:
    """Tiny test asset writer: a structured array saved exactly as cryoSPARC does (np.save to an
    open file, so no .npy suffix is added)."""
    n = len(next(iter(fields.values())))
    dtype = [(name, values.dtype, values.shape[1:]) for name, values in fields.items()]
    records = np.zeros(n, dtype=dtype)
    for name, values in fields.items():
        records[name] = values
    with open(path, "wb") as handle:
        np.save(handle, records)


def _blob(n: int, shape: int = 16) -> dict[str, np.ndarray]:
    return {
        "uid": np.arange(n, dtype=np.uint64),
        "blob/path": np.array([b">J1/imported/s.mrc"] * n),
        "blob/idx": np.arange(n, dtype=np.uint32),
        "blob/shape": np.full((n, 2), shape, dtype=np.uint32),
        "blob/psize_A": np.full(n, 2.0, dtype=np.float32),
    }


def test_empiar10076_cs_agrees_with_star(shared_data):
    """The same 7 particles from .cs and .star: identical image locations, pixel size within
    float32 rounding (1e-6 relative), defocus within 0.01 Å (the .cs stores float32), astigmatism
    angle within 1e-4° (radians in .cs, degrees in .star), identical voltage/Cs/amplitude
    contrast. Neither file carries poses, so both have zero origins (angles are checked on the
    2,019-pose file below)."""
    folder = shared_data / "particles" / "empiar10076_seven"
    cs = read_cs(folder / "empiar_10076_7.cs")
    star = read_particles(folder / "empiar_10076_7.star")
    a, b = cs.particles, star.particles
    assert len(cs) == len(star) == 7
    for loc_cs, loc_star in zip(cs.image_locations(), star.image_locations()):
        assert list(loc_cs) == list(loc_star)
    np.testing.assert_allclose(a["rlnImagePixelSize"], b["rlnImagePixelSize"], rtol=1e-6)
    for column in ("rlnDefocusU", "rlnDefocusV"):
        np.testing.assert_allclose(a[column], b[column], atol=0.01)
    np.testing.assert_allclose(a["rlnDefocusAngle"], b["rlnDefocusAngle"], atol=1e-4)
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-6)
    np.testing.assert_array_equal(origins_px(a), origins_px(b))
    assert (origins_px(a) == 0).all()


def test_cryosparc_2019_poses_sane(shared_data):
    """2,019 refined poses: RELION angle ranges (tilt in [0, 180]), origins within half a box,
    CTF and pixel size physical, class 1, half-sets 1/2, one optics group; the RELION matrix of
    every pose equals R(v)ᵀ (the cryoDRGN/pyem convention) to 1e-6."""
    path = shared_data / "particles" / "cryosparc_poses" / "cryosparc_P12_J24_001_particles.cs"
    table = read_cs(path)
    p = table.particles
    assert len(table) == 2019
    assert p["rlnAngleTilt"].between(0, 180).all()
    assert p["rlnAngleRot"].between(-180, 180).all() and p["rlnAnglePsi"].between(-180, 180).all()
    np.testing.assert_allclose(p["rlnImagePixelSize"], 2.95, rtol=1e-6)
    assert (p["rlnImageSize"] == 180).all()
    assert (np.abs(origins_px(p)) < 90).all()
    assert p["rlnDefocusU"].between(5e3, 5e4).all() and (p["rlnDefocusU"] >= p["rlnDefocusV"]).all()
    assert p["rlnDefocusAngle"].between(-90, 90).all()
    assert set(p["rlnClassNumber"]) == {1} and set(p["rlnRandomSubset"]) == {1, 2}
    assert p["rlnVoltage"].eq(200).all() and len(table.optics) == 1
    records = np.load(path)
    np.testing.assert_allclose(origins_px(p), records["alignments3D/shift"], rtol=1e-6)
    euler = p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    relion = euler_to_matrix(torch.tensor(euler)).numpy()
    expmap = Rotation.from_rotvec(records["alignments3D/pose"].astype(np.float64)).as_matrix()
    np.testing.assert_allclose(relion, expmap.transpose(0, 2, 1), atol=1e-6)


def test_pose_convention_known_answers():
    """Known answers: a rotation vector about z by θ is rot + psi = θ with tilt 0; about y by
    90° is (rot, tilt, psi) = (0, 90, 0); RELION's matrix is the transposed rotation."""
    euler = cs_pose_to_euler(np.array([[0.0, 0.0, np.deg2rad(30.0)], [0.0, np.pi / 2, 0.0]]))
    assert euler[0, 1] == pytest.approx(0.0, abs=1e-9)
    assert euler[0, 0] + euler[0, 2] == pytest.approx(30.0)
    np.testing.assert_allclose(euler[1], [0.0, 90.0, 0.0], atol=1e-9)
    v = np.array([[0.3, -1.1, 0.7]])
    relion = euler_to_matrix(torch.from_numpy(cs_pose_to_euler(v))).numpy()[0]
    np.testing.assert_allclose(relion, Rotation.from_rotvec(v[0]).as_matrix().T, atol=1e-12)


def test_alignments2d_and_stack_root(tmp_path):
    """Synthetic 2D-classification .cs: psi = degrees(pose), origins = shift px × psize, class
    and half-set 1-based, '>' dropped from paths; stack_root as folder or as one stack file."""
    fields = _blob(3) | {
        "alignments2D/pose": np.array([0.0, np.pi / 2, -np.pi / 4], np.float32),
        "alignments2D/shift": np.array([[1, -2], [0, 0], [0.5, 3]], np.float32),
        "alignments2D/psize_A": np.full(3, 4.0, np.float32),
        "alignments2D/class": np.array([0, 5, 2], np.uint32),
        "ctf/df1_A": np.array([1e4, 2e4, 3e4], np.float32),
        "ctf/exp_group_id": np.zeros(3, np.uint32),
    }
    write_cs(tmp_path / "p.cs", fields)
    table = read_cs(tmp_path / "p.cs")
    p = table.particles
    np.testing.assert_allclose(p["rlnAnglePsi"], [0, 90, -45], atol=1e-5)
    np.testing.assert_allclose(p[["rlnOriginXAngst", "rlnOriginYAngst"]], [[4, -8], [0, 0], [2, 12]])
    assert p["rlnClassNumber"].tolist() == [1, 6, 3] and "rlnAngleTilt" not in p
    assert p["rlnImageName"].tolist() == [f"00000{i}@J1/imported/s.mrc" for i in (1, 2, 3)]
    assert table.image_locations()[0][0] == str(tmp_path / "J1" / "imported" / "s.mrc")
    assert read_cs(tmp_path / "p.cs", stack_root=tmp_path / "x").image_locations()[0][0] == str(
        tmp_path / "x" / "J1" / "imported" / "s.mrc"
    )
    stack = tmp_path / "all.mrcs"
    stack.write_bytes(b"")
    paths, indices = read_cs(tmp_path / "p.cs", stack_root=stack).image_locations()
    assert set(paths) == {str(stack)} and indices.tolist() == [0, 1, 2]


# ---- bad input --------------------------------------------------------------------------------


def test_missing_cs(tmp_path):
    with pytest.raises(InputError, match=r"none\.cs: no such cryoSPARC \.cs file"):
        read_cs(tmp_path / "none.cs")


def test_not_a_cs(tmp_path):
    (tmp_path / "t.cs").write_text("hello")
    with pytest.raises(InputError, match=r"t\.cs: not a readable cryoSPARC \.cs file"):
        read_cs(tmp_path / "t.cs")
    with open(tmp_path / "plain.cs", "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(InputError, match=r"plain\.cs: not a cryoSPARC \.cs file"):
        read_cs(tmp_path / "plain.cs")


def test_cs_without_required_field(tmp_path):
    fields = _blob(2)
    del fields["blob/idx"]
    write_cs(tmp_path / "p.cs", fields)
    with pytest.raises(InputError, match=r"p\.cs: no blob/idx field"):
        read_cs(tmp_path / "p.cs")


def test_cs_non_square_images(tmp_path):
    fields = _blob(2)
    fields["blob/shape"] = np.array([[16, 16], [16, 20]], np.uint32)
    write_cs(tmp_path / "p.cs", fields)
    with pytest.raises(InputError, match=r"p\.cs: particle 1 has blob/shape \(16, 20\).*square"):
        read_cs(tmp_path / "p.cs")
