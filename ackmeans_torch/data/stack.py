"""Real particle images from MRC stacks, described by a RELION/cryoSPARC table or by the stack
alone.

:func:`open_source` picks the reader by extension (cryoDRGN's ``ImageSource.from_file`` habit):

* ``.star`` → :func:`~ackmeans_torch.io.star.read_particles` (RELION 3.0/3.1/4),
* ``.cs`` → :func:`~ackmeans_torch.io.cryosparc.read_cs` (images relative to the ``.cs`` file, or
  to ``stack_root``: a folder, or one stack file holding every ``blob/idx``),
* ``.mrc``/``.mrcs`` → the stack itself with a minimal table (``rlnImageName``, pixel size from
  the header, zero origins, one optics group).

Relative stack paths in a STAR file are RELION's, relative to the project directory
(``project_dir``, default: the current directory), else to the STAR file's folder
(``io/star.py``). A :class:`StackSource` memory-maps each stack file (headers are checked when the
source is built: every referenced stack exists and holds the referenced index; particles that name
the same image are counted in one warning) and reads only the requested images. At most
``max_open_stacks`` maps are held open at a time, so a data set split over thousands of
per-micrograph stacks does not exhaust file handles. :meth:`StackSource.image_names` gives the
names to write back: as the table gives them when they already hold from the project directory.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ackmeans_torch.data.source import ImageSource
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.cryosparc import read_cs
from ackmeans_torch.io.mrc import MrcStack, open_stack
from ackmeans_torch.io.star import ParticleTable, read_particles


class StackSource(ImageSource):
    """Images ``(B, L, L) float32`` read from the MRC stacks that a :class:`ParticleTable` names.

    ``pixel_size`` (Å) is the table's ``rlnImagePixelSize`` (a warning is given when optics groups
    disagree; the first particle's value is used); ``box_size`` L is the stacks' image side, which
    must be the same in every stack. ``particles`` is the table's merged particle DataFrame, with
    ``rlnImageSize`` filled in from the stacks when the file had none.
    """

    def __init__(self, table: ParticleTable, *, max_open_stacks: int = 64):
        if max_open_stacks < 1:
            raise InputError(f"max_open_stacks={max_open_stacks} must be >= 1")
        if len(table) == 0:
            raise InputError(f"{table.source}: the table has no particles")
        self.table = table
        paths, self._index = table.image_locations()
        unique, self._stack_of = np.unique(paths.astype(str), return_inverse=True)
        self._stacks: list[MrcStack] = []
        for code, stack_path in enumerate(unique):
            if not Path(stack_path).is_file():
                row = int(np.flatnonzero(self._stack_of == code)[0])
                name = str(table.particles["rlnImageName"].iloc[row]).partition("@")[2]
                roots = [str(r) for r in table.image_roots()]
                places = (f"not in {roots[0]}" if len(roots) == 1
                          else f"in neither {' nor '.join(roots)}")
                where = stack_path if os.path.isabs(name) else f"{name} ({places})"
                raise InputError(
                    f"{table.source}: particle {row} refers to missing stack {where}; run from "
                    "the RELION project directory, or pass project_dir or stack_root"
                )
            stack = open_stack(stack_path)
            stack.close()  # keep only the header facts until images are read
            in_stack = self._index[self._stack_of == code]
            if in_stack.max() >= len(stack):
                raise InputError(
                    f"{table.source}: refers to image {in_stack.max() + 1} (1-based) of "
                    f"{stack_path}, which holds {len(stack)} images"
                )
            self._stacks.append(stack)
        _warn_duplicates(table, self._stack_of, self._index)
        sizes = {s.box_size for s in self._stacks}
        if len(sizes) > 1:
            raise InputError(f"{table.source}: stacks have different box sizes {sorted(sizes)}")
        self.box_size = sizes.pop()
        pixel = table.particles["rlnImagePixelSize"].to_numpy(dtype=np.float64)
        if not np.allclose(pixel, pixel[0], rtol=1e-4):
            warnings.warn(
                f"{table.source}: pixel sizes differ between optics groups "
                f"({pixel.min():.4f}-{pixel.max():.4f} Å); using {pixel[0]:.4f} Å",
                stacklevel=2,
            )
        self.pixel_size = float(pixel[0])
        particles = table.particles
        if "rlnImageSize" not in particles:
            particles = particles.assign(rlnImageSize=self.box_size)
        self.particles = particles
        self._max_open = max_open_stacks
        self._open: OrderedDict[int, None] = OrderedDict()

    @classmethod
    def from_stack(cls, path: str | os.PathLike, *, pixel_size: float | None = None) -> StackSource:
        """A source over every image of one stack, with a minimal table. ``pixel_size`` (Å)
        overrides the header's (which is 0.0 when unset)."""
        path = Path(path)
        with open_stack(path) as stack:
            n, size = len(stack), pixel_size if pixel_size is not None else stack.pixel_size
        particles = pd.DataFrame(
            {
                "rlnImageName": [f"{i + 1:06d}@{path.name}" for i in range(n)],
                "rlnImagePixelSize": float(size),
                "rlnOpticsGroup": 1,
            }
        )
        return cls(ParticleTable.from_particles(particles, source=path, image_root=path.parent))

    def _stack(self, code: int) -> MrcStack:
        """The stack with this code, keeping at most ``max_open_stacks`` memory maps open."""
        self._open[code] = None
        self._open.move_to_end(code)
        while len(self._open) > self._max_open:
            oldest, _ = self._open.popitem(last=False)
            self._stacks[oldest].close()
        return self._stacks[code]

    def images(self, indices: Sequence[int] | np.ndarray | slice) -> torch.Tensor:
        """Images at ``indices`` (0-based particle rows) as a ``(B, L, L) float32`` CPU tensor."""
        rows = np.arange(len(self))[indices] if isinstance(indices, slice) else np.asarray(indices)
        rows = rows.astype(np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.table.source}: particle index out of range [0, {len(self)})")
        out = np.empty((rows.size, self.box_size, self.box_size), dtype=np.float32)
        codes = self._stack_of[rows]
        for code in np.unique(codes):
            where = np.flatnonzero(codes == code)
            local = self._index[rows[where]]
            order = np.argsort(local, kind="stable")  # ascending offsets read the map in order
            out[where[order]] = self._stack(int(code))[local[order]]
        return torch.from_numpy(out)

    def image_names(self, relative_to: str | os.PathLike) -> list[str]:
        """``rlnImageName`` of every image valid from the folder ``relative_to`` (the project
        directory RELION runs from): the table's own name where it already names the same stack
        from there, else ``index@stack`` with the stack path relative to ``relative_to``."""
        paths, index = self.table.image_locations()
        given = self.table.particles["rlnImageName"].astype(str)
        parts = given.str.partition("@")
        stack_names = parts[2].where(parts[1] == "@", parts[0]).to_numpy(dtype=str)
        root = os.path.abspath(relative_to)
        pairs = pd.DataFrame({"name": stack_names, "path": paths.astype(str)}).drop_duplicates()
        keep = {(name, path): os.path.normpath(os.path.join(root, name)) == path
                for name, path in pairs.itertuples(index=False)}
        return [g if keep[s, p] else f"{i + 1:06d}@{os.path.relpath(p, root)}"
                for g, s, p, i in zip(given, stack_names, paths, index)]

    def close(self) -> None:
        """Release every open memory map."""
        for stack in self._stacks:
            stack.close()
        self._open.clear()


