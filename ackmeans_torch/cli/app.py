"""The frame every command runs in: Hydra composition, the run directory, logging, and error
reporting.

A command module defines ``main`` with :func:`hydra_command`::

    @hydra_command("simulate")            # composes ackmeans_torch/configs/simulate.yaml
    def main(cfg: DictConfig, run_dir: Path) -> None: ...

The configs ship inside the package (``ackmeans_torch/configs``), so an installed wheel runs. The
frame writes ``config.yaml`` (the resolved config) and ``run_info.yaml`` (package version, command
line, Hydra overrides, start time) into ``run_dir`` (``out_dir`` of the root config), logs to the
terminal and to ``run_dir/app.log``, then calls the command.

Bad input ends the run with one line on stderr and exit code 2 (``ACKMEANS_DEBUG=1`` shows the
traceback): a ``ValueError`` (which :class:`~ackmeans_torch.errors.InputError` is) or an
``OSError`` raised by the command, also when Hydra's ``instantiate`` wraps it; a config that
cannot be composed, a missing mandatory value, or a keyword a ``_target_`` does not take. When the
run directory was new, everything the failed run wrote into it is removed (nothing half-written
stays). Ctrl-C ends with one line, "interrupted; resume with resume=true", and exit code 130. Any
other exception is a bug and keeps its traceback. An unquoted value with spaces (``data.path=/a
b/c.star``, split by the shell) is named in one line with the quoted form to type instead.

The run directory is one run's (:class:`RunDirectory`, rank zero): a second run into it while the
first is going is refused (``fcntl.flock`` on ``out_dir/.lock``); a directory that already holds
files is refused unless the run continues it (``resume``) or replaces it (``overwrite=true``,
only a directory with an earlier run's ``run_info.yaml``); temporary files a killed run left
(``.name.tmp<pid>``, ``io/atomic.py``) are removed before it is continued or replaced.

Warnings (ConvergenceWarning, mrcfile's header warnings, ...) go through logging as one line,
category and message, to the terminal and ``app.log``.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import io
import logging
import os
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ackmeans_torch import __version__
from ackmeans_torch.cli import help as help_page
from ackmeans_torch.errors import InputError
from ackmeans_torch.io.atomic import atomic_output
from ackmeans_torch.runtime import set_threads

CONFIG_DIR = str(help_page.CONFIG_DIR)
LOCK_NAME = ".lock"
# what io/atomic.py writes before its rename, and the set-aside folder of an overwrite
_TEMPORARY = re.compile(r"^\..+\.tmp\d+")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

Command = Callable[[DictConfig, Path], None]


def _debug() -> bool:
    return os.environ.get("ACKMEANS_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """End the process with one line on stderr and ``code`` (bad input: 2)."""
    print(f"ackmeans-torch: error: {message}", file=sys.stderr)
    sys.exit(code)


def _rank_zero() -> bool:
    # under a multi-process launch only rank zero keeps the record and holds the run directory
    # (another rank's argv is the launcher's re-execution, not what the user typed); srun sets
    # only SLURM_PROCID, Lightning's own launcher LOCAL_RANK, torchrun RANK
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


class RunDirectory:
    """Rank zero's hold on the run directory for one run (module docstring): the lock is taken
    at once; a reused directory is checked, its stale temporary files removed and, for
    ``overwrite``, the earlier run's files set aside (``.replaced.tmp<pid>``) so a run that
    fails on bad input can put them back. ``fresh``: the run starts from an empty directory."""

    def __init__(self, path: Path, *, resume: object, overwrite: bool) -> None:
        self.path, self.aside = path, None
        self._fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 32).decode(errors="replace").strip()
            os.close(self._fd)
            raise InputError(f"out_dir={path} is in use by another run"
                             f"{f' (pid {holder})' if holder else ''}; wait for it to end or "
                             "choose another out_dir") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        try:
            entries = self._entries()
            self.fresh = not entries
            if entries:
                self._reuse(resume, overwrite)
        except BaseException:
            self.release()
            raise

    def _entries(self) -> list[Path]:
        return [e for e in self.path.iterdir() if e.name != LOCK_NAME]

    def _reuse(self, resume: object, overwrite: bool) -> None:
        continues = resume is True or (isinstance(resume, str) and resume not in ("", "false")
                                       and Path(resume).resolve() == self.path.resolve())
        if not continues and not overwrite:
            raise InputError(f"out_dir={self.path} already holds files; continue that run with "
                             "resume=true, replace it with overwrite=true, or choose another "
                             "out_dir")
        if not continues and not (self.path / "run_info.yaml").is_file():
            raise InputError(f"out_dir={self.path} holds files but no ackmeans-torch run "
                             "(no run_info.yaml); overwrite=true only replaces a run, choose "
                             "another out_dir")
        # the lock is held: no other run can be writing these, they are a killed run's
        for stale in sorted(self.path.rglob(".*.tmp*"), reverse=True):
            if _TEMPORARY.match(stale.name):
                _remove(stale)
        if continues:
            return
        self.aside = self.path / f".replaced.tmp{os.getpid()}"
        self.aside.mkdir()
        for entry in self._entries():
            if entry != self.aside:
                entry.rename(self.aside / entry.name)
        self.fresh = True

    def release(self, *, failed: bool = False, keep_aside: bool = False) -> None:
        """End the hold. ``failed``: the run stopped on bad input: what it wrote into a fresh
        directory is removed, an overwritten run's files are put back, and a directory left
        empty is removed. ``keep_aside``: a bug stopped the run; the overwritten run's files
        stay in their set-aside folder (removed by the next overwrite or resume). The first call
        counts; later ones do nothing."""
        if self._fd is None:
            return
        if failed and self.fresh:
            for entry in self._entries():
                if entry != self.aside:
                    _remove(entry)
        if self.aside is not None and not keep_aside:
            if failed:
                for entry in self.aside.iterdir():
                    entry.rename(self.path / entry.name)
            shutil.rmtree(self.aside)
            self.aside = None
        if failed and not self._entries():
            (self.path / LOCK_NAME).unlink()
            self.path.rmdir()
        os.close(self._fd)
        self._fd = None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    with atomic_output(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "version": __version__,
        # cli.main presents "ackmeans-torch <command>" as the program name (argv[0]).
        "command": " ".join([sys.argv[0], shlex.join(sys.argv[1:])]).strip(),
        "overrides": list(HydraConfig.get().overrides.task),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
    }
    with atomic_output(run_dir / "run_info.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(info)))


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # logging.captureWarnings alone logs warnings.formatwarning's text: file, line number and the
    # source line that raised it, on three lines
    text = " ".join(str(message).split())
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


def _start_logging(run_dir: Path | None) -> list[logging.Handler]:
    """INFO lines to stdout and, on rank zero, to ``run_dir/app.log``; warnings as one line."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "app.log"))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # keeps the original showwarning for captureWarnings(False)
    warnings.showwarning = _log_warning
    return handlers


