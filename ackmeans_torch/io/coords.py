"""Particle-picker coordinate files: EMAN BOX, crYOLO CBOX, Topaz TSV, RELION coordinate STAR, CSV,
and RELION's autopick layout (per-micrograph ``*_autopick.star`` beside an ``autopick.star`` index).

Every reader returns a :class:`PickSet`: box **centres** in pixels ``(n, 2)`` float64 (x, y) in the
file's own frame, a per-box square size ``(n,)`` in pixels and a per-box score ``(n,)``. Corner
formats (BOX, CBOX: ``x y`` is the lower-left corner of a ``w × h`` box) are converted with
``centre = corner + size / 2``; centre formats (Topaz, RELION, CSV) carry no size, so the caller's
``box_size`` is used. A file without scores gets score 1 for every box (REPIC 0.2.1 does the same)
and ``has_scores=False``.

Micrographs are paired across pickers by the exact file stem (``mic_1`` and ``mic_10`` are
different micrographs); :func:`collect_picker_files` and :func:`pair_micrographs` own that rule.
Malformed numbers raise :class:`~ackmeans_torch.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output

#: file suffix -> format name, used when ``fmt="auto"``.
SUFFIX_FORMATS = {".box": "box", ".cbox": "cbox", ".star": "star", ".tsv": "topaz", ".txt": "topaz",
                  ".csv": "csv"}
FORMATS = ("box", "cbox", "star", "topaz", "csv")


@dataclass(frozen=True)
class PickSet:
    """Picked boxes of one micrograph by one picker.

    centres: (n, 2) float64, box centres (x, y) in pixels. box_size: (n,) float64 side of the square
    box in pixels. scores: (n,) float64 picker confidence (any real scale). has_scores: whether the
    file carried scores (else all 1).
    """

    centres: np.ndarray
    box_size: np.ndarray
    scores: np.ndarray
    has_scores: bool = True

    def __post_init__(self) -> None:
        n = len(self.centres)
        if self.centres.shape != (n, 2) or self.box_size.shape != (n,) or self.scores.shape != (n,):
            raise InputError(
                f"PickSet shapes centres={self.centres.shape}, box_size={self.box_size.shape}, "
                f"scores={self.scores.shape}; expected (n, 2), (n,), (n,)")

    def __len__(self) -> int:
        return len(self.centres)

    @classmethod
    def empty(cls) -> PickSet:
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), has_scores=False)

    @property
    def corners(self) -> np.ndarray:
        """(n, 2) lower-left corners (x, y) in pixels, as EMAN BOX writes them."""
        return self.centres - self.box_size[:, None] / 2


def _float(token: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"{path}:{line}: {what} {token!r} is not a number; fix or remove that line") from None
    if not math.isfinite(value):
        raise InputError(f"{path}:{line}: {what} {token!r} is not finite; fix or remove that line")
    return value


def _need_box_size(box_size: float | None, path: Path) -> float:
    if box_size is None or not box_size > 0:
        raise InputError(f"{path}: this format stores centres without a box size; give box_size (px) > 0")
    return float(box_size)


def read_box(path: str | os.PathLike, *, box_size: float | None = None) -> PickSet:
    """EMAN BOX: whitespace-separated ``x y w h [score [more columns]]`` per line, (x, y) the
    lower-left corner in pixels. Blank lines and one leading header line (first token not a
    number, as REPIC allows) are skipped; columns beyond the fifth are ignored. ``box_size``, when
    given, replaces the per-line width (REPIC uses one size for all pickers)."""
    path = Path(path)
    rows, scores = [], []
    with open(path) as f:
        lines = f.read().splitlines()
    for number, text in enumerate(lines, 1):
        tokens = text.split()
        if not tokens:
            continue
        if number == 1 and not _is_number(tokens[0]):
            continue
        if len(tokens) < 4:
            raise InputError(f"{path}:{number}: {len(tokens)} columns; an EMAN BOX line is 'x y w h [score]'")
        x, y, w, h = (_float(t, path, number, c) for t, c in zip(tokens[:4], ("x", "y", "width", "height")))
        if w <= 0 or h <= 0:
            raise InputError(f"{path}:{number}: box {w:g}x{h:g} px is empty; width and height must be > 0")
        rows.append((x + w / 2, y + h / 2, max(w, h)))
        scores.append(_float(tokens[4], path, number, "score") if len(tokens) >= 5 else None)
    has = bool(rows) and all(s is not None for s in scores)
    if rows and not has and any(s is not None for s in scores):
        raise InputError(f"{path}: some lines have a score column and some do not; make them consistent")
    return _pickset(rows, scores if has else None, box_size)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _pickset(rows: list[tuple[float, float, float]], scores: Sequence[float] | None,
             box_size: float | None) -> PickSet:
    if not rows:
        return PickSet.empty()
    arr = np.asarray(rows, dtype=np.float64)
    size = np.full(len(arr), float(box_size)) if box_size is not None else arr[:, 2].copy()
    # With a replaced size the centre of a corner-format box stays where the file put it.
    return PickSet(arr[:, :2].copy(), size,
                   np.asarray(scores, dtype=np.float64) if scores is not None else np.ones(len(arr)),
                   has_scores=scores is not None)


def _read_star_tables(path: Path) -> list[pd.DataFrame]:
    try:
        data = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors; report them as bad input
        raise InputError(f"{path}: cannot be read as STAR ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return [t for t in data.values() if isinstance(t, pd.DataFrame)]


def _read_star_table(path: Path) -> pd.DataFrame:
    tables = _read_star_tables(path)
    return tables[-1] if tables else pd.DataFrame()


def _numeric_column(df: pd.DataFrame, name: str, path: Path, *, header_lines: int = 0) -> np.ndarray:
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1} (line {bad[0] + 1 + header_lines}): column {name} "
                         f"value {df[name].iloc[bad[0]]!r} is not a number; fix that row")
    return values


def read_cbox(path: str | os.PathLike, *, box_size: float | None = None) -> PickSet:
    """crYOLO CBOX (a STAR file): ``_CoordinateX/_CoordinateY`` lower-left corner,
    ``_Width/_Height`` box size, ``_Confidence`` score (all pixels)."""
    path = Path(path)
    df = _read_star_table(path)
    if df.empty:
        return PickSet.empty()
    for col in ("CoordinateX", "CoordinateY", "Width", "Height"):
        if col not in df:
            raise InputError(f"{path}: crYOLO CBOX column _{col} is missing")
    x, y, w, h = (_numeric_column(df, c, path) for c in ("CoordinateX", "CoordinateY", "Width", "Height"))
    size = np.full(len(df), float(box_size)) if box_size is not None else np.maximum(w, h)
    has = "Confidence" in df
    scores = _numeric_column(df, "Confidence", path) if has else np.ones(len(df))
    return PickSet(np.stack([x + w / 2, y + h / 2], 1), size, scores, has_scores=has)


def read_relion_star(path: str | os.PathLike, *, box_size: float | None = None) -> PickSet:
    """RELION coordinate STAR: ``_rlnCoordinateX/_rlnCoordinateY`` box centres in pixels; score from
    ``_rlnAutopickFigureOfMerit`` when present. Needs ``box_size``."""
    path = Path(path)
    df = _read_star_table(path)
    if df.empty:
        return PickSet.empty()
    for col in ("rlnCoordinateX", "rlnCoordinateY"):
        if col not in df:
            raise InputError(f"{path}: RELION coordinate column _{col} is missing")
    size = _need_box_size(box_size, path)
    xy = np.stack([_numeric_column(df, "rlnCoordinateX", path), _numeric_column(df, "rlnCoordinateY", path)], 1)
    has = "rlnAutopickFigureOfMerit" in df
    scores = _numeric_column(df, "rlnAutopickFigureOfMerit", path) if has else np.ones(len(df))
    return PickSet(xy, np.full(len(df), size), scores, has_scores=has)


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    with open(path) as f:
        text = f.read()
    if not text.strip():
        return pd.DataFrame()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if sep is None:
        sep = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=sep))
    return pd.DataFrame(rows[1:], columns=[c.strip() for c in rows[0]])


def _pick_column(df: pd.DataFrame, aliases: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in df.columns}
    return next((lower[a] for a in aliases if a in lower), None)


def _read_centre_table(path: Path, df: pd.DataFrame, box_size: float | None, kind: str) -> PickSet:
    if df.empty:
        return PickSet.empty()
    cx = _pick_column(df, ("x_coord", "x", "x-coordinate", "rlncoordinatex", "coordinatex", "center_x"))
    cy = _pick_column(df, ("y_coord", "y", "y-coordinate", "rlncoordinatey", "coordinatey", "center_y"))
    if cx is None or cy is None:
        raise InputError(f"{path}: {kind} header {list(df.columns)} has no x/y centre columns "
                         "(expected e.g. x_coord,y_coord or x,y)")
    cs = _pick_column(df, ("score", "confidence", "rlnautopickfigureofmerit"))
    cd = _pick_column(df, ("box_size", "box", "diameter"))
    xy = np.stack([_numeric_column(df, cx, path, header_lines=1), _numeric_column(df, cy, path, header_lines=1)], 1)
    if box_size is not None:
        size = np.full(len(df), float(box_size))
    elif cd is not None:
        size = _numeric_column(df, cd, path, header_lines=1)
    else:
        size = np.full(len(df), _need_box_size(box_size, path))
    scores = _numeric_column(df, cs, path, header_lines=1) if cs else np.ones(len(df))
    return PickSet(xy, size, scores, has_scores=cs is not None)


def read_topaz(path: str | os.PathLike, *, box_size: float | None = None) -> PickSet:
    """Topaz TSV (``image_name x_coord y_coord score``): box centres in pixels, score a
    log-likelihood ratio. Needs ``box_size``. For a file holding several micrographs use
    :func:`split_topaz`."""
    path = Path(path)
    return _read_centre_table(path, _read_table(path, "\t"), box_size, "Topaz")


def split_topaz(path: str | os.PathLike, *, box_size: float | None = None) -> dict[str, PickSet]:
    """A Topaz TSV with an ``image_name`` column split into one PickSet per micrograph stem."""
    path = Path(path)
    df = _read_table(path, "\t")
    if df.empty:
        return {}
    if "image_name" not in df:
        raise InputError(f"{path}: Topaz column image_name is missing")
    return {str(name): _read_centre_table(path, part.reset_index(drop=True), box_size, "Topaz")
            for name, part in df.groupby("image_name", sort=True)}


def read_csv(path: str | os.PathLike, *, box_size: float | None = None) -> PickSet:
    """CSV with a header: centre columns (``x,y`` / ``X-Coordinate,Y-Coordinate`` /
    ``x_coord,y_coord``), optional ``score`` and ``box_size``/``diameter`` (px)."""
    path = Path(path)
    return _read_centre_table(path, _read_table(path, ","), box_size, "CSV")


READERS = {"box": read_box, "cbox": read_cbox, "star": read_relion_star, "topaz": read_topaz, "csv": read_csv}


def format_of(path: str | os.PathLike, fmt: str = "auto") -> str:
    """The format name of ``path``: ``fmt`` itself, or from the suffix when ``fmt="auto"``."""
    if fmt != "auto":
        if fmt not in READERS:
            raise InputError(f"format={fmt!r} is unknown; choose one of auto, {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise InputError(f"{path}: cannot tell the coordinate format from suffix {suffix!r}; give the format "
                         f"({', '.join(FORMATS)})")
    return SUFFIX_FORMATS[suffix]


def read_picks(path: str | os.PathLike, *, fmt: str = "auto", box_size: float | None = None) -> PickSet:
    """Read one coordinate file of any supported format (see the module docstring)."""
    return READERS[format_of(path, fmt)](path, box_size=box_size)


def collect_picker_files(source: str | os.PathLike | Sequence[str | os.PathLike], *,
                         fmt: str = "auto") -> dict[str, Path]:
    """Map micrograph stem -> coordinate file for one picker.

    ``source`` is a folder (its files with a known coordinate suffix, or of ``fmt``; sub-folders and
    other files are ignored) or a list of files. The stem is the file name without its suffix;
    two files with the same stem are an error.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"picker folder {folder} does not exist or is not a folder")
        wanted = {s for s, f in SUFFIX_FORMATS.items() if fmt in ("auto", f)}
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted
                       and not p.name.startswith("."))
    else:
        files = [Path(p) for p in source]
        for p in files:
            if not p.is_file():
                raise InputError(f"coordinate file {p} does not exist")
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise InputError(f"{p} and {out[p.stem]} are both micrograph {p.stem!r} for one picker; keep one")
        out[p.stem] = p
    return out


