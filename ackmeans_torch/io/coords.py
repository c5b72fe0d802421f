"""Particle-picker coordinate files: EMAN BOX, crYOLO CBOX, Topaz TSV, RELION coordinate STAR, CSV,
and RELION's autopick layout (per-micrograph ``*_autopick.star`` beside an ``autopick.star`` index).

Every reader returns a :class:`PickSet`: box **centres** in pixels ``(n, 2)`` float64 (x, y) in the
file's own frame, a per-box square size ``(n,)`` in pixels and a per-box score ``(n,)``. Corner
formats (BOX, CBOX: ``x y`` is the lower-left corner of a ``w × h`` box) are converted with
``centre = corner + size / 2``; centre formats (Topaz, RELION, CSV) carry no size, so the caller's
``box_size`` is used. A file without scores gets score 1 for every box (REPIC 0.2.1 does the same)
and ``has_scores=False``.

Micrographs are paired across pickers by the exact file stem (``mic_1`` and ``mic_10`` are
different micrographs); :func:`collect_picker_files`, :func:`read_picker`, :func:`reconcile_stems`
and :func:`pair_micrographs` own that rule. A Topaz file with an ``image_name`` column holds the
boxes of every micrograph it names (Topaz writes one file for a whole data set), so it is split
by that name, not keyed by its own stem.

Nothing read is dropped silently: malformed numbers raise
:class:`~ackmeans_torch.errors.InputError` naming the file and line; what a reader skips or infers
(a header line, a table without a header, a repeated header inside a table, boxes outside the
micrograph) is appended, with its count, to the ``notes`` list the caller passes.
"""

from __future__ import annotations

import csv
import glob
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


def read_box(path: str | os.PathLike, *, box_size: float | None = None, notes: list[str] | None = None) -> PickSet:
    """EMAN BOX: whitespace-separated ``x y w h [score [more columns]]`` per line, (x, y) the
    lower-left corner in pixels. Blank lines and one leading header line (no token a number, as
    REPIC allows) are skipped; a first line mixing words and numbers is a malformed box, an error.
    Columns beyond the fifth are ignored. ``box_size``, when given, replaces the per-line width
    (REPIC uses one size for all pickers)."""
    path = Path(path)
    rows, scores = [], []
    with open(path) as f:
        lines = f.read().splitlines()
    for number, text in enumerate(lines, 1):
        tokens = text.split()
        if not tokens:
            continue
        if number == 1 and not any(_is_number(t) for t in tokens):
            _note(notes, path, "1 header line skipped")
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


def _note(notes: list[str] | None, path: Path, text: str) -> None:
    if notes is not None:
        notes.append(f"{path.name}: {text}")


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


def read_cbox(path: str | os.PathLike, *, box_size: float | None = None, notes: list[str] | None = None) -> PickSet:
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


def read_relion_star(path: str | os.PathLike, *, box_size: float | None = None,
                     notes: list[str] | None = None) -> PickSet:
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


#: column names given to a table without a header line, by format and column count.
_HEADERLESS = {"Topaz": {3: ("image_name", "x_coord", "y_coord"), 4: ("image_name", "x_coord", "y_coord", "score")},
               "Topaz-xy": {2: ("x_coord", "y_coord"), 3: ("x_coord", "y_coord", "score")},
               "CSV": {2: ("x", "y"), 3: ("x", "y", "score")}}


def _read_table(path: Path, sep: str, kind: str, notes: list[str] | None) -> tuple[pd.DataFrame, int]:
    """The table of a Topaz/CSV file and how many lines precede its first data row. A first line
    whose coordinates are numbers is data, not a header (it is read with the format's column
    order, and noted); a later line equal to the header (files concatenated) is skipped, noted."""
    with open(path) as f:
        text = f.read()
    if not text.strip():
        return pd.DataFrame(), 0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=sep)]
    first = rows[0]
    if sum(_is_number(c) for c in first) >= 2:
        key = "Topaz-xy" if kind == "Topaz" and _is_number(first[0]) else kind
        names = _HEADERLESS[key].get(len(first))
        if names is None:
            raise InputError(f"{path}: no header line and {len(first)} columns; add a header line "
                             "(e.g. x,y,score or image_name x_coord y_coord score)")
        ragged = next((i for i, r in enumerate(rows) if len(r) != len(first)), None)
        if ragged is not None:
            raise InputError(f"{path}: data row {ragged + 1} has {len(rows[ragged])} columns, the first {len(first)}; "
                             "fix that row")
        _note(notes, path, f"no header line; read as columns {' '.join(names)}")
        return pd.DataFrame(rows, columns=list(names)), 0
    body = [r for r in rows[1:] if r != first]
    if len(body) < len(rows) - 1:
        _note(notes, path, f"{len(rows) - 1 - len(body)} repeated header lines skipped")
    return pd.DataFrame(body, columns=first), 1