def _warn_duplicates(table: ParticleTable, stack_of: np.ndarray, index: np.ndarray) -> None:
    """Warn once, with the count, when particles name an image another particle already names
    (a STAR file joined with itself, or picks extracted twice): each copy is classified."""
    keys = stack_of.astype(np.int64) * (int(index.max()) + 1) + index
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    extra = int(len(keys) - len(unique))
    if extra:
        example = table.particles["rlnImageName"].iloc[int(first[np.argmax(counts)])]
        warnings.warn(f"{table.source}: {extra} particle(s) repeat an image another particle "
                      f"names (e.g. {example}, {counts.max()} times); each copy is used",
                      stacklevel=3)


def open_source(
    path: str | os.PathLike, *, stack_root: str | os.PathLike | None = None,
    pixel_size: float | None = None, project_dir: str | os.PathLike | None = None,
) -> StackSource:
    """Open particle images by extension: ``.star`` (RELION), ``.cs`` (cryoSPARC), ``.mrc`` or
    ``.mrcs`` (a bare stack). A ``.star``'s relative image paths are looked up in ``project_dir``
    (default: the current directory, where RELION runs), then in the STAR file's folder;
    ``stack_root`` relocates the stacks a ``.star``/``.cs`` names; ``pixel_size`` (Å) is for a
    bare stack, whose header may have none (the metadata files carry their own)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        return StackSource(read_particles(path, stack_root=stack_root, project_dir=project_dir))
    if suffix == ".cs":
        return StackSource(read_cs(path, stack_root=stack_root))
    if suffix in (".mrc", ".mrcs"):
        return StackSource.from_stack(path, pixel_size=pixel_size)
    raise InputError(
        f"{path}: unknown particle file type {suffix!r}; use .star, .cs, .mrc or .mrcs"
    )
