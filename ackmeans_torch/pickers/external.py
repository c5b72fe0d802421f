"""Adapters for real external pickers, each run as its own program on a micrograph written to a
temporary MRC, its output read back with ``io/coords.py``:

* :class:`CommandPicker`: any command line with ``{micrograph}`` (the MRC path), ``{out_dir}``
  (a fresh folder for its output) and ``{name}`` (the micrograph stem) placeholders, and an
  ``output`` file name (with the same placeholders) in any format ``io/coords.py`` reads — crYOLO
  (``cryolo_predict.py ... -o {out_dir}`` → ``CBOX/{name}.cbox``), a cryoSPARC export, a script.
* :class:`RelionAutopick`: Debian's/RELION's ``relion_autopick`` in LoG mode (diameter range in
  Å) or template mode (an MRC stack of references).
* :class:`TopazPicker`: ``topaz extract`` with a pretrained or given model (``pip install
  topaz-em``; not a dependency of this package).

Each is optional: :func:`require_program` raises :class:`ProgramMissing` (an ``OSError``, so the
CLI reports it in one line) naming the program when it is not on ``PATH``; tests skip with that
reason. A program that fails is an ``OSError`` with its exit code and last stderr line.
"""

from __future__ import annotations

import shlex
from abc import abstractmethod
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ackmeans_torch.errors import InputError, check_number
from ackmeans_torch.io.coords import PickSet, read_picks
from ackmeans_torch.pickers.base import Picker

PLACEHOLDERS = ("micrograph", "out_dir", "name")


class ProgramMissing(OSError):
    """An external picker's program is not installed (the message says which and how)."""


def require_program(program: str, hint: str) -> str:
    """The full path of ``program`` on PATH, else :class:`ProgramMissing` with ``hint``."""
    found = shutil.which(program)
    if found is None:
        raise ProgramMissing(f"{program} is not on PATH; {hint}")
    return found


