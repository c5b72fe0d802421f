"""RELION STAR reading (3.0, 3.1, 4, several optics groups) against the real shared files, unit
normalisation, RELION-4 writing round trips, bad-input messages and atomic writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from ackmeans_torch.errors import InputError
from ackmeans_torch.io import star as star_module
from ackmeans_torch.io.star import (
    ParticleTable,
    origins_px,
    read_particles,
    with_origins_px,
    write_particles,
)


@pytest.fixture
def particles_dir(shared_data):
    return shared_data / "particles"


def test_relion30_units_ctf_and_images(particles_dir):
    """Known answers from the RELION 3.0 file (17 particles, no optics): pixel size =
    DetectorPixelSize·1e4/Magnification, origins px → Å, CTF and pose columns as in the file,
    images 000001..000017@sample.mrcs resolved next to the STAR file."""
    table = read_particles(particles_dir / "relion30_sample17" / "sample_relion_data.star")
    p = table.particles
    assert len(table) == 17
    pixel = 5.0 * 1e4 / 37369.207031
    np.testing.assert_allclose(p["rlnImagePixelSize"], pixel, rtol=1e-9)
    origins = p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()[:3]
    np.testing.assert_allclose(origins, np.array([[0.1996, 0.1996], [-0.0504, -0.0504], [0.1996, -0.0504]]) * pixel)
    np.testing.assert_allclose(origins_px(p)[:, 0], p["rlnOriginX"], rtol=1e-12)
    row = p.iloc[0]
    assert (row.rlnDefocusU, row.rlnDefocusV) == (21186.804688, 21363.109375)
    assert row.rlnDefocusAngle == 7.476096
    assert (row.rlnVoltage, row.rlnSphericalAberration, row.rlnAmplitudeContrast) == (300.0, 2.7, 0.1)
    assert (row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi) == (109.18664, 122.200343, 71.118492)
    assert list(p["rlnClassNumber"].iloc[:3]) == [1, 1, 1] and "rlnOriginX" in p  # original kept
    assert len(table.optics) == 1 and table.optics["rlnImagePixelSize"].iloc[0] == pytest.approx(pixel)
    paths, indices = table.image_locations()
    assert set(paths) == {str(particles_dir / "relion30_sample17" / "sample.mrcs")}
    assert indices.tolist() == list(range(17))


def test_relion31_optics_merged(particles_dir):
    """RELION 3.1 (5 particles): optics merged per particle, origins already in Å unchanged."""
    table = read_particles(particles_dir / "relion31_five" / "relion31.star")
    p = table.particles
    assert len(table) == 5
    assert (p["rlnImagePixelSize"] == 2.806).all() and (p["rlnVoltage"] == 300.0).all()
    assert (p["rlnSphericalAberration"] == 0.01).all() and (p["rlnImageSize"] == 256).all()
    assert p["rlnOriginXAngst"].tolist() == [0.019324, -0.25248, -0.65323, -0.00755, -0.33773]
    assert p["rlnDefocusU"].iloc[0] == 13108.082418
    np.testing.assert_allclose(origins_px(p)[0], [0.019324 / 2.806, -0.64686 / 2.806])
    assert table.image_locations()[1].tolist() == [0, 1, 2, 3, 4]


def test_relion31_v2_block_order_reads_the_same(particles_dir):
    """The v2 variant (particles block before optics) gives the same table."""
    a = read_particles(particles_dir / "relion31_five" / "relion31.star").particles
    b = read_particles(particles_dir / "relion31_five" / "relion31.v2.star").particles
    pd.testing.assert_frame_equal(a, b[a.columns])


def test_six_optics_groups_merged_per_particle(particles_dir):
    """6 optics groups, listed out of order: every particle carries its own group's values."""
    table = read_particles(particles_dir / "relion31_five" / "relion31.6opticsgroups.star")
    p, optics = table.particles, table.optics
    assert len(table) == 139 and len(optics) == 6
    assert p["rlnOpticsGroup"].value_counts().sort_index().tolist() == [48, 29, 5, 7, 26, 24]
    by_group = optics.set_index("rlnOpticsGroup")
    merged = ("rlnImagePixelSize", "rlnSphericalAberration", "rlnMicrographPixelSize", "rlnOpticsGroupName")
    for column in merged:
        expected = by_group.loc[p["rlnOpticsGroup"], column].to_numpy()
        assert (p[column].to_numpy() == expected).all(), column
    first = p.iloc[0]
    assert (first.rlnOpticsGroup, first.rlnOpticsGroupName) == (6, "opticsGroup6")
    assert first.rlnMicrographPixelSize == 1.035
    assert p.loc[p.rlnOpticsGroup == 4, "rlnSphericalAberration"].eq(2.6).all()
    assert p.loc[p.rlnOpticsGroup == 2, "rlnImagePixelSize"].eq(1.24).all()
    # RELION origins in Å divided by each particle's own pixel size
    np.testing.assert_allclose(origins_px(p)[0], [13.284554 / 1.25, -3.21701 / 1.25])


