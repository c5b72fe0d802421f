"""Keep or drop 2D classes of a classification, from one of our runs or a RELION Class2D job.

Inputs (:func:`find_classification`): our run directory (its ``particles.star``, class count from
``classes.star``), a particle STAR with ``rlnClassNumber`` (ours or RELION's
``run_itNNN_data.star``), a RELION ``run_itNNN_model.star`` (its ``_data.star`` beside it), or a
RELION job directory (its last iteration). Classes are numbered 1..K as in ``rlnClassNumber``; K
is the model's (or ``classes.star``'s) class count, else the largest number in the particles.

A selection starts from ``keep`` (default: every class), removes ``drop``, then the classes with
fewer than ``min_size`` particles. A class list file holds class numbers (separated by spaces,
commas or new lines; ``#`` starts a comment) or is a STAR file with ``rlnClassNumber`` or
``rlnReferenceImage`` (``NNNNNN@classes.mrcs`` names class NNNNNN, as RELION's Subset selection
writes ``class_averages.star``); its classes are kept. A class number outside 1..K is an error.

The written ``particles.star`` is RELION 4 (``io/star.py``) with the selected rows and every
column, image names exactly as the input gives them, so it holds from the same project
directory as the input did.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ackmeans_torch.errors import InputError, check_int
from ackmeans_torch.io.star import ParticleTable, read_particles, read_star, write_particles

_ITERATION = re.compile(r"_it(\d+)_data\.star$")


@dataclass
class Selection:
    """The selected ``table``; ``kept``: the class numbers kept (1-based, ascending); ``sizes``:
    particles per class 1..K in the input; ``source``: the particle STAR read."""

    table: ParticleTable
    kept: list[int]
    sizes: np.ndarray
    source: Path


def find_classification(path: str | os.PathLike) -> tuple[Path, int | None]:
    """The particle STAR of a classification at ``path`` (module docstring) and its class count
    (None: not recorded beside it)."""
    path = Path(path)
    if path.is_dir():
        if (path / "particles.star").is_file():
            return path / "particles.star", _count_classes(path / "classes.star", "model_classes")
        runs = sorted(path.glob("*_it*_data.star"),
                      key=lambda p: int(_ITERATION.search(p.name).group(1)))
        if not runs:
            raise InputError(f"{path}: holds neither particles.star nor a RELION "
                             "run_itNNN_data.star; give the classification's STAR file")
        path = runs[-1]
    if path.name.endswith("_model.star"):
        data = path.with_name(path.name[: -len("_model.star")] + "_data.star")
        if not data.is_file():
            raise InputError(f"{path}: no {data.name} beside it to take the particles from")
        return data, _count_classes(path, "model_classes")
    if path.name.endswith("_data.star"):
        model = path.with_name(path.name[: -len("_data.star")] + "_model.star")
        return path, _count_classes(model, "model_classes")
    return path, _count_classes(path.parent / "classes.star", "model_classes")


def _count_classes(path: Path, block: str) -> int | None:
    if not path.is_file():
        return None
    table = read_star(path).get(block)
    return None if table is None else len(table)


def read_class_list(path: str | os.PathLike) -> list[int]:
    """Class numbers (1-based) from a list file (module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".star":
        tables = [t for t in read_star(path).values() if isinstance(t, pd.DataFrame)]
        for table in tables:
            if "rlnClassNumber" in table:
                return [int(c) for c in table["rlnClassNumber"]]
            if "rlnReferenceImage" in table:
                numbers = table["rlnReferenceImage"].astype(str).str.partition("@")[0]
                return [int(n) for n in numbers]
        raise InputError(f"{path}: no rlnClassNumber or rlnReferenceImage column to take the "
                         "classes from")
    if not path.is_file():
        raise InputError(f"{path}: no such class list file; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a text file of class numbers") from error
    numbers = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        for word in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not word:
                continue
            if not re.fullmatch(r"\d+", word):
                raise InputError(f"{path}: line {line_number} holds {word!r}; expected class "
                                 "numbers (1-based)")
            numbers.append(int(word))
    return numbers


def _check_classes(name: str, classes, n_classes: int, source: Path) -> list[int]:
    classes = [classes] if isinstance(classes, int) else list(classes)
    for number in classes:
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
            raise InputError(f"{name}={classes!r} must list class numbers (integers)")
        if not 1 <= number <= n_classes:
            raise InputError(f"{name}: class {number} is not in {source}, whose classes are "
                             f"1..{n_classes}")
    return [int(c) for c in classes]


def select_classes(path: str | os.PathLike, *, keep=None, drop=None, min_size: int | None = None,
                   classes_file: str | os.PathLike | None = None,
                   project_dir: str | os.PathLike | None = None) -> Selection:
    """The particles of the classes selected (module docstring) from the classification at
    ``path``. ``keep``/``drop``: class numbers (1-based); ``min_size``: the smallest class kept;
    ``classes_file``: a class list file whose classes are kept (with ``keep``: both lists);
    ``project_dir``: where the image names hold from (default the current directory), used
    only to read the table."""
    source, n_classes = find_classification(path)
    table = read_particles(source, project_dir=project_dir)
    if "rlnClassNumber" not in table.particles:
        raise InputError(f"{source}: no rlnClassNumber column; give a classification's particles")
    labels = table.particles["rlnClassNumber"].to_numpy()
    if n_classes is None:
        n_classes = int(labels.max())
    if labels.min() < 1 or labels.max() > n_classes:
        raise InputError(f"{source}: rlnClassNumber runs {labels.min()}..{labels.max()} but the "
                         f"classification has classes 1..{n_classes}")
    sizes = np.bincount(labels.astype(np.int64), minlength=n_classes + 1)[1:]
    chosen = set(range(1, n_classes + 1))
    if keep is not None or classes_file is not None:
        listed = _check_classes("keep", keep, n_classes, source) if keep is not None else []
        if classes_file is not None:
            listed += _check_classes(str(classes_file), read_class_list(classes_file), n_classes,
                                     source)
        chosen = set(listed)
    if drop is not None:
        chosen -= set(_check_classes("drop", drop, n_classes, source))
    if min_size is not None:
        check_int("min_size", min_size, 0)
        chosen = {c for c in chosen if sizes[c - 1] >= min_size}
    kept = sorted(chosen)
    rows = np.isin(labels, kept)
    if not rows.any():
        raise InputError(f"{source}: the selection keeps no particles (classes {kept or 'none'}); "
                         "keep more classes or lower min_size")
    particles = table.particles[rows].reset_index(drop=True)
    selected = ParticleTable(particles, table.optics, table.source, table.image_root,
                             table.fallback_root)
    return Selection(table=selected, kept=kept, sizes=sizes, source=source)


def write_selection(selection: Selection, path: str | os.PathLike) -> Path:
    """Write the selected particles as a RELION 4 STAR at ``path``, names as given."""
    path = Path(path)
    write_particles(path, selection.table)
    return path