def pair_micrographs(pickers: Mapping[str, Mapping[str, Path]]) -> list[tuple[str, dict[str, Path | None]]]:
    """Pair micrographs across pickers by exact stem: ``[(stem, {picker: file or None}), ...]``
    sorted by stem, over the union of all pickers' stems (a picker without a file for a micrograph
    gets ``None``)."""
    stems = sorted(set().union(*(set(m) for m in pickers.values()))) if pickers else []
    return [(s, {name: files.get(s) for name, files in pickers.items()}) for s in stems]


def write_box(path: str | os.PathLike, picks: PickSet, *, decimals: int | None = 0) -> None:
    """EMAN BOX ``x y w h score`` (lower-left corner), REPIC's output columns. ``decimals=0``
    rounds corners to whole pixels as REPIC does; ``None`` keeps full precision."""
    corner = picks.corners
    if decimals is not None:
        corner = np.round(corner, decimals)
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            for (x, y), s, c in zip(corner, picks.box_size, picks.scores):
                xs, ys = (repr(float(v)) if decimals is None else f"{v:.{decimals}f}" for v in (x, y))
                f.write(f"{xs}\t{ys}\t{s:g}\t{s:g}\t{c:.6g}\n")


def write_relion_star(path: str | os.PathLike, picks: PickSet, *,
                      extra: Mapping[str, np.ndarray] | None = None) -> None:
    """RELION coordinate STAR: centres ``_rlnCoordinateX/Y`` (px) and
    ``_rlnAutopickFigureOfMerit``; ``extra`` adds columns (names without the leading underscore)."""
    df = pd.DataFrame({"rlnCoordinateX": picks.centres[:, 0], "rlnCoordinateY": picks.centres[:, 1],
                       "rlnAutopickFigureOfMerit": picks.scores})
    for name, values in (extra or {}).items():
        df[name] = values
    with atomic_output(path) as tmp:
        starfile.write({"": df}, tmp, overwrite=True)