@pytest.mark.parametrize(
    "name",
    [
        "relion30_sample17/sample_relion_data.star",
        "relion31_five/relion31.star",
        "relion31_five/relion31.6opticsgroups.star",
        "empiar10076_seven/empiar_10076_7.star",
    ],
)
def test_write_read_round_trip_real_files(particles_dir, tmp_path, name):
    """Round trip: write_particles → read_particles keeps every rln column (numbers to 8
    significant digits), the optics groups and their numbers; the file is RELION 4 (version
    comment, data_optics + data_particles, origins in Å only)."""
    table = read_particles(particles_dir / name)
    out = tmp_path / "out.star"
    write_particles(out, table)
    back = read_particles(out)
    legacy = {"rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize"}
    expected_columns = {c for c in table.particles.columns if c not in legacy}
    expected_columns |= {"rlnImageDimensionality"}
    assert set(back.particles.columns) == expected_columns
    for column in expected_columns - {"rlnImageDimensionality"}:
        a, b = table.particles[column], back.particles[column]
        if pd.api.types.is_numeric_dtype(a):
            np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=1e-7, err_msg=column)
        else:
            assert (a.astype(str) == b.astype(str)).all(), column
    assert back.optics["rlnOpticsGroup"].tolist() == sorted(table.optics["rlnOpticsGroup"])
    text = out.read_text()
    assert text.count("# version 30001") == 2
    assert set(starfile.read(out, always_dict=True)) == {"optics", "particles"}


