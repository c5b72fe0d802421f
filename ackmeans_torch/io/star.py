"""RELION particle STAR files (3.0, 3.1, 4) via ``starfile``, into one :class:`ParticleTable`.

Conventions (this module owns them):

* Column names are RELION's without the leading underscore (``rlnDefocusU``, ...). In a
  :class:`ParticleTable` the optics table is merged into the particles (one row per particle
  carries its pixel size, voltage, Cs, ...); a value given per particle wins over its optics group.
* Units are normalised on reading, keeping the file's own columns as they were:
  ``rlnImagePixelSize`` (Å) is always present (RELION 3.0 files give it as
  ``rlnDetectorPixelSize · 10⁴ / rlnMagnification``, detector pixel in µm), and origins are
  always in Å as ``rlnOriginXAngst``/``rlnOriginYAngst`` (RELION 3.0's ``rlnOriginX``/``Y`` are in
  pixels; 0 when the file has no origins). :func:`origins_px` and :func:`with_origins_px` are the
  only px↔Å conversion of origins in the project; they keep RELION's sign (the sign relative to
  image content is owned by ``ops.projection.relion_origin_to_shift``).
* ``NNNNNN@stack.mrcs`` names image ``NNNNNN`` (1-based) of ``stack.mrcs``. RELION writes stack
  paths relative to its *project directory* (``000001@Extract/job005/Movies/x.mrcs``; every RELION
  program runs from there), so a relative stack path is looked up first in the project directory
  (``project_dir``, default: the current directory) and then in the STAR file's folder (files
  written next to their stacks); a ``stack_root`` replaces both. :meth:`ParticleTable.image_locations`
  gives absolute paths and 0-based indices. Whether the stacks exist and hold those indices is
  checked when the images are opened (:class:`~ackmeans_torch.data.stack.StackSource`, headers
  only), so metadata-only STAR files (poses without images) can still be read.
* Reading refuses, in one line naming the file and the place: a directory, a byte that is not
  UTF-8 (line number), and a value that is not a number in a numeric column (column, particle row
  and line number). A column counts as numeric when RELION defines it so (the columns this
  project uses) or when some of its values are numbers.
* :func:`write_particles` writes RELION 4 (``data_optics`` + ``data_particles``, origins in Å),
  atomically, every column under its own name: a label RELION does not know (``_aspireAmplitude``
  from another package) is kept, as RELION 3.1's own programs keep it ("will ignore (but
  maintain) values for the unknown label"), so a file passed through this project loses no
  metadata (a name with a space, which no STAR label can hold, is refused). Image names are
  written as they are in the table. :func:`write_star` is the one STAR writer: RELION's
  ``# version 30001`` before each block and no time stamp, so the same table gives the same bytes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from pandas.api.types import is_numeric_dtype

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output

#: RELION labels that belong to an optics group (data_optics) rather than to a particle.
OPTICS_COLUMNS = (
    "rlnOpticsGroupName",
    "rlnAmplitudeContrast",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnCtfDataArePhaseFlipped",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
)

# RELION 3.0 unit columns superseded by rlnImagePixelSize and rlnOrigin{X,Y}Angst. They are kept
# in the table as read but not written: RELION 4 uses the Å columns, and a stale pixel-unit copy
# next to updated Å origins would contradict them.
_LEGACY_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize")

#: Columns RELION defines as numbers that this project reads: any other value in them is an error.
NUMERIC_COLUMNS = frozenset((
    "rlnOpticsGroup", "rlnClassNumber", "rlnGroupNumber", "rlnRandomSubset", "rlnImageSize",
    "rlnImageDimensionality", "rlnImagePixelSize", "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnDefocusU", "rlnDefocusV",
    "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor",
    "rlnCtfDataArePhaseFlipped", "rlnCtfDataAreCtfPremultiplied", "rlnAngleRot", "rlnAngleTilt",
    "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst",
    "rlnCoordinateX", "rlnCoordinateY", "rlnNormCorrection", "rlnBeamTiltClass", "rlnIsFlip",
))

# A STAR label as written after its underscore: a run of non-space characters (a space would
# split it into two labels on reading).
_LABEL = re.compile(r"[^\s_]\S*")

# RELION's text labels end like this (rlnImageName, rlnCtfImage, rlnMicrographDefectFile,
# rlnOddZernike, rlnMicrographMetadata, ...): a number among them is a valid name.
_TEXT_LABEL = re.compile(r"(Name|Image|File|Zernike|Metadata|SymmetryGroup|Comment|Spectrum)$")


@dataclass
class ParticleTable:
    """Particles with optics merged per particle, as read from a STAR or cryoSPARC file.

    ``particles``: one row per image, RELION-4 column names without the underscore, units
    normalised (see module docstring). ``optics``: one row per optics group (``rlnOpticsGroup``
    plus the optics columns). ``source``: the file read. ``image_root``: the folder that relative
    image paths in ``rlnImageName`` are looked up in first (the project directory, or
    ``stack_root``); ``fallback_root``: where they are looked up when absent there (the STAR file's
    folder; None: nowhere else).
    """

    particles: pd.DataFrame
    optics: pd.DataFrame
    source: Path
    image_root: Path
    fallback_root: Path | None = None

    def __len__(self) -> int:
        return len(self.particles)

    @classmethod
    def from_particles(
        cls, particles: pd.DataFrame, *, source: str | os.PathLike, image_root: str | os.PathLike
    ) -> ParticleTable:
        """A table from particles that already carry their optics columns (RELION 3.0 files,
        cryoSPARC, bare stacks): units are normalised and the optics table is derived."""
        source = Path(source)
        particles = _normalise_units(particles.reset_index(drop=True), source)
        optics, grouped = split_optics(particles)
        groups = grouped["rlnOpticsGroup"]
        names = groups.map(optics.set_index("rlnOpticsGroup")["rlnOpticsGroupName"])
        particles = particles.assign(
            rlnOpticsGroup=groups.to_numpy(), rlnOpticsGroupName=names.to_numpy()
        )
        return cls(particles, optics, source, Path(image_root))

    def image_roots(self) -> list[Path]:
        """The absolute folders a relative stack path is looked up in, in order."""
        roots = [self.image_root, *([self.fallback_root] if self.fallback_root else [])]
        return list(dict.fromkeys(Path(os.path.abspath(r)) for r in roots))

    def resolve_stack(self, name: str) -> str:
        """The absolute path of stack ``name``: the first of :meth:`image_roots` that holds it, or
        the first one when none does (opening it then reports every place tried)."""
        if os.path.isabs(name):
            return os.path.normpath(name)
        candidates = [os.path.normpath(os.path.join(root, name)) for root in self.image_roots()]
        return next((c for c in candidates if os.path.isfile(c)), candidates[0])

    def image_locations(self) -> tuple[np.ndarray, np.ndarray]:
        """Absolute stack path (``(N,)`` array of str) and 0-based image index (``(N,)`` int64)
        of every particle, from ``rlnImageName`` (``NNNNNN@path``, 1-based; a name without ``@``
        is the file's only image)."""
        if "rlnImageName" not in self.particles:
            raise InputError(f"{self.source}: no rlnImageName column; the particles have no images")
        names = self.particles["rlnImageName"].astype(str)
        parts = names.str.partition("@")
        has_at = parts[1] == "@"
        numbers = parts[0].where(has_at, "1")
        paths = parts[2].where(has_at, parts[0])
        valid = numbers.str.fullmatch(r"\s*\d+\s*")
        if not valid.all():
            row = int(np.flatnonzero(~valid.to_numpy())[0])
            raise InputError(
                f"{self.source}: particle {row} has rlnImageName {names.iloc[row]!r}; "
                "expected NNNNNN@stack.mrcs"
            )
        indices = numbers.astype(np.int64).to_numpy() - 1
        if (indices < 0).any():
            row = int(np.flatnonzero(indices < 0)[0])
            raise InputError(
                f"{self.source}: particle {row} has rlnImageName {names.iloc[row]!r}; "
                "image numbers are 1-based"
            )
        unique, codes = np.unique(paths.to_numpy(dtype=str), return_inverse=True)
        resolved = np.array([self.resolve_stack(p) for p in unique], dtype=object)
        return resolved[codes], indices


def origins_px(particles: pd.DataFrame) -> np.ndarray:
    """Origins ``(N, 2)`` (x, y) in pixels from ``rlnOriginXAngst``/``YAngst`` and
    ``rlnImagePixelSize`` (Å/px)."""
    pixel = particles["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    if (pixel <= 0).any():
        raise InputError("rlnImagePixelSize must be > 0 to express origins in pixels")
    angst = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    return angst / pixel[:, None]


def with_origins_px(particles: pd.DataFrame, origins: np.ndarray) -> pd.DataFrame:
    """A copy of ``particles`` with ``rlnOriginXAngst``/``YAngst`` set from ``origins``
    ``(N, 2)`` (x, y) in pixels, using each particle's ``rlnImagePixelSize`` (Å/px)."""
    origins = np.asarray(origins, dtype=np.float64)
    if origins.shape != (len(particles), 2):
        raise InputError(f"origins must have shape ({len(particles)}, 2), got {origins.shape}")
    pixel = particles["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    if ((pixel <= 0) & (origins != 0).any(axis=1)).any():
        raise InputError("rlnImagePixelSize must be > 0 to store origins in Å; set the pixel size")
    return particles.assign(
        rlnOriginXAngst=origins[:, 0] * pixel, rlnOriginYAngst=origins[:, 1] * pixel
    )


def _normalise_units(particles: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Add ``rlnImagePixelSize`` and ``rlnOriginXAngst``/``YAngst`` where the file lacks them."""
    if "rlnImagePixelSize" not in particles:
        missing = [c for c in ("rlnDetectorPixelSize", "rlnMagnification") if c not in particles]
        if missing:
            raise InputError(
                f"{path}: no pixel size: needs rlnImagePixelSize (optics) or "
                f"rlnDetectorPixelSize and rlnMagnification (missing: {', '.join(missing)})"
            )
        detector_um = particles["rlnDetectorPixelSize"].to_numpy(dtype=np.float64)
        magnification = particles["rlnMagnification"].to_numpy(dtype=np.float64)
        particles = particles.assign(rlnImagePixelSize=detector_um * 1e4 / magnification)
    if "rlnOriginXAngst" not in particles or "rlnOriginYAngst" not in particles:
        if "rlnOriginX" in particles and "rlnOriginY" in particles:
            origins = particles[["rlnOriginX", "rlnOriginY"]].to_numpy(dtype=np.float64)
        else:
            origins = np.zeros((len(particles), 2))
        particles = with_origins_px(particles, origins)
    return particles


def _group_numbers(particles: pd.DataFrame) -> np.ndarray:
    """1-based optics-group number of every particle: one group per distinct combination of the
    optics columns present (and of ``rlnOpticsGroup`` when given)."""
    keys = [c for c in ("rlnOpticsGroup", *OPTICS_COLUMNS) if c in particles]
    if not keys:
        return np.ones(len(particles), dtype=np.int64)
    codes = particles.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    return codes.astype(np.int64) + 1


def split_optics(
    particles: pd.DataFrame, optics_columns: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a merged particle table into ``(optics, particles)`` as RELION 3.1+ stores them.

    Optics columns are :data:`OPTICS_COLUMNS` plus ``optics_columns``. The file's group numbers
    are kept when each group has one set of optics values; otherwise (or when there are none)
    groups are numbered 1.. in order of first appearance.
    """
    candidates = dict.fromkeys([*OPTICS_COLUMNS, *(optics_columns or [])])
    columns = [c for c in candidates if c in particles and c != "rlnOpticsGroup"]
    groups = _group_numbers(particles)
    if "rlnOpticsGroup" in particles:
        given = particles["rlnOpticsGroup"].to_numpy()
        if pd.Series(groups).groupby(given).nunique().max() == 1:
            groups = given.astype(np.int64)
    particles = particles.assign(rlnOpticsGroup=groups)
    optics = particles.drop_duplicates("rlnOpticsGroup")[["rlnOpticsGroup", *columns]]
    optics = optics.sort_values("rlnOpticsGroup").reset_index(drop=True)
    if "rlnOpticsGroupName" not in optics:
        names = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
        optics.insert(1, "rlnOpticsGroupName", names)
    return optics, particles.drop(columns=columns)


def _data_line(path: Path, block: str, row: int) -> int | None:
    """1-based line number in ``path`` of data row ``row`` (0-based) of loop block ``block``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        at = lines.index(f"data_{block}")
    except ValueError:
        return None
    seen = -1
    for number, line in enumerate(lines[at + 1:], start=at + 2):
        text = line.strip()
        if not text or text.startswith(("#", "_", "loop_")):
            continue
        if text.startswith("data_"):
            return None
        seen += 1
        if seen == row:
            return number
    return None


def _check_numbers(path: Path, name: str, block: pd.DataFrame) -> None:
    """Refuse a value that is not a number in a numeric column of ``block`` (module docstring)."""
    for column in block.columns:
        values = block[column]
        if is_numeric_dtype(values) or not str(column).startswith("rln"):
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna()
        numeric = column in NUMERIC_COLUMNS or (
            not _TEXT_LABEL.search(str(column)) and not bad.all())
        if numeric and bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            line = _data_line(path, name, row)
            where = f"row {row + 1} of data_{name}" + (f", line {line}" if line else "")
            raise InputError(f"{path}: {column} holds {values.iloc[row]!r} at {where}; "
                             "expected a number")


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """Every block of a STAR file (a loop as a DataFrame, a key-value block as a dict), checked as
    the module docstring says; for particle, model and selection files alike."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a STAR file; give the .star file in it")
    if not path.is_file():
        raise InputError(f"{path}: no such STAR file; check the path")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"{path}: line {line} holds the byte 0x{raw[error.start]:02x}, which is "
                         "not UTF-8 text; re-save the file as plain text") from error
    del raw
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # starfile raises assorted parser errors on malformed text
        raise InputError(f"{path}: not a readable STAR file ({error})") from error
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            _check_numbers(path, name, block)
    return blocks


def read_particles(
    path: str | os.PathLike, *, stack_root: str | os.PathLike | None = None,
    project_dir: str | os.PathLike | None = None,
) -> ParticleTable:
    """Read a RELION 3.0, 3.1 or 4 particle STAR file into a :class:`ParticleTable`.

    The particles are the ``data_particles`` block, or (RELION 3.0, any block name) the block
    with ``rlnImageName``. ``data_optics``, when present, is merged per particle by
    ``rlnOpticsGroup``. Relative image paths are looked up in ``project_dir`` (default: the
    current directory), then in the STAR file's folder; ``stack_root`` replaces both. Raises
    :class:`InputError` naming the file and the missing column.
    """
    path = Path(path)
    blocks = {k: v for k, v in read_star(path).items() if isinstance(v, pd.DataFrame)}
    if "particles" in blocks:
        particles = blocks["particles"]
    else:
        with_images = [b for b in blocks.values() if "rlnImageName" in b]
        if not with_images:
            raise InputError(f"{path}: no particle block with an rlnImageName column")
        particles = with_images[0]
    if "rlnImageName" not in particles:
        raise InputError(f"{path}: data_particles has no rlnImageName column")
    if stack_root is not None:
        image_root, fallback = Path(stack_root), None
    else:
        image_root = Path(project_dir) if project_dir is not None else Path.cwd()
        fallback = path.parent
    optics = blocks.get("optics")
    if optics is None:
        table = ParticleTable.from_particles(particles, source=path, image_root=image_root)
        table.fallback_root = fallback
        return table
    for frame, block in ((particles, "data_particles"), (optics, "data_optics")):
        if "rlnOpticsGroup" not in frame:
            raise InputError(f"{path}: {block} has no rlnOpticsGroup column")
    unknown = sorted(set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"]))
    if unknown:
        raise InputError(f"{path}: particles refer to optics group(s) {unknown} not in data_optics")
    shared = [c for c in optics.columns if c in particles and c != "rlnOpticsGroup"]
    merged = particles.merge(optics.drop(columns=shared), on="rlnOpticsGroup", how="left")
    merged = _normalise_units(merged, path)
    return ParticleTable(merged, optics.reset_index(drop=True), path, image_root, fallback)


def write_particles(
    path: str | os.PathLike,
    table_or_particles: ParticleTable | pd.DataFrame,
    optics: pd.DataFrame | None = None,
) -> None:
    """Write a RELION 4 particle STAR file (``data_optics`` + ``data_particles``) atomically.

    ``table_or_particles`` is a :class:`ParticleTable` or a merged particle DataFrame (optics
    columns per particle). ``optics`` (or the table's own) only adds columns to treat as optics
    columns; the written groups come from the particle values, so edits to them are kept.
    Needs ``rlnImagePixelSize`` (or RELION 3.0's detector pixel and magnification).
    """
    path = Path(path)
    if isinstance(table_or_particles, ParticleTable):
        particles = table_or_particles.particles
        optics = table_or_particles.optics if optics is None else optics
    else:
        particles = table_or_particles
    bad = [c for c in particles.columns if not isinstance(c, str) or not _LABEL.fullmatch(c)]
    if bad:
        raise InputError(f"{path}: column {bad[0]!r} is not a STAR label (a name without spaces)")
    particles = _normalise_units(particles.reset_index(drop=True), path)
    particles = particles.drop(columns=[c for c in _LEGACY_COLUMNS if c in particles])
    if "rlnImageDimensionality" not in particles:
        particles = particles.assign(rlnImageDimensionality=2)
    extra = [c for c in (optics.columns if optics is not None else []) if c != "rlnOpticsGroup"]
    optics_block, particle_block = split_optics(particles, extra)
    write_star(path, {"optics": optics_block, "particles": particle_block})


def write_star(path: str | os.PathLike, blocks: dict[str, pd.DataFrame | dict], *,
               float_format: str = "%.8g") -> None:
    """Write STAR ``blocks`` (name → loop DataFrame, or dict for a key-value block) atomically,
    with RELION's ``# version 30001`` before each block (RELION tells its 3.1+ format by it) and
    without starfile's time-stamped first line, so equal tables give equal bytes."""
    with atomic_output(Path(path)) as tmp:
        starfile.write(blocks, tmp, float_format=float_format)
        text = tmp.read_text()
        text = re.sub(r"\A# Created by the starfile Python package[^\n]*\n+", "", text)
        tmp.write_text(re.sub(r"^(data_\S*)$", r"# version 30001\n\n\1", text, flags=re.M))