def write_cbox(path: str | os.PathLike, picks: PickSet) -> None:
    """crYOLO CBOX (STAR): lower-left corner, width/height and confidence."""
    corner = picks.corners
    df = pd.DataFrame({"CoordinateX": corner[:, 0], "CoordinateY": corner[:, 1], "Width": picks.box_size,
                       "Height": picks.box_size, "Confidence": picks.scores})
    with atomic_output(path) as tmp:
        starfile.write({"cryolo": df}, tmp, overwrite=True)


def write_topaz(path: str | os.PathLike, picks: PickSet, *, image_name: str) -> None:
    """Topaz TSV ``image_name x_coord y_coord score`` (centres, px)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write("image_name\tx_coord\ty_coord\tscore\n")
            for (x, y), s in zip(picks.centres, picks.scores):
                f.write(f"{image_name}\t{x:.10g}\t{y:.10g}\t{s:.10g}\n")


def write_csv(path: str | os.PathLike, picks: PickSet) -> None:
    """CSV ``x,y,box_size,score`` (centres, px)."""
    df = pd.DataFrame({"x": picks.centres[:, 0], "y": picks.centres[:, 1], "box_size": picks.box_size,
                       "score": picks.scores})
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")


#: micrograph image suffixes looked for when ``relion_micrograph_names`` is given a folder.
MICROGRAPH_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff")
#: RELION's pipeline job folder: ``decomposePipelineFileName`` cuts a name after its first ``/jobNNN/``.
_PIPELINE_JOB = re.compile(r"/job\d{3}/")


def relion_coordinate_path(micrograph_name: str, suffix: str = "_autopick.star") -> str:
    """The path below ``--coord_dir`` where RELION 3.1's ``relion_preprocess --extract`` looks for
    the coordinates of ``micrograph_name``: the name after its pipeline job folder
    (``MotionCorr/job002/Movies/x.mrc`` -> ``Movies/x``; a name without one is kept whole), without
    its extension, plus ``suffix``. relion_autopick writes its own files at the same place below
    its job folder."""
    _check_star_token(micrograph_name, "micrograph name")
    job = _PIPELINE_JOB.search(micrograph_name)
    rest = micrograph_name[job.end():] if job else micrograph_name
    if ".." in rest.split("/"):
        raise InputError(f"micrograph name {micrograph_name!r} climbs out of its folder with '..'; RELION would look "
                         "for its coordinates outside --coord_dir. Name micrographs from the RELION project directory")
    # RELION joins --coord_dir and the name as strings, so an absolute name lands below the folder too.
    return posixpath.splitext(rest.lstrip("/"))[0] + suffix


def _check_star_token(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise InputError(f"{what} {value!r} is empty or holds white space, which a RELION STAR value cannot")


def is_star_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a STAR file (by its suffix), as opposed to a folder."""
    return os.fspath(path).lower().endswith(".star")


