"""MRC image stacks and volumes (via ``mrcfile``): memory-mapped reading, atomic writing.

Conventions (this module owns them):

* A stack holds N square images of side L; reading returns ``(B, L, L) float32`` arrays indexed
  ``(image, y, x)``. A volume is ``(L, L, L) float32`` indexed ``(z, y, x)``.
* Pixel/voxel size in Å comes from the header (``voxel_size.x``); ``0.0`` means the header has
  none (mrcfile reports 0 when the cell is unset).
* Stacks are read memory-mapped: opening a stack reads only its header, and indexing reads only
  the requested images, so a stack larger than memory is never loaded whole.
* Old or slightly broken headers (RELION 3.1 writes stacks without the ``MAP`` identifier and with
  an empty machine stamp) are opened in mrcfile's permissive mode, with one
  :class:`MrcHeaderWarning` naming the file. A file whose data cannot be mapped (truncated, corrupt
  dimensions) is an :class:`~ackmeans_torch.errors.InputError` naming the file.
* Complex data (modes 3 and 4: Fourier transforms) is refused when opened: particle images and
  maps are real-space pixels.
* Pixels are checked for NaN/Inf on every read; a bad image is an ``InputError`` naming the file
  and the image's 0-based index in it.
* Every write goes through :func:`~ackmeans_torch.io.atomic.atomic_output`: float32 (mode 2), the
  voxel size set in the header, and nothing under the final name unless the write completed.
  The header label is fixed text (mrcfile's holds the time), so equal data give equal bytes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output

_HEADER_BYTES = 1024
_COMPLEX_MODES = (3, 4)
_LABEL = "ackmeans_torch"


class MrcHeaderWarning(UserWarning):
    """An MRC file whose header is not standard was read in mrcfile's permissive mode."""


def _open_mrc(path: Path, *, quiet: bool = False) -> mrcfile.mrcmemmap.MrcMemmap:
    """Memory-map ``path`` read-only; fall back to permissive mode for non-standard headers.

    ``quiet`` suppresses the header warnings (used when re-opening a file already reported).
    Raises :class:`InputError` when the file is missing, not MRC, truncated or corrupt.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such MRC file; check the path")
    permissive = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r")
        except ValueError as strict_error:
            permissive = True
            reason = str(strict_error)
            try:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            except (ValueError, OSError) as error:
                raise InputError(f"{path}: not a readable MRC file ({error})") from error
    mode = int(mrc.header.mode)
    if mode in _COMPLEX_MODES:
        mrc.close()
        raise InputError(f"{path}: MRC mode {mode} holds complex (Fourier-space) values; give "
                         "real-space images or maps (modes 0, 1, 2, 6 or 12)")
    if mrc.data is None or mrc.header.nx < 1 or mrc.header.ny < 1 or mrc.header.nz < 1:
        message = _describe_unreadable(path, mrc)
        mrc.close()
        raise InputError(message)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if permissive and not quiet:
        warnings.warn(
            f"{path}: non-standard MRC header ({'; '.join(dict.fromkeys([reason, *notes]))}); "
            "read in mrcfile's permissive mode",
            MrcHeaderWarning,
            stacklevel=3,
        )
    elif notes and not quiet:
        warnings.warn(f"{path}: {'; '.join(notes)}", MrcHeaderWarning, stacklevel=3)
    return mrc


def _describe_unreadable(path: Path, mrc: mrcfile.mrcmemmap.MrcMemmap) -> str:
    """One-line reason why the data block of an opened (permissive) MRC file cannot be mapped."""
    h = mrc.header
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    if min(nx, ny, nz) < 1:
        return (
            f"{path}: corrupt MRC header (dimensions nx={nx}, ny={ny}, nz={nz}); "
            "re-export the file"
        )
    try:
        itemsize = mrcfile.utils.data_dtype_from_header(h).itemsize
    except ValueError as error:
        return f"{path}: corrupt MRC header ({error}); re-export the file"
    expected = _HEADER_BYTES + int(h.nsymbt) + nx * ny * nz * itemsize
    actual = path.stat().st_size
    if actual < expected:
        return (
            f"{path}: truncated MRC file: the header describes {nz} sections of {nx}x{ny} px "
            f"({expected} bytes) but the file has {actual} bytes; re-copy or re-export it"
        )
    return f"{path}: corrupt MRC file (its data block cannot be read); re-export the file"


def _check_finite(path: Path, images: np.ndarray, first_index: np.ndarray | int) -> None:
    """Raise :class:`InputError` naming the first image of ``images`` with NaN/Inf pixels.

    ``first_index`` is either the index in the file of ``images[0]`` (contiguous read) or the
    array of file indices of every image read."""
    finite = np.isfinite(images).all(axis=(-2, -1))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        index = int(first_index[bad]) if isinstance(first_index, np.ndarray) else first_index + bad
        raise InputError(
            f"{path}: image {index} (0-based) contains NaN or Inf pixels; remove or repair it"
        )


class MrcStack:
    """A memory-mapped MRC stack of N square L×L images.

    ``stack[i]``, ``stack[a:b]`` and ``stack[index_array]`` return ``(B, L, L) float32`` arrays
    (a single int gives ``B = 1``); only those images are read. ``len(stack)`` is N,
    ``pixel_size`` is in Å (0.0 when the header has none), ``box_size`` is L.

    The memory map is opened on first access and can be released with :meth:`close` (a source
    with thousands of stacks keeps only some open); it is re-opened on the next access. Pickling
    drops the map, so the object can be sent to DataLoader worker processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mrc = _open_mrc(self.path)
        shape = mrc.data.shape
        self.pixel_size = float(mrc.voxel_size.x)
        if len(shape) == 2:
            shape = (1, *shape)
        n, ny, nx = shape
        if ny != nx:
            mrc.close()
            raise InputError(
                f"{self.path}: images are {nx}x{ny} px (x by y); only square images are supported"
            )
        self._mrc: mrcfile.mrcmemmap.MrcMemmap | None = mrc
        self.box_size = int(nx)
        self._len = int(n)

    def __len__(self) -> int:
        return self._len

    def _data(self) -> np.ndarray:
        if self._mrc is None:
            self._mrc = _open_mrc(self.path, quiet=True)
        data = self._mrc.data
        return data[None] if data.ndim == 2 else data

    def __getitem__(self, key: int | slice | np.ndarray | list[int]) -> np.ndarray:
        data = self._data()
        if isinstance(key, (int, np.integer)):
            index = int(key)
            if not -self._len <= index < self._len:
                raise IndexError(f"{self.path}: image {index} requested; the stack has {self._len}")
            index %= self._len
            images = np.array(data[index : index + 1], np.float32)
            _check_finite(self.path, images, index)
            return images
        if isinstance(key, slice):
            start, _, step = key.indices(self._len)
            images = np.array(data[key], np.float32)
            _check_finite(self.path, images, np.arange(start, start + step * len(images), step))
            return images
        index = np.asarray(key, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < -self._len or index.max() >= self._len):
            bad = index[(index < -self._len) | (index >= self._len)][0]
            raise IndexError(f"{self.path}: image {bad} requested; the stack has {self._len}")
        index = index % self._len if index.size else index
        images = np.array(data[index], np.float32)
        _check_finite(self.path, images, index)
        return images

    def close(self) -> None:
        """Release the memory map (it is re-opened on the next read)."""
        if self._mrc is not None:
            self._mrc.close()
            self._mrc = None

    def __enter__(self) -> MrcStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mrc"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"MrcStack({str(self.path)!r}, n={self._len}, L={self.box_size}, "
            f"pixel_size={self.pixel_size})"
        )