def _stop_logging(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)


def bad_input_message(exc: BaseException) -> str | None:
    """The one-line message for an exception that is the user's input, or None for a bug.

    Hydra's ``instantiate`` wraps what a ``_target_`` raised: the cause is what counts, and a
    ``TypeError`` there is a keyword the target does not take (a config typo)."""
    key = None
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        text = str(exc)
        key = text.rsplit("full_key:", 1)[1].strip() if "full_key:" in text else key
        exc = exc.__cause__
        if isinstance(exc, TypeError):
            return f"config {key}: {exc}" if key else f"config: {exc}"
    if isinstance(exc, (ValueError, OSError, OmegaConfBaseException)):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return f"config: {first}" if isinstance(exc, OmegaConfBaseException) else first
    return None


def unquoted_value(args: list[str]) -> str | None:
    """The message for a value with spaces the shell split (``data.path=/a b/c.star`` arrives
    as ``data.path=/a`` and ``b/c.star``), or None."""
    for i, arg in enumerate(args):
        if "=" not in arg or arg.startswith("-"):
            continue
        rest = []
        for piece in args[i + 1:]:
            if "=" in piece or piece.startswith(("-", "~")):
                break
            rest.append(piece)
        if rest:
            key, value = arg.split("=", 1)
            return (f"config: {rest[0]!r} is not a key=value override; quote a value with "
                    f"spaces: {key}='{' '.join([value, *rest])}'")
    return None