def relion_micrograph_names(source: str | os.PathLike, stems: Sequence[str]) -> dict[str, str]:
    """Micrograph stem -> micrograph name as RELION spells it, for the stems of ``stems`` it knows.

    ``source`` is a micrographs STAR file (``*.star``: its ``rlnMicrographName`` column, RELION 3.0
    to 5, e.g. ``CtfFind/job003/micrographs_ctf.star``) or a folder named from the RELION project
    directory (``Micrographs``): ``<folder>/<stem><suffix>`` with the first suffix of
    :data:`MICROGRAPH_SUFFIXES` that names an existing file there, else ``.mrc``. A STAR holding
    two micrographs of one stem is an error, since pickers' files are paired by stem.
    """
    text = os.fspath(source)
    if is_star_path(text):
        path = Path(text)
        if not path.is_file():
            raise InputError(f"relion_micrographs: micrographs STAR {path} does not exist")
        table = next((t for t in _read_star_tables(path) if "rlnMicrographName" in t), None)
        if table is None:
            raise InputError(f"{path}: no table with a _rlnMicrographName column; give RELION's micrographs STAR")
        known: dict[str, str] = {}
        for name in table["rlnMicrographName"].astype(str):
            stem = posixpath.splitext(posixpath.basename(name))[0]
            if stem in known and known[stem] != name:
                raise InputError(f"{path}: micrographs {known[stem]} and {name} share the stem {stem!r}; "
                                 "picks are paired by stem, so keep one")
            known[stem] = name
        return {s: known[s] for s in stems if s in known}
    folder = text.rstrip("/") or "/"
    return {s: posixpath.join(folder, next((s + x for x in MICROGRAPH_SUFFIXES if Path(folder, s + x).is_file()),
                                           s + ".mrc"))
            for s in stems}