def test_write_derives_optics_groups_from_particle_values(tmp_path):
    """Round trip of a plain DataFrame (as the simulator writes): optics groups are the distinct
    optics values, a label RELION does not know is kept (as RELION keeps it), origins given in px
    are stored in Å."""
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@s.mrcs" for i in range(1, 5)],
            "rlnImagePixelSize": [1.5, 1.5, 2.0, 1.5],
            "rlnVoltage": 300.0,
            "rlnDefocusU": [1e4, 2e4, 3e4, 4e4],
            "centre_label": [0, 1, 2, 3],
        }
    )
    particles = with_origins_px(particles, np.array([[1.0, -2.0], [0, 0], [0.5, 0.25], [0, 3]]))
    write_particles(tmp_path / "p.star", particles)
    back = read_particles(tmp_path / "p.star")
    assert back.optics["rlnImagePixelSize"].tolist() == [1.5, 2.0]
    assert back.particles["rlnOpticsGroup"].tolist() == [1, 1, 2, 1]
    assert back.particles["centre_label"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(origins_px(back.particles), [[1, -2], [0, 0], [0.5, 0.25], [0, 3]])
    np.testing.assert_allclose(back.particles["rlnOriginXAngst"], [1.5, 0, 1.0, 0])
    with pytest.raises(InputError, match="'centre label' is not a STAR label"):
        write_particles(tmp_path / "q.star", particles.rename(columns={"centre_label":
                                                                        "centre label"}))


def test_origin_conversion_inverse():
    """Known answer: px → Å multiplies by each particle's pixel size, Å → px divides."""
    p = pd.DataFrame({"rlnImagePixelSize": [2.0, 0.5]})
    q = with_origins_px(p, np.array([[1.0, 2.0], [4.0, -8.0]]))
    assert q["rlnOriginXAngst"].tolist() == [2.0, 2.0] and q["rlnOriginYAngst"].tolist() == [4.0, -4.0]
    np.testing.assert_array_equal(origins_px(q), [[1.0, 2.0], [4.0, -8.0]])


def test_stack_root_relocates_images(particles_dir, tmp_path):
    table = read_particles(particles_dir / "relion31_five" / "relion31.star", stack_root=tmp_path)
    assert set(table.image_locations()[0]) == {str(tmp_path / "relion31.mrcs")}


# ---- bad input --------------------------------------------------------------------------------


def _star(tmp_path, text: str):
    path = tmp_path / "bad.star"
    path.write_text(text)
    return path


def test_missing_star_file(tmp_path):
    with pytest.raises(InputError, match=r"absent\.star: no such STAR file"):
        read_particles(tmp_path / "absent.star")


def test_star_without_image_name(tmp_path):
    path = _star(tmp_path, "data_particles\n\nloop_\n_rlnDefocusU\n_rlnImagePixelSize\n1000 1.0\n")
    with pytest.raises(InputError, match=r"bad\.star: data_particles has no rlnImageName column"):
        read_particles(path)
    path = _star(tmp_path, "data_\n\nloop_\n_rlnDefocusU\n1000\n")
    with pytest.raises(InputError, match=r"bad\.star: no particle block with an rlnImageName"):
        read_particles(path)


def test_star_without_pixel_size(tmp_path):
    path = _star(tmp_path, "data_\n\nloop_\n_rlnImageName\n_rlnMagnification\n1@s.mrcs 10000\n")
    with pytest.raises(InputError, match=r"bad\.star: no pixel size: .*missing: rlnDetectorPixelSize"):
        read_particles(path)


def test_star_optics_group_problems(tmp_path):
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n\n"
    path = _star(tmp_path, optics + "data_particles\n\nloop_\n_rlnImageName\n1@s.mrcs\n")
    with pytest.raises(InputError, match=r"bad\.star: data_particles has no rlnOpticsGroup column"):
        read_particles(path)
    particles = "data_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@s.mrcs 2\n"
    path = _star(tmp_path, optics + particles)
    with pytest.raises(InputError, match=r"bad\.star: particles refer to optics group\(s\) \[2\]"):
        read_particles(path)


def test_bad_image_name(tmp_path):
    loop = "data_\n\nloop_\n_rlnImageName\n_rlnImagePixelSize\n"
    path = _star(tmp_path, loop + "x@s.mrcs 1.0\n0@s.mrcs 1.0\n")
    table = read_particles(path)
    with pytest.raises(InputError, match=r"bad\.star: particle 0 has rlnImageName 'x@s\.mrcs'"):
        table.image_locations()
    table.particles = table.particles.iloc[1:]
    with pytest.raises(InputError, match=r"bad\.star: particle 0 .*'0@s\.mrcs'; image numbers are 1-b"):
        table.image_locations()


def test_write_needs_pixel_size(tmp_path):
    with pytest.raises(InputError, match=r"p\.star: no pixel size"):
        write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": ["1@s.mrcs"]}))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    """A STAR write that fails half-way leaves nothing under the final name (nor a temp file)."""

    def partial_then_fail(data, filename, **kwargs):
        open(filename, "w").write("data_optics\n")
        raise OSError("disk full")

    monkeypatch.setattr(star_module.starfile, "write", partial_then_fail)
    particles = pd.DataFrame({"rlnImageName": ["1@s.mrcs"], "rlnImagePixelSize": [1.0]})
    with pytest.raises(OSError, match="disk full"):
        write_particles(tmp_path / "p.star", particles)
    assert list(tmp_path.iterdir()) == []


def test_from_particles_is_a_table():
    """A merged frame without optics gets group 1 and images resolved against image_root."""
    table = ParticleTable.from_particles(
        pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnImagePixelSize": [1.0]}),
        source="x.star",
        image_root="/data",
    )
    assert table.particles["rlnOpticsGroup"].tolist() == [1]
    assert table.image_locations()[0].tolist() == ["/data/a.mrcs"]


# ---- RELION project paths, bad bytes and numbers, deterministic writing ------------------------


def test_relative_images_resolve_in_the_project_dir_then_the_star_folder(tmp_path, monkeypatch):
    """Known answer: RELION's project-relative name is found from the project directory (the
    current one by default, or project_dir=); a name only valid next to the STAR falls back to
    the STAR's folder; stack_root replaces both."""
    (tmp_path / "Extract" / "job005").mkdir(parents=True)
    (tmp_path / "Extract" / "job005" / "x.mrcs").write_bytes(b"")
    (tmp_path / "Extract" / "job005" / "near.mrcs").write_bytes(b"")
    star = tmp_path / "Extract" / "job005" / "particles.star"
    write_particles(star, pd.DataFrame({
        "rlnImageName": ["000001@Extract/job005/x.mrcs", "000002@near.mrcs"],
        "rlnImagePixelSize": 1.0}))
    expected = [str(tmp_path / "Extract" / "job005" / "x.mrcs"),
                str(tmp_path / "Extract" / "job005" / "near.mrcs")]
    monkeypatch.chdir(tmp_path)
    assert read_particles("Extract/job005/particles.star").image_locations()[0].tolist() == expected
    monkeypatch.chdir(tmp_path / "Extract")
    assert read_particles(star, project_dir=tmp_path).image_locations()[0].tolist() == expected
    table = read_particles(star)
    assert table.image_roots() == [tmp_path / "Extract", tmp_path / "Extract" / "job005"]
    relocated = read_particles(star, stack_root=tmp_path / "elsewhere")
    assert relocated.image_roots() == [tmp_path / "elsewhere"]