@contextmanager
def _relaunchable_argv() -> Iterator[None]:
    """Lightning's ddp launcher starts the extra local processes by re-executing ``sys.argv``
    (``classify``, ``classify3d``), which ``cli/main.py`` rewrote to
    ``["ackmeans-torch <command>", *overrides]``; give it the real script and the sub-command
    back while the command runs (``sys.orig_argv`` ends with them)."""
    saved = sys.argv
    program, _, name = saved[0].partition(" ")
    tail = [name, *saved[1:]]
    original = sys.orig_argv
    # only a process started as "<script> <command> ..." (not, e.g., a test runner) relaunches
    if program != "ackmeans-torch" or not name or len(original) <= len(tail) or \
            original[-len(tail):] != tail:
        yield
        return
    sys.argv = [original[-len(tail) - 1], *tail]
    try:
        yield
    finally:
        sys.argv = saved


def hydra_command(config_name: str, *,
                  relaunchable: bool = False) -> Callable[[Command], Callable[[], None]]:
    """Turn ``command(cfg, run_dir)`` into a console entry point composed from
    ``configs/<config_name>.yaml``. ``relaunchable``: a command whose processes under DDP each
    run it whole (:func:`_relaunchable_argv`; the others are not checked for that)."""

    def decorate(command: Command) -> Callable[[], None]:
        # per call: whether the command started, and the stderr to report on
        state = {"started": False, "stderr": sys.stderr}

        @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
        def task(cfg: DictConfig) -> None:
            state["started"] = True
            sys.stderr = state["stderr"]
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            handlers: list[logging.Handler] = []
            hold: RunDirectory | None = None
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                if _rank_zero():
                    hold = RunDirectory(run_dir, resume=cfg.get("resume", False),
                                        overwrite=bool(cfg.get("overwrite", False)))
                    _write_run_record(cfg, run_dir)
                handlers = _start_logging(run_dir if _rank_zero() else None)
                logging.getLogger(__name__).info(
                    "torch threads: %d (threads=%s), OMP_WAIT_POLICY=%s, load average %s",
                    set_threads(cfg.get("threads", "auto")), cfg.get("threads", "auto"),
                    os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
                    " / ".join(f"{v:.2f}" for v in os.getloadavg()))
                with _relaunchable_argv() if relaunchable else nullcontext():
                    command(cfg, run_dir)
            except KeyboardInterrupt:
                fail("interrupted; resume with resume=true", EXIT_INTERRUPTED)
            except Exception as exc:
                message = bad_input_message(exc)
                if message is None or _debug():
                    if hold is not None:
                        hold.release(keep_aside=True)
                    raise
                _stop_logging(handlers)
                handlers = []
                if hold is not None:
                    hold.release(failed=True)
                fail(message)
            finally:
                _stop_logging(handlers)
                if hold is not None:
                    hold.release()

        @functools.wraps(command)
        def entry() -> None:
            # Hydra reports a config it cannot compose (unknown key, bad override, missing file)
            # on several stderr lines and exits 1 before the command starts. That is bad input:
            # hold stderr until the command starts, then say it in one line with exit code 2.
            real_stderr = state["stderr"] = sys.stderr
            state["started"] = False
            held = io.StringIO()
            sys.stderr = held
            try:
                task()
            except SystemExit as exc:
                sys.stderr = real_stderr
                if exc.code == 1 and not state["started"] and not _debug():
                    split = unquoted_value(sys.argv[1:])
                    if split:
                        fail(split)
                    lines = [ln.strip() for ln in held.getvalue().splitlines()]
                    lines = [ln for ln in lines if ln and "HYDRA_FULL_ERROR" not in ln]
                    if any(ln.startswith("Traceback") for ln in lines):
                        # Hydra failed outside composition (e.g. making the run directory):
                        # its last line is the error, with the path and errno
                        fail(lines[-1])
                    fail("config: " + " | ".join(lines[:3]))
                raise
            finally:
                sys.stderr = real_stderr
                if not state["started"]:
                    real_stderr.write(held.getvalue() if _debug() else "")

        return entry

    return decorate
