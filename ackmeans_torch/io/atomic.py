"""Atomic file output: write to a hidden temporary name beside the target, rename when done.

A crash or a bad input half-way through never leaves a half-written STAR, stack or PNG under the
final name, and an existing file is only replaced by a complete new one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it onto ``path``.

    The temporary name keeps the suffix of ``path`` (writers such as matplotlib and starfile pick
    the format from it) and lives in the same directory, so the rename is atomic on POSIX.
    On an exception the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