def _pick_column(df: pd.DataFrame, aliases: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in df.columns}
    return next((lower[a] for a in aliases if a in lower), None)


def _read_centre_table(path: Path, df: pd.DataFrame, box_size: float | None, kind: str,
                       header_lines: int = 1) -> PickSet:
    if df.empty:
        return PickSet.empty()
    cx = _pick_column(df, ("x_coord", "x", "x-coordinate", "rlncoordinatex", "coordinatex", "center_x"))
    cy = _pick_column(df, ("y_coord", "y", "y-coordinate", "rlncoordinatey", "coordinatey", "center_y"))
    if cx is None or cy is None:
        raise InputError(f"{path}: {kind} header {list(df.columns)} has no x/y centre columns "
                         "(expected e.g. x_coord,y_coord or x,y)")
    cs = _pick_column(df, ("score", "confidence", "rlnautopickfigureofmerit"))
    cd = _pick_column(df, ("box_size", "box", "diameter"))
    xy = np.stack([_numeric_column(df, cx, path, header_lines=header_lines),
                   _numeric_column(df, cy, path, header_lines=header_lines)], 1)
    if box_size is not None:
        size = np.full(len(df), float(box_size))
    elif cd is not None:
        size = _numeric_column(df, cd, path, header_lines=header_lines)
    else:
        size = np.full(len(df), _need_box_size(box_size, path))
    scores = _numeric_column(df, cs, path, header_lines=header_lines) if cs else np.ones(len(df))
    return PickSet(xy, size, scores, has_scores=cs is not None)


def read_topaz(path: str | os.PathLike, *, box_size: float | None = None, notes: list[str] | None = None) -> PickSet:
    """Topaz TSV (``image_name x_coord y_coord score``): box centres in pixels, score a
    log-likelihood ratio. Needs ``box_size``. A file naming several micrographs is an error here:
    split it with :func:`split_topaz` (:func:`read_picker` does)."""
    path = Path(path)
    df, head = _read_table(path, "\t", "Topaz", notes)
    if "image_name" in df and df["image_name"].nunique() > 1:
        raise InputError(f"{path}: holds the boxes of {df['image_name'].nunique()} micrographs (image_name); "
                         "read it with split_topaz")
    return _read_centre_table(path, df, box_size, "Topaz", head)


def split_topaz(path: str | os.PathLike, *, box_size: float | None = None,
                notes: list[str] | None = None) -> dict[str, PickSet]:
    """A Topaz TSV with an ``image_name`` column split into one PickSet per micrograph stem (the
    name without folder and suffix)."""
    path = Path(path)
    df, head = _read_table(path, "\t", "Topaz", notes)
    if df.empty:
        return {}
    if "image_name" not in df:
        raise InputError(f"{path}: Topaz column image_name is missing")
    stems = df["image_name"].map(lambda n: posixpath.splitext(posixpath.basename(str(n)))[0])
    return {str(name): _read_centre_table(path, part.reset_index(drop=True), box_size, "Topaz", head)
            for name, part in df.groupby(stems, sort=True)}


def read_csv(path: str | os.PathLike, *, box_size: float | None = None, notes: list[str] | None = None) -> PickSet:
    """CSV: centre columns (``x,y`` / ``X-Coordinate,Y-Coordinate`` / ``x_coord,y_coord``),
    optional ``score`` and ``box_size``/``diameter`` (px), under a header line (without one: ``x,y``
    or ``x,y,score``)."""
    path = Path(path)
    df, head = _read_table(path, ",", "CSV", notes)
    return _read_centre_table(path, df, box_size, "CSV", head)


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


def read_picks(path: str | os.PathLike, *, fmt: str = "auto", box_size: float | None = None,
               notes: list[str] | None = None) -> PickSet:
    """Read one coordinate file of any supported format (see the module docstring)."""
    return READERS[format_of(path, fmt)](path, box_size=box_size, notes=notes)