def test_written_image_names_are_kept_as_given(tmp_path):
    names = ["000001@Extract/job005/Movies/x.mrcs", "7@/abs/y.mrcs"]
    write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": names,
                                                       "rlnImagePixelSize": 1.0}))
    assert starfile.read(tmp_path / "p.star")["particles"]["rlnImageName"].tolist() == names


def test_non_number_in_a_numeric_column_names_column_row_and_line(tmp_path):
    path = _star(tmp_path, "data_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n"
                 "1@s.mrcs 1000\n2@s.mrcs 1e4x\n3@s.mrcs 1200\n")
    with pytest.raises(InputError, match=r"bad\.star: rlnDefocusU holds '1e4x' at row 2 of "
                                         r"data_, line 7; expected a number"):
        read_particles(path)
    # a column RELION does not list is numeric when most of it is numbers
    path = _star(tmp_path, "data_\n\nloop_\n_rlnImageName\n_rlnCustomScore\n_rlnMicrographName\n"
                 "1@s.mrcs 0.5 a.mrc\n2@s.mrcs bad b.mrc\n")
    with pytest.raises(InputError, match=r"rlnCustomScore holds 'bad' at row 2"):
        read_particles(path)


def test_non_utf8_byte_and_directory_are_named(tmp_path):
    path = tmp_path / "bad.star"
    path.write_bytes(b"data_\n\nloop_\n_rlnImageName\n_rlnImagePixelSize\n1@s\xffmrcs 1.0\n")
    with pytest.raises(InputError, match=r"bad\.star: line 6 holds the byte 0xff, which is not "
                                         r"UTF-8 text"):
        read_particles(path)
    with pytest.raises(InputError, match=r": is a directory, not a STAR file"):
        read_particles(tmp_path)


def test_writes_are_byte_identical_and_carry_no_time(tmp_path):
    frame = pd.DataFrame({"rlnImageName": ["1@s.mrcs"], "rlnImagePixelSize": 1.0})
    write_particles(tmp_path / "a.star", frame)
    write_particles(tmp_path / "b.star", frame)
    text = (tmp_path / "a.star").read_text()
    assert (tmp_path / "b.star").read_bytes() == (tmp_path / "a.star").read_bytes()
    assert "Created by" not in text and text.startswith("# version 30001\n\ndata_optics")
    assert text.count("# version 30001") == 2