def run_program(argv: list[str], *, what: str, timeout: float | None = None) -> None:
    """Run ``argv``; a non-zero exit is an ``OSError`` naming ``what`` with stderr's last line."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise OSError(f"{what} failed (exit code {done.returncode}): {tail[0]}")


class ExternalPicker(Picker):
    """A picker that runs a program on a micrograph file; subclasses implement :meth:`run`.
    ``pick`` writes the micrograph (unbinned, as given) to a temporary MRC named ``name`` and
    returns what :meth:`run` read, boxes set to ``box_size``."""

    def pick(self, micrograph, *, pixel_size: float | None = None, ctf: Mapping | None = None,
             name: str = "micrograph") -> PickSet:
        from ackmeans_torch.micrographs.io import write_micrograph

        image = np.asarray(micrograph.cpu() if isinstance(micrograph, torch.Tensor) else micrograph, dtype=np.float32)
        if image.ndim != 2:
            raise InputError(f"micrograph must be a 2D (H, W) array, got shape {image.shape}")
        with tempfile.TemporaryDirectory(prefix="ackmeans_picker_") as tmp:
            path = Path(tmp) / f"{name}.mrc"
            write_micrograph(path, image, pixel_size or 1.0)
            out = Path(tmp) / "out"
            out.mkdir()
            picks = self.run(path, out, pixel_size=pixel_size or 1.0)
        keep = picks.scores >= self.threshold
        order = np.argsort(-picks.scores[keep], kind="stable")[:self.max_picks]
        return PickSet(picks.centres[keep][order], np.full(len(order), self.box_size), picks.scores[keep][order],
                       picks.has_scores)

    def _pick(self, image, *, pixel_size, ctf):
        # the programs read files and bin themselves: pick() above is the entry point
        raise TypeError(f"{type(self).__name__} picks through pick(), which writes the micrograph file")

    @abstractmethod
    def run(self, micrograph: Path, out_dir: Path, *, pixel_size: float) -> PickSet:
        """Run the program on ``micrograph`` writing into ``out_dir``; the picks it made."""


class CommandPicker(ExternalPicker):
    """A user's command line (module docstring). command: the line, with placeholders.
    output: the file it writes, e.g. ``"{out_dir}/{name}.box"``. format: ``auto`` (by suffix) or
    one of ``io.coords.FORMATS``. timeout: s."""

    def __init__(self, *, command: str, output: str, format: str = "auto", timeout: float | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        for text, what in ((command, "command"), (output, "output")):
            try:
                text.format(**{p: "" for p in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError) as exc:
                raise InputError(f"{what}={text!r}: bad placeholder {exc}; use only "
                                 f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None
        self.command, self.output, self.format, self.timeout = command, output, format, timeout

    def run(self, micrograph: Path, out_dir: Path, *, pixel_size: float) -> PickSet:
        values = {"micrograph": shlex.quote(str(micrograph)), "out_dir": shlex.quote(str(out_dir)),
                  "name": micrograph.stem}
        argv = shlex.split(self.command.format(**values))
        require_program(argv[0], "install it or give the full path in command")
        run_program(argv, what=f"picker command {argv[0]}", timeout=self.timeout)
        result = Path(self.output.format(micrograph=str(micrograph), out_dir=str(out_dir), name=micrograph.stem))
        if not result.is_file():
            raise OSError(f"picker command {argv[0]} wrote no {result.name}; check output={self.output!r}")
        return read_picks(result, fmt=self.format, box_size=self.box_size)


class RelionAutopick(ExternalPicker):
    """``relion_autopick`` on one micrograph. mode: ``log`` (Laplacian of Gaussian between
    ``diameter_min`` and ``diameter_max`` Å, default 0.8–1.2 x the particle diameter) or
    ``template`` (``references``: an MRC stack at ``references_pixel_size`` Å, ``angle_step``
    degrees, ``lowpass`` Å). log_threshold: RELION's ``--LoG_adjust_threshold``; ref_threshold:
    its ``--threshold``. Scores: RELION's figure of merit."""

    def __init__(self, *, mode: str = "log", diameter_min: float | None = None, diameter_max: float | None = None,
                 log_threshold: float = 0.0, references: str | None = None, references_pixel_size: float | None = None,
                 angle_step: float = 10.0, lowpass: float = 20.0, ref_threshold: float = 0.25, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("log", "template"):
            raise InputError(f"mode={mode!r} must be log or template")
        if mode == "template" and references is None:
            raise InputError("mode=template needs references=<MRC stack of 2D references>")
        check_number("angle_step", angle_step, 0.1, 360)
        self.mode, self.diameter_min, self.diameter_max = mode, diameter_min, diameter_max
        self.log_threshold, self.references, self.references_pixel_size = log_threshold, references, references_pixel_size
        self.angle_step, self.lowpass, self.ref_threshold = angle_step, lowpass, ref_threshold

    def run(self, micrograph: Path, out_dir: Path, *, pixel_size: float) -> PickSet:
        program = require_program("relion_autopick", "install RELION (Debian: apt-get install relion)")
        diameter = self.particle_diameter * pixel_size
        argv = [program, "--i", str(micrograph), "--odir", f"{out_dir}/", "--pickname", "autopick",
                "--angpix", f"{pixel_size:g}", "--shrink", "0"]
        if self.mode == "log":
            argv += ["--LoG", "--LoG_diam_min", f"{self.diameter_min or 0.8 * diameter:g}",
                     "--LoG_diam_max", f"{self.diameter_max or 1.2 * diameter:g}",
                     "--LoG_adjust_threshold", f"{self.log_threshold:g}"]
            if self.contrast == "bright":
                argv.append("--Log_invert")
        else:
            argv += ["--ref", str(self.references), "--ang", f"{self.angle_step:g}", "--lowpass", f"{self.lowpass:g}",
                     "--threshold", f"{self.ref_threshold:g}", "--particle_diameter", f"{diameter:g}",
                     "--min_distance", f"{self.min_distance * pixel_size:g}"]
            if self.references_pixel_size is not None:
                argv += ["--angpix_ref", f"{self.references_pixel_size:g}"]
            if self.contrast == "bright":
                argv.append("--invert")
        run_program(argv, what="relion_autopick")
        found = sorted(out_dir.rglob(f"{micrograph.stem}_autopick.star"))
        if not found:
            raise OSError(f"relion_autopick wrote no {micrograph.stem}_autopick.star in {out_dir}")
        return read_picks(found[0], fmt="star", box_size=self.box_size)


class TopazPicker(ExternalPicker):
    """``topaz extract`` on one micrograph (preprocessed by ``topaz preprocess`` with
    ``scale``-fold downsampling first). model: a pretrained name (``resnet16``) or a saved
    model file. radius: px (downsampled) for non-maximum suppression (default half the particle
    diameter / scale). Scores: Topaz's log-likelihood ratios."""

    def __init__(self, *, model: str = "resnet16", scale: int = 4, radius: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model, self.scale = model, scale
        self.radius = radius if radius is not None else max(1, int(0.5 * self.particle_diameter / scale))

    def run(self, micrograph: Path, out_dir: Path, *, pixel_size: float) -> PickSet:
        topaz = require_program("topaz", "pip install topaz-em into the environment to use the Topaz adapter")
        pre = out_dir / "preprocessed"
        run_program([topaz, "preprocess", "-s", str(self.scale), "-o", f"{pre}/", str(micrograph)],
                    what="topaz preprocess")
        table = out_dir / "picks.txt"
        run_program([topaz, "extract", "-m", self.model, "-r", str(self.radius), "-x", str(self.scale),
                     "-o", str(table), *map(str, sorted(pre.glob("*.mrc")))], what="topaz extract")
        return read_picks(table, fmt="topaz", box_size=self.box_size)