def collect_picker_files(source: str | os.PathLike | Sequence[str | os.PathLike], *,
                         fmt: str = "auto") -> dict[str, Path]:
    """Map micrograph stem -> coordinate file for one picker.

    ``source`` is a folder (its files with a known coordinate suffix, or of ``fmt``; sub-folders and
    other files are ignored), a glob pattern (``picks/*_autopick.star``) or a list of files. The
    stem is the file name without its suffix; two files with the same stem are an error.
    """
    if isinstance(source, (str, os.PathLike)) and glob.has_magic(os.fspath(source)):
        files = [Path(p) for p in sorted(glob.glob(os.fspath(source))) if Path(p).is_file()]
        if not files:
            raise InputError(f"no coordinate files match {source}")
    elif isinstance(source, (str, os.PathLike)):
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


@dataclass
class PickerFiles:
    """One picker's boxes by micrograph stem, read from its files: ``picks[stem]``; ``errors[stem]``
    a one-line message for a file that could not be read; ``notes[stem]`` what was skipped or
    inferred while reading (with counts)."""

    picks: dict[str, PickSet]
    errors: dict[str, str]
    notes: dict[str, list[str]]


def read_picker(source: str | os.PathLike | Sequence[str | os.PathLike], *, fmt: str = "auto",
                box_size: float | None = None, skip_bad: bool = False) -> PickerFiles:
    """Read every coordinate file of one picker (``source`` as :func:`collect_picker_files`).
    Topaz files are split by their ``image_name`` column (one file may hold many micrographs);
    a micrograph given by two files is an error. ``skip_bad``: an unreadable file is recorded in
    ``errors`` (under its stem) instead of raising."""
    out = PickerFiles({}, {}, {})
    origin: dict[str, Path] = {}
    for stem, path in collect_picker_files(source, fmt=fmt).items():
        notes: list[str] = []
        try:
            if format_of(path, fmt) == "topaz":
                parts = split_topaz(path, box_size=box_size, notes=notes) or {stem: PickSet.empty()}
            else:
                parts = {stem: read_picks(path, fmt=fmt, box_size=box_size, notes=notes)}
        except (ValueError, OSError) as exc:
            if not skip_bad:
                raise
            out.errors[stem] = str(exc).splitlines()[0]
            continue
        for name, picks in parts.items():
            if name in origin:
                raise InputError(f"{path} and {origin[name]} both hold micrograph {name!r} for one picker; keep one")
            origin[name] = path
            out.picks[name] = picks
            if notes:
                out.notes[name] = list(notes)
    return out


def drop_outside(picks: PickSet, shape: tuple[int, int]) -> tuple[PickSet, int]:
    """The boxes of ``picks`` whose centre lies in an (H, W) micrograph (0 <= x < W, 0 <= y < H),
    and how many were outside."""
    h, w = shape
    x, y = picks.centres[:, 0], picks.centres[:, 1]
    keep = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    if keep.all():
        return picks, 0
    return PickSet(picks.centres[keep], picks.box_size[keep], picks.scores[keep], picks.has_scores), int((~keep).sum())


#: suffixes pickers add to the micrograph stem in their file names (RELION's autopick/manualpick).
_STEM_SEPARATORS = ("_", "-", ".")


def reconcile_stems(stems: Mapping[str, Sequence[str]]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Pairing of pickers whose file names carry the micrograph stem plus one suffix
    (``mic_1_autopick``) with pickers that name files by the stem (``mic_1``).

    ``stems``: picker -> its stems. Returns ``{picker: {file stem: micrograph stem}}`` and one
    note per renamed picker. A picker is renamed only when none of its stems meets another
    picker's and every one is another picker's stem plus the same suffix starting with ``_``,
    ``-`` or ``.``; exact stems otherwise stay the rule."""
    mapping = {p: {s: s for s in names} for p, names in stems.items()}
    notes = []
    for picker, names in stems.items():
        others = set().union(*(set(v) for p, v in stems.items() if p != picker))
        if not names or not others or set(names) & others:
            continue
        suffixes = set()
        renamed = {}
        for s in names:
            base = max((o for o in others if s.startswith(o) and s[len(o):len(o) + 1] in _STEM_SEPARATORS),
                       key=len, default=None)
            if base is None:
                break
            suffixes.add(s[len(base):])
            renamed[s] = base
        if len(renamed) == len(names) and len(suffixes) == 1:
            mapping[picker] = renamed
            notes.append(f"picker {picker!r}: files named <micrograph>{suffixes.pop()} paired to the other "
                         f"pickers' micrographs ({len(renamed)} files)")
    return mapping, notes


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
