"""Micrographs on disk: MRC (memory-mapped), TIFF, JPEG/PNG images and RELION micrographs STAR files.

Conventions (this module owns them):

* A micrograph is an ``(H, W) float32`` array in the file's row order: for MRC and TIFF row ``y``
  and column ``x`` are RELION's ``rlnCoordinateY``/``rlnCoordinateX`` (pixel indices from 0);
  8-bit PNG/JPEG exports are stored top-down, so their rows run the other way (the consensus
  overlay's ``image_y_flipped``); they are read as they are, colour as grey (luma).
* The micrograph's name is its file stem (``mic_1.mrc`` → ``mic_1``), the key by which picks are
  paired (``io/coords.py``). Two micrographs of one stem in a source are an error.
* Names in a micrographs STAR are RELION's: relative to the RELION project directory, looked up
  first there (the current directory) and then in the STAR file's folder.
* Pixel size in Å; ``None`` when unknown (a JPEG, an MRC header without one).
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output

#: suffix -> reader kind, for folders and globs of micrographs.
IMAGE_SUFFIXES = {".mrc": "mrc", ".mrcs": "mrc", ".tif": "tiff", ".tiff": "tiff", ".jpg": "pil", ".jpeg": "pil",
                  ".png": "pil"}
#: RELION's CTF labels a :class:`Micrograph` carries (defocus Å, angle degrees, kV, mm, fraction).
CTF_KEYS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
            "rlnAmplitudeContrast")


def _kind(path: Path) -> str:
    kind = IMAGE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown micrograph suffix {path.suffix!r}; give one of "
                         f"{', '.join(IMAGE_SUFFIXES)}")
    return kind


def _mrc_layout(path: Path) -> tuple[np.dtype, tuple[int, ...], int, float | None]:
    """(dtype, shape, data offset in bytes, pixel size Å or None) from the MRC header alone."""
    import mrcfile

    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            header = mrc.header
            dtype = mrcfile.utils.data_dtype_from_header(header)
            shape = mrcfile.utils.data_shape_from_header(header)
            offset = header.nbytes + int(header.nsymbt)
            pixel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable MRC micrograph ({exc})".splitlines()[0]) from None
    if dtype.kind == "c":
        raise InputError(f"{path}: MRC holds complex values; give a real-space micrograph")
    return dtype, shape, offset, (pixel if pixel > 0 else None)


def read_micrograph(path: str | os.PathLike) -> np.ndarray:
    """One micrograph as ``(H, W) float32``. MRC float32 data is memory-mapped (read-only; only
    the rows used are read), other MRC modes are converted; an MRC stack gives its first frame.
    TIFF via tifffile (first page), PNG/JPEG via Pillow (grey). NaN/Inf pixels are refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"micrograph {path} does not exist; check the path")
    kind = _kind(path)
    if kind == "mrc":
        dtype, shape, offset, _ = _mrc_layout(path)
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size < expected:
            raise InputError(f"{path}: file is {path.stat().st_size} bytes, its header needs {expected}; "
                             "the micrograph is truncated")
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        image = data[0] if data.ndim == 3 else data
        if image.dtype != np.float32:
            image = image.astype(np.float32)
    elif kind == "tiff":
        import tifffile

        try:
            image = np.asarray(tifffile.imread(path, key=0), dtype=np.float32)
        except (ValueError, OSError, tifffile.TiffFileError) as exc:
            raise InputError(f"{path}: not a readable TIFF ({exc})".splitlines()[0]) from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("F"), dtype=np.float32)  # colour -> ITU-R 601 luma
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})".splitlines()[0]) from None
    if image.ndim != 2:
        raise InputError(f"{path}: image has shape {image.shape}; expected a 2D micrograph (H, W)")
    if not np.isfinite(image).all():
        raise InputError(f"{path}: micrograph holds NaN or Inf pixels; repair the file")
    return image


def micrograph_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a micrograph file from its header, without reading the pixels."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"micrograph {path} does not exist; check the path")
    kind = _kind(path)
    if kind == "mrc":
        shape = _mrc_layout(path)[1]
    elif kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    else:
        from PIL import Image

        with Image.open(path) as im:
            shape = (im.height, im.width)
    return int(shape[-2]), int(shape[-1])