def _star_loop(block: str, columns: Sequence[str], rows: list[str]) -> str:
    """One STAR block in RELION's own spelling (version comment, ``loop_ ``, ``_rlnX #i ``)."""
    head = "".join(f"_{c} #{i} \n" for i, c in enumerate(columns, 1))
    return f"\n# version 30001\n\ndata_{block}\n\nloop_ \n{head}" + "".join(r + " \n" for r in rows) + " \n"


def write_relion_autopick(path: str | os.PathLike, picks: PickSet) -> None:
    """A coordinate file as relion_autopick writes it: block ``data_``, centres
    ``_rlnCoordinateX/Y`` (px), ``_rlnAutopickFigureOfMerit``, ``_rlnClassNumber`` 0 and
    ``_rlnAnglePsi`` 0 (what its reference-free picker writes: consensus boxes have neither a
    template nor an angle), RELION's ``%12.6f`` numbers. No boxes writes the header alone, which
    RELION extracts as a micrograph without particles."""
    rows = [f"{x:12.6f} {y:12.6f} {s:12.6f} {0:12d} {0.0:12.6f}"
            for (x, y), s in zip(picks.centres, picks.scores)]
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(_star_loop("", ("rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit",
                                    "rlnClassNumber", "rlnAnglePsi"), rows))


def write_relion_coordinate_index(path: str | os.PathLike, pairs: Sequence[tuple[str, str]]) -> None:
    """RELION 4's ``autopick.star``: block ``data_coordinate_files``, one row per micrograph,
    ``_rlnMicrographName`` (as in the micrographs STAR) and ``_rlnMicrographCoordinates`` (its
    coordinate file, a path from the RELION project directory)."""
    for name, coords in pairs:
        _check_star_token(name, "micrograph name")
        _check_star_token(coords, "coordinate file")
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(_star_loop("coordinate_files", ("rlnMicrographName", "rlnMicrographCoordinates"),
                               [f"{name} {coords}" for name, coords in pairs]))