def open_stack(path: str | os.PathLike) -> MrcStack:
    """Open an MRC stack memory-mapped (reads the header only). See :class:`MrcStack`."""
    return MrcStack(path)


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a cubic volume: ``((L, L, L) float32 indexed (z, y, x), voxel size Å)``.

    The voxel size is 0.0 when the header has none. A non-cubic map or one with NaN/Inf voxels is
    an :class:`InputError` naming the file.
    """
    path = Path(path)
    mrc = _open_mrc(path)
    try:
        volume = np.array(mrc.data, dtype=np.float32)
        voxel_size = float(mrc.voxel_size.x)
    finally:
        mrc.close()
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(
            f"{path}: volume has shape {volume.shape} (z, y, x); a cube (L, L, L) is required"
        )
    if not np.isfinite(volume).all():
        raise InputError(f"{path}: volume contains NaN or Inf voxels; repair the map")
    return volume, voxel_size


def load_volume(
    path: str | os.PathLike, *, voxel_size: float | None = None
) -> tuple[torch.Tensor, float]:
    """Read a cubic map as a tensor: ``(volume (L, L, L) float32, voxel size Å)``.

    ``voxel_size`` overrides the header; it is required when the header says 0 (as the ASPIRE
    ribosome map does — its tutorials use 5 Å)."""
    data, header_voxel = read_volume(path)
    size = voxel_size if voxel_size is not None else header_voxel
    if not size or size <= 0:
        raise InputError(
            f"{path}: the header voxel size is {header_voxel}; give the voxel size in Å "
            "(voxel_size=...)"
        )
    # read_volume has already checked that the map is a finite cube.
    return torch.as_tensor(data, dtype=torch.float32), float(size)


def _as_float32(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=np.float32)


def _write(path: Path, data: np.ndarray, voxel_size: float, *, stack: bool) -> None:
    if not np.isfinite(data).all():
        raise InputError(f"{path}: refusing to write NaN or Inf values")
    if not (np.isfinite(voxel_size) and voxel_size >= 0):
        raise InputError(f"{path}: voxel size {voxel_size} must be a finite number >= 0 (Å)")
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
            mrc.voxel_size = voxel_size
            mrc.update_header_stats()
            mrc.header.label[0] = _LABEL
            mrc.header.nlabl = 1


def write_volume(
    path: str | os.PathLike, volume: np.ndarray | torch.Tensor, voxel_size: float
) -> None:
    """Write an ``(L, L, L)`` volume (z, y, x) as float32 MRC (mode 2) with ``voxel_size`` Å."""
    path = Path(path)
    data = _as_float32(volume)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: volume must have shape (L, L, L), got {data.shape}")
    _write(path, data, float(voxel_size), stack=False)


def write_stack(
    path: str | os.PathLike, images: np.ndarray | torch.Tensor, pixel_size: float
) -> None:
    """Write ``(N, L, L)`` images as a float32 MRC image stack (mode 2, ``ispg = 0``) with
    ``pixel_size`` Å. Use the ``.mrcs`` suffix (RELION's name for stacks)."""
    path = Path(path)
    data = _as_float32(images)
    if data.ndim != 3 or data.shape[1] != data.shape[2] or data.shape[0] < 1:
        raise InputError(f"{path}: images must have shape (N, L, L) with N >= 1, got {data.shape}")
    _write(path, data, float(pixel_size), stack=True)