@dataclass(frozen=True)
class Micrograph:
    """One micrograph: ``name`` (the stem picks are paired by), ``path`` (None for one held in
    memory, ``data``), ``pixel_size`` Å (None: unknown) and ``ctf`` (RELION's :data:`CTF_KEYS`
    → value, or None when unknown)."""

    name: str
    path: Path | None = None
    pixel_size: float | None = None
    ctf: dict[str, float] | None = None
    data: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path is None and self.data is None:
            raise InputError(f"micrograph {self.name!r}: give a path or the data")
        if self.ctf is not None and set(self.ctf) != set(CTF_KEYS):
            raise InputError(f"micrograph {self.name!r}: ctf keys {sorted(self.ctf)}; expected {list(CTF_KEYS)}")

    def load(self) -> np.ndarray:
        """The pixels ``(H, W) float32`` (see :func:`read_micrograph`)."""
        return self.data if self.data is not None else read_micrograph(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W), from the header when the micrograph is a file."""
        return tuple(self.data.shape) if self.data is not None else micrograph_shape(self.path)


def read_micrographs(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Micrograph]:
    """Micrographs of ``source``, sorted by name: a RELION micrographs STAR (``*.star``, e.g.
    ``micrographs_ctf.star``: ``rlnMicrographName``, pixel size and CTF from its optics and
    micrograph columns), a folder (its files with a suffix of :data:`IMAGE_SUFFIXES`), a glob
    pattern, or a list of files. Image files give the MRC header's pixel size and no CTF."""
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p) for p in source]
    else:
        text = os.fspath(source)
        if text.lower().endswith(".star"):
            return _sorted_unique(_from_star(Path(text)), text)
        if Path(text).is_dir():
            paths = sorted(p for p in Path(text).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        else:
            paths = [Path(p) for p in sorted(glob.glob(text))]
            if not paths and not glob.has_magic(text):
                raise InputError(f"micrographs={text}: no such file or folder")
        if not paths:
            raise InputError(f"micrographs={text}: no micrographs ({', '.join(IMAGE_SUFFIXES)}) found there")
    mics = []
    for p in paths:
        if not p.is_file():
            raise InputError(f"micrograph {p} does not exist; check the path")
        pixel = _mrc_layout(p)[3] if _kind(p) == "mrc" else None
        mics.append(Micrograph(p.stem, p, pixel, None))
    return _sorted_unique(mics, os.fspath(source) if isinstance(source, (str, os.PathLike)) else "micrographs")


def _sorted_unique(mics: list[Micrograph], where: str) -> list[Micrograph]:
    seen: dict[str, Micrograph] = {}
    for m in mics:
        if m.name in seen:
            raise InputError(f"{where}: micrographs {seen[m.name].path} and {m.path} share the name {m.name!r}; "
                             "picks are paired by file stem, so keep one")
        seen[m.name] = m
    return [seen[n] for n in sorted(seen)]


def _from_star(path: Path) -> list[Micrograph]:
    from ackmeans_torch.io.star import read_star

    if not path.is_file():
        raise InputError(f"micrographs STAR {path} does not exist")
    blocks = read_star(path)
    table = next((t for t in blocks.values() if hasattr(t, "columns") and "rlnMicrographName" in t.columns), None)
    if table is None:
        raise InputError(f"{path}: no table with a _rlnMicrographName column; give RELION's micrographs STAR")
    optics = blocks.get("optics")
    if optics is not None and hasattr(optics, "columns") and "rlnOpticsGroup" in table.columns:
        shared = [c for c in optics.columns if c in table.columns and c != "rlnOpticsGroup"]
        table = table.merge(optics.drop(columns=shared), on="rlnOpticsGroup", how="left")
    mics = []
    for row in table.to_dict("records"):
        name = str(row["rlnMicrographName"])
        pixel = row.get("rlnMicrographPixelSize", row.get("rlnImagePixelSize"))
        if pixel is None and "rlnDetectorPixelSize" in row and "rlnMagnification" in row:
            pixel = float(row["rlnDetectorPixelSize"]) * 1e4 / float(row["rlnMagnification"])
        ctf = ({k: float(row[k]) for k in CTF_KEYS} if all(k in row and row[k] == row[k] for k in CTF_KEYS)
               else None)
        mics.append(Micrograph(posixpath.splitext(posixpath.basename(name))[0], _resolve(name, path),
                               None if pixel is None or not float(pixel) > 0 else float(pixel), ctf))
    return mics


def _resolve(name: str, star: Path) -> Path:
    """A micrograph name of a STAR file: from the project directory (cwd), else the STAR's folder."""
    for candidate in (Path(name), star.parent / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"{star}: micrograph {name} is neither in the current (RELION project) directory nor "
                     f"beside the STAR file; run from the project directory")


def project_path(path: str | os.PathLike) -> str:
    """``path`` as RELION resolves it from its project directory, taken to be the working directory
    (RELION runs there); absolute when ``path`` lies outside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_micrograph(path: str | os.PathLike, image: np.ndarray, pixel_size: float) -> None:
    """Write ``image (H, W)`` as a float32 MRC micrograph with ``pixel_size`` Å, atomically."""
    import mrcfile

    data = np.ascontiguousarray(image, dtype=np.float32)
    if data.ndim != 2:
        raise InputError(f"{path}: a micrograph is (H, W), got shape {data.shape}")
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = pixel_size
            mrc.update_header_stats()
